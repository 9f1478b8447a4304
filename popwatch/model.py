"""Core value types shared by every layer. No Textual, no I/O.

Everything here is small, immutable and cheap: the store keeps millions of these
fields alive during a flood, so classes use ``slots`` and hold plain values.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal


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


class Origin(StrEnum):
    """Who made a ban or a limit change (the ``origin`` of bans.json, the audit and events)."""

    KEY = "key"              # a key press in the TUI
    AUTO = "auto"            # the auto-ban policy (per address)
    CAMPAIGN = "campaign"    # the campaign policy (per target / network)
    CLI = "cli"              # a popwatch subcommand
    RESTORE = "restore"      # start-up restore from the state dir
    RECONCILE = "reconcile"  # start-up reconcile with the kernel
    KERNEL = "kernel"        # found in the kernel, not in popwatch's state
    HEAL = "heal"            # put back by the enforcement check
    UNDO = "undo"            # the reverse of an earlier action
    CROWDSEC = "crowdsec"    # a CrowdSec LAPI decision


class RowState(StrEnum):
    """The state of one attacker (or network) row."""

    WATCHING = "watching"
    NEAR = "near"            # one failure from the auto-ban threshold
    BANNED = "banned"
    PROTECTED = "protected"  # allow-list, loopback, the admin's own address


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


class TwoBucket:
    """A count over a sliding window of ``width`` seconds, approximated with two fixed buckets
    (the current window and the one before, weighted by how much of it still overlaps): the
    per-address and per-service failure rates of the store, and the slow-source counts of
    campaigns. Slotted and container-free: the store keeps one per address."""

    __slots__ = ("cur", "prev", "win")

    def __init__(self, win: int = 0) -> None:
        self.win = win
        self.cur = 0
        self.prev = 0

    def add(self, n: int, ts: float, width: float) -> None:
        """Count ``n`` at ``ts``; an older time (backfill, a late summary line) lands in the
        previous bucket when it still overlaps, else nowhere."""
        w = int(ts // width)
        if w > self.win:
            self.prev = self.cur if w == self.win + 1 else 0
            self.cur = 0
            self.win = w
        elif w < self.win:
            if w == self.win - 1:
                self.prev += n
            return
        self.cur += n

    def count(self, now: float, width: float) -> float:
        """The count over the last ``width`` seconds at ``now``."""
        w = int(now // width)
        frac = (now - w * width) / width
        if w == self.win:
            return self.cur + self.prev * (1.0 - frac)
        if w == self.win + 1:
            return self.cur * (1.0 - frac)
        return 0.0


def fmt_duration(secs: float | None, *, exact: bool = False) -> str:
    """Seconds -> ``10m``, ``1h``, ``2d``, ``1w``; ``None`` -> ``permanently``. A duration that is
    not a whole number of a unit is ``1.5h`` (short, for reasons, messages and the UI), or with
    ``exact`` its seconds (``90s``: config messages and --print-default)."""
    if secs is None:
        return "permanently"
    for unit, n in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= n and secs % n == 0:
            return f"{int(secs // n)}{unit}"
    if exact:
        return f"{int(secs)}s" if float(secs).is_integer() else f"{secs:g}s"
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= n:
            return f"{secs / n:.1f}{unit}"
    return f"{secs:g}s"


def iso(ts: float | None) -> str | None:
    """Epoch seconds -> ISO 8601 in UTC with a zone (``2026-11-28T05:00:21.664766+00:00``)."""
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).isoformat()


@dataclass(frozen=True, slots=True)
class Ban:
    """An active ban. ``expires`` is epoch seconds or None for permanent."""

    ip: str
    created: float
    expires: float | None = None
    reason: str = ""
    origin: str = Origin.CLI  # an Origin value
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


# -- rate limits (the value types of the ports panel, config, CLI and every backend) --

Mode = Literal["count", "global", "per-source"]
MODES: tuple[Mode, ...] = ("count", "global", "per-source")

_UNITS = {
    "s": 1, "sec": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
}
_CANON = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}
_RATE_RE = re.compile(r"^\s*(\d{1,6})\s*/\s*([a-z]+)\s*$", re.ASCII)
#: iptables' own bounds: limit/hashlimit reject rates above 10000/s, bursts above 10000
MAX_PER_SECOND = 10000
MAX_BURST = 10000



@dataclass(frozen=True, slots=True, order=True)
class Rate:
    """A token-bucket refill rate in the iptables form ``N/unit``."""

    per_second: float
    count: int
    unit: int  # seconds per unit: 1, 60, 3600, 86400

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``1/second``, ``10/minute``, ``5/s``, ``3/hour``, ``2/day``. Raises ValueError."""
        m = _RATE_RE.match(str(text).lower())
        if not m:
            raise ValueError(f"bad rate {text!r}: expected N/second, N/minute, N/hour or N/day (e.g. 5/second)")
        n, u = int(m.group(1)), m.group(2)
        if u not in _UNITS:
            raise ValueError(f"bad rate {text!r}: unit must be second, minute, hour or day")
        if n < 1:
            raise ValueError(f"bad rate {text!r}: must be at least 1/{_CANON[_UNITS[u]]}")
        unit = _UNITS[u]
        r = cls(n / unit, n, unit)
        if r.per_second > MAX_PER_SECOND:
            raise ValueError(f"bad rate {text!r}: iptables allows at most {MAX_PER_SECOND}/second")
        return r

    @classmethod
    def of(cls, count: int, unit: int) -> Rate:
        return cls(count / unit, count, unit)

    def __str__(self) -> str:
        return f"{self.count}/{_CANON[self.unit]}"

    def short(self) -> str:
        """Compact form for narrow screens: ``1/s``, ``5/min``, ``3/h``, ``2/d``."""
        return f"{self.count}/{ {1: 's', 60: 'min', 3600: 'h', 86400: 'd'}[self.unit]}"

    @property
    def per_day(self) -> float:
        return self.per_second * 86400

    def step(self, up: bool) -> Rate:
        """The next rate up or down on a 1-2-5 ladder, moving across units as needed."""
        ladder = _LADDER
        ps = self.per_second
        if up:
            for r in ladder:
                if r.per_second > ps * 1.0001:
                    return r
            return self
        for r in reversed(ladder):
            if r.per_second < ps * 0.9999:
                return r
        return self


_LADDER = [Rate.of(n, u) for u, ns in ((3600, (1, 2, 5, 10, 20, 30)), (60, (1, 2, 5, 10, 20, 30)),
                                       (1, (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)))
           for n in ns]
_LADDER.sort()


def parse_burst(value: object) -> int:
    """A burst value from the CLI/config/UI. Raises ValueError with a clear message."""
    try:
        if not str(value).strip().isascii():
            raise ValueError
        b = int(str(value).strip())
    except ValueError:
        raise ValueError(f"bad burst {value!r}: expected a whole number from 1 to {MAX_BURST}") from None
    if not 1 <= b <= MAX_BURST:
        raise ValueError(f"bad burst {value!r}: expected a whole number from 1 to {MAX_BURST}")
    return b


@dataclass(frozen=True, slots=True)
class PortLimit:
    """The rule popwatch keeps for one watched TCP port.

    ``count``: no limit, only counts new connections (the default for a newly watched port).
    ``global``: ``-m limit`` (one bucket shared by every source: the 2009 rule).
    ``per-source``: ``-m hashlimit --hashlimit-mode srcip`` (one bucket per source; /64 for v6).
    """

    port: int
    mode: Mode = "count"
    rate: Rate = Rate.of(1, 1)  # noqa: RUF009 - Rate is frozen: one shared default is safe
    burst: int = 5

    def __post_init__(self) -> None:
        if not 1 <= int(self.port) <= 65535:
            raise ValueError(f"bad port {self.port!r}: expected 1-65535")
        if self.mode not in MODES:
            raise ValueError(f"bad mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if not 1 <= self.burst <= MAX_BURST:
            raise ValueError(f"bad burst {self.burst!r}: expected 1-{MAX_BURST}")

    def with_(self, **kw: object) -> PortLimit:
        return replace(self, **kw)  # type: ignore[arg-type]  # replace() takes the fields as keywords; __post_init__ validates them

    def describe(self) -> str:
        """Short form for the ports panel: ``global 1/second burst 1``."""
        if self.mode == "count":
            return "count only"
        return f"{self.mode} {self.rate.short()} burst {self.burst}"

    def meaning(self) -> str:
        """One plain-language line saying what the rule does."""
        per_day = self.rate.per_day
        if self.mode == "count":
            return "counting only: every new connection passes; press m to pick a limit"
        if self.mode == "global":
            return f"global: at most {per_day:,.0f} new connections a day for everyone together"
        return f"per-source: at most {per_day:,.0f} new connections a day from each address"

    def to_json(self) -> dict[str, object]:
        return {"port": self.port, "mode": self.mode, "rate": str(self.rate), "burst": self.burst}
