"""Pure parsing: a raw log line -> AuthEvent or None.

    parser = Parser(now=time.time)        # stateful only for de-duplication, bounded memory
    ev = parser.parse(raw: RawLine) -> AuthEvent | None
    for ev in parser.parse_many(lines, source, first_lineno): ...   # batches (scan)

Formats: RFC 3339 and BSD syslog, RFC 5424, dovecot ``log_path`` files, TAI64N, no timestamp, bare ``sshd -E``
lines and journald fields (see prefix.py); daemons: OpenSSH (sshd.py), dovecot (dovecot.py),
postfix smtpd SASL and courier (mail.py).

``attempts`` on an event is the number of failed attempts it adds to the count; lines that
repeat an attempt already counted (the pam_unix twin of ``Failed password``, dovecot's
summary after ``auth_verbose`` lines) carry 0 or only the remainder.

Dispatch is on the daemon tag (sshd, dovecot, postfix/..., courier), never by trying every
rule: the prefix is split with string slicing, the tag picks one rule set, and that rule set
looks at the first characters of the message before running a single anchored regex. Lines
of other daemons cost a dict lookup. The timestamp is only parsed for lines that matched.

Safety: user names, host names and the raw line pass through :func:`popwatch.sanitize.clean`
exactly once, here. Addresses go through :func:`popwatch.addr.normalize_ip`; anything that is
not an address (a reverse-DNS name) is kept in ``host`` and never becomes ``ip``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import fields, replace
from functools import lru_cache

from ..addr import normalize_ip
from ..model import AuthEvent, RawLine
from ..sanitize import FIELD_CAP, LINE_CAP, clean, clean_field
from . import prefix as _prefix
from .dovecot import DovecotRules
from .mail import COURIER_TAGS, courier, postfix, postfix_service
from .sshd import SshdRules

__all__ = ["MAX_MESSAGE", "SSHD_TAGS", "Parser"]

#: longer messages are not parsed at all: every daemon here caps its own lines well below
#: this (sshd 1 KiB per message, dovecot 80-character user names), so only an attacker or a
#: broken writer produces them, and refusing them bounds the work per line.
MAX_MESSAGE = 8192

SSHD_TAGS = frozenset({"sshd", "sshd-session", "sshd-auth"})
#: dovecot, and the tags its auth processes' PAM modules log under (the binary's name)
DOVECOT_TAGS = frozenset({"dovecot", "dovecot-auth", "auth", "auth-worker"})
#: dovecot 1.x processes that syslog under their own name write the message without their
#: process prefix (`dovecot-auth: pam(user,ip): ...`, inetd `imap-login: Aborted login ...`)
_DOVECOT_PROC = {"dovecot-auth": "auth", "imap-login": "imap-login", "pop3-login": "pop3-login",
                 "managesieve-login": "managesieve-login"}

_SSHD, _DOVECOT, _POSTFIX, _COURIER, _OLDPAM = 1, 2, 3, 4, 5
#: Linux-PAM <= 0.77 pam_unix logged under its own ident `SERVICE(pam_unix)` (Red Hat 7-9,
#: Fedora Core 1-4, SuSE 9): `sshd(pam_unix)[N]: authentication failure; logname=...`
_OLDPAM_SUFFIX = "(pam_unix)"
_UNSEEN = object()
_FAST = _prefix.FAST.match
#: BSD syslogd (sysklogd, FreeBSD, macOS) folds identical consecutive messages of a file into
#: `HOST last message repeated N times` (newer: `--- last message repeated N times ---`),
#: written right after the line it repeats
_REPEAT = re.compile(r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) (?:[ \d]\d|\d) \d\d:\d\d:\d\d "
                     r"(\S+) (?:--- )?last message repeated (\d+) times?(?: ---)?$")


@lru_cache(maxsize=8192)
def _norm(text: str) -> str | None:
    return normalize_ip(text)


_EVENT_FIELDS = ("ts", "service", "kind", "ip", "user", "attempts", "source", "lineno", "line", "host",
                 "session")


def _event_factory() -> Callable[..., AuthEvent]:
    """A positional AuthEvent builder that fills the slots directly.

    A frozen dataclass's ``__init__`` goes through ``object.__setattr__`` once per field;
    setting the slot descriptors is about twice as fast, which matters at 100k events/s.
    Used only while AuthEvent is exactly the slotted, frozen 11-field class this was written
    for (no ``__post_init__``); otherwise the class itself is returned.
    """
    try:
        names = tuple(f.name for f in fields(AuthEvent))
        slots = [AuthEvent.__dict__[n].__set__ for n in names]
    except (KeyError, AttributeError, TypeError):
        return AuthEvent
    if names != _EVENT_FIELDS or hasattr(AuthEvent, "__post_init__"):
        return AuthEvent
    s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10 = slots
    new = object.__new__

    def make(ts: float, service: str, kind: str, ip: str | None, user: str | None, attempts: int,
             source: str, lineno: int | None, line: str, host: str | None, session: str | None) -> AuthEvent:
        ev = new(AuthEvent)
        s0(ev, ts)
        s1(ev, service)
        s2(ev, kind)
        s3(ev, ip)
        s4(ev, user)
        s5(ev, attempts)
        s6(ev, source)
        s7(ev, lineno)
        s8(ev, line)
        s9(ev, host)
        s10(ev, session)
        return ev

    return make


_make_event = _event_factory()


class Parser:
    """Stateful line parser. State (bounded) only serves to count each attempt once."""

    def __init__(self, now: Callable[[], float] = time.time, *, bare_tag: str | None = "sshd",
                 count_publickey: bool = False) -> None:
        """``now`` is the reference time for year-less timestamps and lines without one.

        ``bare_tag``: lines with no syslog prefix at all are taken as messages of this daemon
        (``sshd -E`` files); None ignores them. ``count_publickey``: ``Failed publickey`` is a
        failed attempt (policy.count_publickey) instead of a probe.
        """
        self.now = now
        self.clock = _prefix.Clock(now)
        self.sshd = SshdRules(count_publickey=count_publickey)
        self.dovecot = DovecotRules()
        self.bare_tag = bare_tag
        self._tags: dict[str, object] = {}
        self._prev: str | None = None  # the live path's previous line (for `last message repeated`)

    # -- dispatch ---------------------------------------------------------------------------

    def _route(self, tag: str) -> tuple[int, str | None] | None:
        """Tag -> (rule set, service) or None; memoised (tags repeat)."""
        r: tuple[int, str | None] | None = None
        key = tag
        if tag.startswith("[") and tag.endswith("]"):
            tag = tag[1:-1]  # `[sshd]: msg` (a tag without pid, bracketed by some relays)
        if tag in SSHD_TAGS or tag == "com.openssh.sshd":
            r = (_SSHD, None)
        elif tag in DOVECOT_TAGS or tag in _DOVECOT_PROC:
            r = (_DOVECOT, _DOVECOT_PROC.get(tag))
        elif tag in COURIER_TAGS:
            r = (_COURIER, COURIER_TAGS[tag])
        elif tag.endswith(_OLDPAM_SUFFIX):
            pam_svc = tag[:-len(_OLDPAM_SUFFIX)]
            if pam_svc in SSHD_TAGS:
                r = (_OLDPAM, "sshd")
            elif pam_svc in ("dovecot", "imap", "pop3", "pop", "imap4"):
                r = (_OLDPAM, pam_svc)
        elif tag.startswith("postfix"):
            svc = postfix_service(tag)
            if svc is not None:
                r = (_POSTFIX, svc)
        if len(self._tags) > 1024:
            self._tags.clear()
        self._tags[key] = r
        return r

    def parse(self, raw: RawLine) -> AuthEvent | None:
        """One line -> event, or None for lines that say nothing about an attack."""
        prev, self._prev = self._prev, raw.text
        if raw.fields is None and " last message repeated " in raw.text[:60]:
            return self._repeated(raw.text, prev, raw.source, raw.lineno)
        return self.parse_text(raw.text, raw.source, raw.lineno, raw.fields)

    def _repeated(self, text: str, prev: str | None, source: str, lineno: int | None) -> AuthEvent | None:
        """``HOST last message repeated N times``: the previous line (same host) N more times."""
        m = _REPEAT.match(text.rstrip("\r\n"))
        if m is None or prev is None or " last message repeated " in prev[:60]:
            return None
        pm = _FAST(prev)
        if pm is None or pm[3] != m[1]:
            return None
        total, ev = 0, None
        for _ in range(min(int(m[2]), 1000)):
            ev = self.parse_text(prev, source, lineno)
            if ev is None:
                return None
            total += ev.attempts
        if ev is None:
            return None
        line = text if (len(text) <= LINE_CAP and text.isascii() and text.isprintable()) else clean(text)
        ts = self.clock.resolve(_prefix.TS_BSD, text[:m.start(1) - 1])
        return replace(ev, attempts=total, line=line, ts=ts, lineno=lineno)

    def parse_text(self, text: str, source: str = "", lineno: int | None = None,
                   fields: Mapping[str, str] | None = None) -> AuthEvent | None:
        """Like :meth:`parse` without building a RawLine first."""
        m = None if fields else _FAST(text)
        if m is not None:
            # the common case: RFC 3339 or BSD syslog line; route on the tag before anything else
            route = self._tags.get(m.group(4), _UNSEEN)
            if route is _UNSEEN:
                route = self._route(m.group(4))
            if route is None:
                return None
            return self._fast_event(m, route, text, source, lineno)  # type: ignore[arg-type]  # a route is a tuple of mixed types by daemon
        if fields:
            kind, ts, host, tag, pid = _prefix.from_journal(fields)
            msg = text.rstrip("\n")
        else:
            kind, ts, host, tag, pid, msg = _prefix.split(text)
        if tag is None:
            tag = self.bare_tag
            if tag is None:
                return None
        route = self._tags.get(tag, _UNSEEN)
        if route is _UNSEEN:
            route = self._route(tag)
        if route is None:
            return None
        return self._event(route, kind, ts, host, pid, msg, text, source, lineno)  # type: ignore[arg-type]  # a route is a tuple of mixed types by daemon

    def parse_many(self, lines: Iterable[str], source: str = "", first_lineno: int = 1) -> Iterator[AuthEvent]:
        """Events of consecutive lines (line numbers count from ``first_lineno``).

        Same result as :meth:`parse_text` per line, with the dispatch inlined (this is the
        hot loop of ``scan``): a line of an unrelated daemon costs one anchored match and one
        dict lookup, and a routed line that says nothing builds no intermediate values.
        """
        fast = _FAST
        tags = self._tags
        finish = self._finish
        parse_text = self.parse_text
        sshd = self.sshd.parse
        dovecot = self.dovecot.parse
        ts_iso, ts_bsd = _prefix.TS_ISO, _prefix.TS_BSD
        if not isinstance(lines, list):
            lines = list(lines)
        for i, m in enumerate(map(fast, lines)):
            if m is None:
                text = lines[i]
                if " last message repeated " in text[:60]:
                    ev = self._repeated(text, lines[i - 1] if i else None, source, first_lineno + i)
                else:
                    ev = parse_text(text, source, first_lineno + i)
                if ev is not None:
                    yield ev
                continue
            try:
                route = tags[m[4]]
            except KeyError:
                route = self._route(m[4])
            if route is None:
                continue
            text = lines[i]
            msg = text[m.end():]
            if len(msg) > MAX_MESSAGE:
                continue
            if msg.endswith("\r"):  # CRLF files (sshd -E writes them)
                msg = msg[:-1]
                text = text.rstrip("\r")
            which = route[0]  # type: ignore[index]  # a route is a tuple of mixed types by daemon
            if which == _SSHD:
                pid = m[5]
                hit = sshd(msg, (m[3], pid) if pid is not None else None)
            elif which == _DOVECOT:
                hit = dovecot(msg, route[1])  # type: ignore[index]  # a route is a tuple of mixed types by daemon
            elif which == _POSTFIX:
                hit = postfix(route[1], msg)  # type: ignore[index]  # a route is a tuple of mixed types by daemon
            elif which == _COURIER:
                hit = courier(route[1], msg)  # type: ignore[index]  # a route is a tuple of mixed types by daemon
            else:
                pid = m[5]
                hit = self._oldpam(route[1], msg, (m[3], pid) if pid is not None else None)  # type: ignore[index]  # a route is a tuple of mixed types by daemon
            if hit is None:
                continue
            iso_ts = m[1]
            if iso_ts is not None:
                yield finish(hit, ts_iso, iso_ts, text, source, first_lineno + i)
            else:
                yield finish(hit, ts_bsd, m[2], text, source, first_lineno + i)

    def _fast_event(self, m: re.Match[str], route: tuple[int, str | None], text: str,
                    source: str, lineno: int | None) -> AuthEvent | None:
        iso_ts, bsd_ts, host, _tag, pid = m.groups()
        if iso_ts is not None:
            return self._event(route, _prefix.TS_ISO, iso_ts, host, pid, text[m.end():], text, source, lineno)
        return self._event(route, _prefix.TS_BSD, bsd_ts, host, pid, text[m.end():], text, source, lineno)

    def _event(self, route: tuple[int, str | None], kind: int, ts: str, host: str | None,
               pid: str | None, msg: str, text: str, source: str, lineno: int | None) -> AuthEvent | None:
        if len(msg) > MAX_MESSAGE:
            return None
        if msg.endswith("\r"):  # CRLF files (sshd -E writes them)
            msg = msg[:-1]
            text = text.rstrip("\r")
        which, service = route
        if which == _SSHD:
            hit = self.sshd.parse(msg, (host, pid) if pid is not None else None)
        elif which == _DOVECOT:
            hit = self.dovecot.parse(msg, service)
        elif which == _POSTFIX:
            hit = postfix(service, msg)  # type: ignore[arg-type]  # service is known once the tag was routed
        elif which == _COURIER:
            hit = courier(service, msg)  # type: ignore[arg-type]  # service is known once the tag was routed
        else:
            hit = self._oldpam(service, msg, (host, pid) if pid is not None else None)  # type: ignore[arg-type]  # service is known once the tag was routed
        if hit is None:
            return None
        return self._finish(hit, kind, ts, text, source, lineno)

    def _oldpam(self, service: str, msg: str, conn: object | None) -> tuple | None:
        """A Linux-PAM 0.7x ``SERVICE(pam_unix)`` line, as the rule set of SERVICE would see
        today's wording of it (``pam_unix(SERVICE:auth): ...``)."""
        if msg.startswith("[ID "):  # illumos `[ID 800047 auth.info] `
            e = msg.find("] ")
            msg = msg[e + 2:] if e > 0 else ""
        if not msg.startswith("authentication failure; "):
            if service == "sshd" and msg[:1].isdigit() and " more authentication failure" in msg:
                # `N more authentication failures; ...` at the end of the connection
                return self.sshd.parse("pam_unix(sshd:auth): " + msg, conn)
            return None
        msg = "pam_unix(" + service + ":auth): " + msg
        if service == "sshd":
            return self.sshd.parse(msg, conn)
        return self.dovecot.parse(msg)

    def _finish(self, hit: tuple, kind: int, ts: str, text: str, source: str, lineno: int | None) -> AuthEvent:
        """A rule's hit -> the event: address normalised, text sanitised, timestamp resolved."""
        svc, ev_kind, addr, user, attempts, session = hit
        ip = _norm(addr) if addr else None
        # clean() leaves short printable ASCII as it is; skip its regex for those
        line = text if (len(text) <= LINE_CAP and text.isascii() and text.isprintable()) else clean(text)
        if user:
            user = user if (len(user) <= FIELD_CAP and user.isascii() and user.isprintable()) \
                else clean_field(user)
        else:
            user = None
        return _make_event(
            self.clock.resolve(kind, ts), svc, ev_kind, ip, user, attempts, source, lineno, line,
            clean_field(addr) if (ip is None and addr) else None,
            clean_field(session) if session else None,
        )
