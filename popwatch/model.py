"""Core value types shared by every layer. No Textual, no I/O.

Everything here is small, immutable and cheap: the store keeps millions of these
fields alive during a flood, so classes use ``slots`` and hold plain values.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Mapping


class Service(StrEnum):
    """The network service an event belongs to (what the attacker was hitting)."""

    POP3 = "pop3"
    IMAP = "imap"
    SSH = "ssh"
    SMTP = "smtp"
    SUBMISSION = "submission"
    SIEVE = "sieve"
    LMTP = "lmtp"
    OTHER = "other"
    MAIL = "mail"                    # a dovecot login whose protocol (pop3, imap...) is not known yet


class Kind(StrEnum):
    """What happened. Everything but SUCCESS and PROBE counts as a failure."""

    AUTH_FAILED = "auth_failed"      # wrong password for some user
    INVALID_USER = "invalid_user"    # user does not exist
    ABORTED = "aborted"              # login aborted after auth attempts (dovecot 1.x "Aborted login")
    TOO_MANY = "too_many"            # max auth attempts exceeded / too many failures
    NOT_ALLOWED = "not_allowed"      # AllowUsers/DenyUsers/ROOT LOGIN REFUSED
    PROBE = "probe"                  # scanner: no auth attempt, kex/banner errors
    SUCCESS = "success"              # a successful login


FAILURE_KINDS = frozenset(
    {Kind.AUTH_FAILED, Kind.INVALID_USER, Kind.ABORTED, Kind.TOO_MANY, Kind.NOT_ALLOWED}
)


@dataclass(frozen=True, slots=True)
class RawLine:
    """One line handed from a source to the parser.

    ``text`` is already decoded (invalid UTF-8 replaced), but not yet sanitised.
    Journal entries carry their structured fields in ``fields`` (``SYSLOG_IDENTIFIER``,
    ``_PID``, ``__REALTIME_TIMESTAMP``, ``_HOSTNAME``) and the bare message in ``text``.
    """

    text: str
    source: str
    lineno: int | None = None
    fields: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class AuthEvent:
    """One thing a daemon said about one remote address.

    ``ip`` is a normalised, bannable address string (``::ffff:a.b.c.d`` -> ``a.b.c.d``) or
    None when the line had no parseable address (a hostname with UseDNS, garbage).
    ``attempts`` is how many failed attempts this event stands for: a dovecot summary line
    ``(auth failed, 11 attempts in 152 secs)`` stands for 11, minus any that were already
    counted from ``auth_verbose`` lines of the same session. It is 0 for events that carry
    information but must not be counted again (the pam_unix twin of a ``Failed password``).
    ``user``, ``host`` and ``line`` are sanitised at parse time (see sanitize.py).
    """

    ts: float
    service: str
    kind: str
    ip: str | None
    user: str | None = None
    attempts: int = 1
    source: str = ""
    lineno: int | None = None
    line: str = ""
    host: str | None = None
    session: str | None = None

    @property
    def is_failure(self) -> bool:
        return self.kind in FAILURE_KINDS

    @property
    def is_success(self) -> bool:
        return self.kind == Kind.SUCCESS

    def to_json(self) -> dict[str, Any]:
        """The stable event schema (README, "Event stream")."""
        d: dict[str, Any] = {
            "ts": iso(self.ts),
            "service": str(self.service),
            "ip": self.ip,
            "user": self.user,
            "kind": str(self.kind),
            "attempts": self.attempts,
            "source": self.source,
            "lineno": self.lineno,
            "line": self.line,
        }
        if self.host is not None:
            d["host"] = self.host
        if self.session is not None:
            d["session"] = self.session
        return d


def iso(ts: float | None) -> str | None:
    """Epoch seconds -> ISO 8601 in UTC with a zone (``2026-11-28T05:00:21.664766+00:00``)."""
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat()


@dataclass(frozen=True, slots=True)
class Ban:
    """An active ban. ``expires`` is epoch seconds or None for permanent."""

    ip: str
    created: float
    expires: float | None = None
    reason: str = ""
    origin: str = "cli"  # key | auto | cli | restore
    #: open TCP connections of the address closed when the ban was made
    closed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "ip": self.ip,
            "expires": iso(self.expires),
            "reason": self.reason,
            "origin": self.origin,
            "created": iso(self.created),
        }


@dataclass(frozen=True, slots=True)
class SourceHealth:
    """How one log source is doing, for the header: state is one of
    following | waiting | denied | error | journal | replay | stopped."""

    name: str
    state: str
    detail: str = ""
    lines: int = 0


@dataclass(frozen=True, slots=True)
class PortCounters:
    """Packet counters of one watched port's rules, as read from the kernel (cumulative)."""

    port: int
    passed: int
    dropped: int


@dataclass(frozen=True, slots=True)
class CounterSample:
    """One poll of all counters. ``mono`` is time.monotonic() at the read, so rates use the
    measured interval between polls, not the nominal one."""

    mono: float
    ports: Mapping[int, PortCounters] = field(default_factory=dict)
    banned_dropped: int = 0
