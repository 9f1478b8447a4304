"""Line prefixes: find the timestamp, host, daemon tag and pid in front of a log message.

Formats (all seen on real systems):

- RFC 3339, Debian 12 rsyslog default: ``2026-11-28T05:00:21.664766+00:00 host tag[pid]: msg``
- traditional BSD syslog: ``Nov 28 05:00:21 host tag[pid]: msg`` (local time, no year)
- dovecot ``log_path`` files: ``Nov 28 05:18:22 pop3-login: Info: ...`` or
  ``2026-11-28 05:19:09 auth: ...`` (no host, no tag: the whole rest is a dovecot message)
- RFC 5424: ``<38>1 2026-11-28T05:00:21Z host sshd 1234 - - msg`` (and RFC 3164 with ``<PRI>``)
- bare messages (``sshd -E``): no prefix at all
- no timestamp: ``host sshd[123]: msg`` / ``sshd[123]: msg`` (journal exports, other tools)
- daemontools/s6 multilog: ``@4000000063a1b2c30d2ac4fc msg`` (TAI64N label), and the same through
  tai64nlocal: ``2018-06-26 13:22:02.108781500 msg``
- BSD with an unpadded day (``Sep 8 07:16:27``), macOS ASL ``sshd[123] <Notice>: msg``
- a syslog template with a space-separated local date: ``2026-11-28 05:19:09 host sshd[123]: msg``
- macOS ``log show``: ``2020-03-23 06:47:42.801612-0700  host sshd[123]: msg``
- socklog (runit): ``auth.info: [Mon DD HH:MM:SS ]sshd[123]: msg`` after svlogd's stamp
- dovecot 1.x log_path: ``dovecot: May 31 09:43:57 Info: pop3-login: ...``
- journald entries: structured fields, see :func:`from_journal`

Splitting is string slicing only; the timestamp is parsed lazily (only for lines a daemon
rule accepted) and cached per second, because most lines of a busy log share seconds.
"""

from __future__ import annotations

import datetime as _dt
import re
import time
from collections.abc import Callable, Mapping

MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}

#: timestamp kinds returned by :func:`split`
TS_NONE, TS_ISO, TS_BSD, TS_LOCAL_ISO, TS_EPOCH, TS_TAI64N = 0, 1, 2, 3, 4, 5

#: the pseudo tag for dovecot's own log_path files (the message keeps dovecot's process prefix)
DOVECOT_LOGPATH = "dovecot"

# (ts_kind, ts_text, host, tag, pid, msg)
Split = tuple[int, str, str | None, str | None, str | None, str]


def _tag_pid(token: str) -> tuple[str, str | None]:
    """``sshd[123]`` -> (``sshd``, ``123``); ``dovecot`` -> (``dovecot``, None)."""
    b = token.find("[")
    if b > 0 and token.endswith("]"):
        return token[:b], token[b + 1:-1]
    return token, None


def _host_tag_msg(text: str, p: int) -> tuple[str | None, str | None, str | None, str] | None:
    """Split ``host tag[pid]: msg`` starting at ``p``; None when it is not that shape."""
    h = text.find(" ", p)
    if h < 0:
        return None
    first = text[p:h]
    if first.endswith(":"):
        # no host: either `tag[pid]: msg` or a dovecot log_path process prefix
        if "[" in first and first.endswith("]:"):
            tag, pid = _tag_pid(first[:-1])
            return None, tag, pid, text[h + 1:]
        return None, DOVECOT_LOGPATH, None, text[p:]
    if "(" in first:
        # dovecot 2.4 log_path: `auth(user,ip,...)<sess>: ...` (no host)
        return None, DOVECOT_LOGPATH, None, text[p:]
    s2 = text.find(" ", h + 1)
    if s2 > 0 and text[s2 - 1] == "]" and text[h + 1:h + 2].isalpha() and text[s2 + 1:s2 + 2] != "<":
        # a tag[pid] with no colon after it (rsyslog 8 writing a forwarded RFC 5424 message)
        w = text[h + 1:s2]
        if "[" in w:
            tag, pid = _tag_pid(w)
            if pid is not None and pid.isdigit():
                return first, tag, pid, text[s2 + 1:]
    c = text.find(": ", h + 1)
    if c < 0:
        if text.endswith(":"):
            c = len(text) - 1
        else:
            return None
    token = text[h + 1:c]
    if token.endswith(">") and " <" in token:
        # macOS ASL `syslog` std format: `sender[pid] <Level>: msg`
        token = token[:token.rfind(" <")]
    if " " in token:
        # busybox syslogd adds `facility.level` before the tag
        token = token.rsplit(" ", 1)[1]
    if not token:
        return None
    tag, pid = _tag_pid(token)
    return first, tag, pid, text[c + 2:]


def _rfc5424(text: str, p: int) -> Split | None:
    """``1 TS HOST APP PROCID MSGID SD MSG`` starting after ``<PRI>``."""
    parts = text[p:].split(" ", 6)
    if len(parts) < 6 or parts[0] != "1":
        return None
    _v, ts, host, app, procid, _msgid = parts[:6]
    rest = parts[6] if len(parts) > 6 else "-"
    # structured data: `-` or one or more `[id k="v" ...]` (values may hold `\]` and spaces)
    if rest.startswith("-"):
        msg = rest[2:] if rest.startswith("- ") else rest[1:]
    elif rest.startswith("["):
        i, n, inq = 0, len(rest), False
        while i < n:
            ch = rest[i]
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                inq = not inq
            elif ch == "]" and not inq and (i + 1 >= n or rest[i + 1] != "["):
                break
            i += 1
        msg = rest[i + 2:] if i + 1 < n else ""
    else:
        return None
    if msg.startswith("\ufeff"):
        msg = msg[1:]
    return (TS_ISO if ts != "-" else TS_NONE, ts, None if host == "-" else host,
            None if app == "-" else app, None if procid == "-" else procid, msg)


#: the two common syslog shapes in one match: (iso ts, bsd ts, host, tag, pid). When it
#: matches, the result is exactly what :func:`split` gives (the tag token has no space or
#: colon, so its ``: `` is the first one after the host); otherwise callers use :func:`split`.
FAST = re.compile(  # possessive quantifiers: each token ends at a delimiter it cannot contain
    r"(?:(\d{4}-\d\d-\d\dT[^ ]{8,40}+)|((?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"(?:[ \d]\d|\d) \d\d:\d\d:\d\d)) ([^\s:(]++) ([^\s:\[\]]++)(?:\[([^\]\s]*+)\])?: ")


def split(text: str) -> Split:
    """Split one line. Lines with no recognisable prefix come back with tag None (bare)."""
    c0 = text[:1]
    if "0" <= c0 <= "9":
        t10 = text[10:11]
        if text[4:5] == "-" and t10 == "T":
            sp = text.find(" ", 19)
            if sp > 0:
                if text[sp + 1:sp + 6] in _SOCKLOG_FAC:
                    # svlogd -tt: `2015-05-27T04:31:28.10040 auth.info: <what the client sent>`
                    inner = _socklog(text[sp + 1:])
                    if inner is not None:
                        return (TS_ISO, text[:sp], *inner[2:])
                r = _host_tag_msg(text, sp + 1)
                if r is not None:
                    return (TS_ISO, text[:sp], *r)
        elif text[4:5] == "-" and t10 == " " and text[13:14] == ":" and text[19:20] in ".+-":
            # macOS `log show --style syslog`: `2020-03-23 06:47:42.801612-0700  host sshd[N]: `
            sp = text.find(" ", 19)
            if sp > 0:
                p = sp + 1
                while text[p:p + 1] == " ":
                    p += 1
                r = _host_tag_msg(text, p)
                if r is not None and r[0] is not None and r[2] is not None:
                    return (TS_ISO, text[:sp], *r)
                # tai64nlocal output of a multilog file: `2018-06-26 13:22:02.108781500 MSG`
                inner = split(text[p:])
                if inner[0] == TS_NONE:
                    return (TS_ISO, text[:sp], *inner[2:])
                return inner
        elif text[4:5] == "-" and t10 == " " and text[13:14] == ":":
            # dovecot log_path with log_timestamp = "%Y-%m-%d %H:%M:%S " (`auth: ...`), or a
            # syslog template with that date (`2026-11-28 05:19:09 host sshd[N]: ...`)
            r = _host_tag_msg(text, 20)
            if r is not None and r[0] is not None:
                return (TS_LOCAL_ISO, text[:19], *r)
            return (TS_LOCAL_ISO, text[:19], None, DOVECOT_LOGPATH, None, text[20:])
    elif c0 in MONTHS_FIRST and text[3:4] == " " and text[:3] in MONTHS:
        if text[9:10] == ":":
            r = _host_tag_msg(text, 16)
            if r is not None:
                return (TS_BSD, text[:15], *r)
        elif text[8:9] == ":" and text[5:6] == " ":
            # day of the month not space-padded: `Sep 8 07:16:27`
            r = _host_tag_msg(text, 15)
            if r is not None:
                return (TS_BSD, text[:14], *r)
    elif c0 == "@" and text[1:5] == "4000" and text[25:26] == " ":
        # daemontools multilog / s6 TAI64N label: `@4000000063a1b2c30d2ac4fc MESSAGE`
        inner = split(text[26:])
        if inner[0] == TS_NONE:
            return (TS_TAI64N, text[1:25], *inner[2:])
        return inner
    elif c0 == "<":
        e = text.find(">", 1, 6)
        if e > 1 and text[1:e].isdigit():
            p = e + 1
            if text[p:p + 2] == "1 ":
                r5 = _rfc5424(text, p)
                if r5 is not None:
                    return r5
            else:
                inner = split(text[p:])
                if inner[3] is not None:
                    return inner
    nt = _no_timestamp(text)
    if nt is not None:
        return nt
    return (TS_NONE, "", None, None, None, text)


#: `host tag[pid]: msg` / `tag[pid]: msg` with no timestamp (journal exports, other tools);
#: without a pid only the tags of the daemons read here (a bare `sshd -E` message never
#: starts with one of them followed by `: `)
_NO_TS = re.compile(r"(?:([A-Za-z0-9][A-Za-z0-9._-]*) )?([A-Za-z][A-Za-z0-9_./-]*(?:\(pam_unix\))?)(?:\[(\d+)\])?: ")
_NO_TS_TAGS = frozenset({"sshd", "sshd-session", "dovecot"})
_DOVECOT_PROCS = ("auth: ", "auth-worker(", "pop3-login: ", "imap-login: ", "submission-login: ",
                  "managesieve-login: ", "auth(")


#: socklog (runit, Void Linux) writes `facility.level: ` before each message it got
_SOCKLOG_FAC = frozenset({"auth.", "authp", "mail.", "daemo", "user.", "local"})
_SOCKLOG = re.compile(r"(?:auth|authpriv|mail|daemon|user|local[0-7])\.[a-z]+: ")


def _socklog(text: str) -> Split | None:
    """``auth.info: [Mon DD HH:MM:SS ]tag[pid]: msg`` (socklog, then svlogd's own stamp)."""
    m = _SOCKLOG.match(text)
    if m is None:
        return None
    inner = split(text[m.end():])
    if inner[3] is None:
        return None
    # musl's syslog() leaves the space before the message
    return (*inner[:5], inner[5].removeprefix(" "))


def _no_timestamp(text: str) -> Split | None:
    if text[:5] in _SOCKLOG_FAC:
        sl = _socklog(text)
        if sl is not None:
            return sl
    m = _NO_TS.match(text)
    if m is not None:
        host, tag, pid = m.groups()
        if tag == "dovecot" and host is None and pid is None:
            # dovecot 1.x log_path: log_prefix, then log_timestamp, then the level:
            # `dovecot: May 31 09:43:57 Info: pop3-login: ...` (failures.c)
            rest = text[m.end():]
            if rest[:3] in MONTHS and rest[15:16] == " ":
                ts, rest = rest[:15], rest[16:]
                kind = TS_BSD
            elif rest[4:5] == "-" and rest[19:20] == " ":
                ts, rest = rest[:19], rest[20:]
                kind = TS_LOCAL_ISO
            else:
                return (TS_NONE, "", host, tag, pid, rest)
            for level in ("Info: ", "Warning: ", "Error: "):
                if rest.startswith(level):
                    rest = rest[len(level):]
                    break
            return (kind, ts, None, DOVECOT_LOGPATH, None, rest)
        if pid is not None or tag in _NO_TS_TAGS:
            return (TS_NONE, "", host, tag, pid, text[m.end():])
    if text.startswith(_DOVECOT_PROCS):
        # dovecot's log_path / stderr with no timestamp (multilog adds its own)
        return (TS_NONE, "", None, DOVECOT_LOGPATH, None, text)
    return None


MONTHS_FIRST = frozenset(m[0] for m in MONTHS)


class Clock:
    """Turns timestamp text into epoch seconds, with per-second caches (bounded)."""

    CACHE_MAX = 4096

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.now = now
        self._iso: dict[str, float] = {}
        self._bsd: dict[str, float] = {}
        self._local: dict[str, float] = {}
        self._mins: dict[str, float] = {}

    def _put(self, cache: dict[str, float], key: str, value: float) -> None:
        if len(cache) >= self.CACHE_MAX:
            cache.clear()
        cache[key] = value

    def resolve(self, kind: int, ts: str) -> float:
        """Epoch seconds for a timestamp of ``kind``; now() when absent or unparseable."""
        try:
            if kind == TS_ISO:
                return self._iso_ts(ts)
            if kind == TS_BSD:
                v = self._bsd.get(ts)
                # a cached year goes stale when the same date comes round again
                if v is None or v + 365 * 86400 <= self.now():
                    v = self._bsd_ts(ts)
                    self._put(self._bsd, ts, v)
                return v
            if kind == TS_LOCAL_ISO:
                v = self._local.get(ts)
                if v is None:
                    v = time.mktime(time.strptime(ts, "%Y-%m-%d %H:%M:%S"))
                    self._put(self._local, ts, v)
                return v
            if kind == TS_EPOCH:
                return int(ts) / 1_000_000
            if kind == TS_TAI64N:
                # label = 2**62 + 10 + Unix seconds (daemontools' convention), then nanoseconds
                return int(ts[:16], 16) - 4611686018427387914 + int(ts[16:24], 16) / 1e9
        except (ValueError, OverflowError, OSError):
            pass
        return self.now()

    def _iso_ts(self, ts: str) -> float:
        # fast path for rsyslog's `2026-11-28T05:00:21.664766+00:00`: the minute (with its
        # zone) is cached, so most lines cost two slices, a dict lookup and two int()s
        if len(ts) == 32 and ts[19] == "." and ts[16] == ":" and ts[26] in "+-":
            key = ts[:16] + ts[26:]
            base = self._mins.get(key)
            sec, us = ts[17:19], ts[20:26]
            if base is not None and sec.isdigit() and us.isdigit():
                return base + int(sec) + int(us) / 1e6
            v = self._iso_slow(ts)  # validates the whole timestamp (raises on garbage)
            self._put(self._mins, key, float(round(v - int(sec) - int(us) / 1e6)))
            return v
        return self._iso_slow(ts)

    def _iso_slow(self, ts: str) -> float:
        base = ts[:19]
        rest = ts[19:]
        frac = 0.0
        if rest.startswith((".", ",")):
            i = 1
            n = len(rest)
            while i < n and rest[i].isdigit():
                i += 1
            if i > 1:
                frac = float("0." + rest[1:i])
            rest = rest[i:]
        key = base + rest
        v = self._iso.get(key)
        if v is None:
            zone = rest
            if zone in ("Z", "z"):
                zone = "+00:00"
            d = _dt.datetime.fromisoformat(base + zone)
            if d.tzinfo is None:
                v = time.mktime(d.timetuple())
            else:
                v = d.timestamp()
            self._put(self._iso, key, v)
        return v + frac

    def _bsd_ts(self, ts: str) -> float:
        # `Nov 28 05:00:21` / `Nov  8 05:00:21`, local time: the most recent such date
        # that is not in the future (one day of slack for clock skew between hosts).
        if len(ts) == 14:  # `Sep 8 07:16:27`
            ts = ts[:4] + " " + ts[4:]
        mon = MONTHS[ts[:3]]
        day = int(ts[4:6])
        hh, mm, ss = int(ts[7:9]), int(ts[10:12]), int(ts[13:15])
        now = self.now()
        year = time.localtime(now).tm_year
        for y in range(year, year - 9, -1):  # Feb 29 may need a few years back
            try:
                v = time.mktime((y, mon, day, hh, mm, ss, 0, 0, -1))
            except (OverflowError, ValueError):
                continue
            # Feb 29 in a non-leap year normalises to Mar 1; reject that year
            if time.localtime(v).tm_mon != mon:
                continue
            if v <= now + 86400:
                return v
        return time.mktime((year - 1, mon, min(day, 28), hh, mm, ss, 0, 0, -1))


def from_journal(fields: Mapping[str, str]) -> tuple[int, str, str | None, str | None, str | None]:
    """journald fields -> (ts_kind, ts_text, host, tag, pid)."""
    ts = fields.get("__REALTIME_TIMESTAMP") or fields.get("_SOURCE_REALTIME_TIMESTAMP") or ""
    tag = fields.get("SYSLOG_IDENTIFIER") or fields.get("_COMM")
    pid = fields.get("_PID") or fields.get("SYSLOG_PID")
    return (TS_EPOCH if ts else TS_NONE, ts, fields.get("_HOSTNAME"), tag, pid)


__all__ = ["Clock", "from_journal", "split"]
