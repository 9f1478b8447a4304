"""Dovecot (1.x-2.4) rules: login processes and ``auth_verbose`` lines.

Login processes (``pop3-login``, ``imap-login``, ``submission-login``, ``managesieve-login``)
write one line when a connection ends::

    Disconnected: <reason> (auth failed, N attempts in M secs): user=<X>, method=..., rip=IP, ...
    Login aborted: <reason> (auth failed, N attempts in M secs) (auth_failed): user=<X>, ...  (2.4)
    Aborted login: user=<X>, method=PLAIN, rip=IP, ...                                          (1.x)

The part before ``: user=<`` is dovecot's own text; the user name is attacker text (dovecot
only replaces control characters), so the address is the *last* ``, rip=`` (everything after
the user is dovecot's again) and the attempt count is only read from the left part.

That summary line is written when the connection closes, often minutes after the first
try (hydra kept connections 102-180 s in the lab). With ``auth_verbose=yes`` the auth
process also writes one line per attempt, in real time::

    auth: passwd-file(root,203.0.113.11,<sess>): unknown user                       (2.3)
    auth-worker(123): pam(root,203.0.113.11,<sess>): pam_authenticate() failed: ...  (2.3)
    auth(root,203.0.113.11,sasl:login)<sess>: Info: sql: Password mismatch          (2.4)
    auth-worker(root,203.0.113.11)<123><sess>: request [1]: sql: unknown user        (2.4)

so a dictionary attack is seen (and can be banned) after the first few tries instead of
when the attacker hangs up. Those lines are counted as they come, and the summary line of
the same ``session=<...>`` then adds only the attempts not counted yet. Both auth and
auth-worker may log one attempt; per session the larger of the two counts is used, so one
attempt is never counted twice. Attempts that come through dovecot's auth from postfix
SASL have no dovecot summary line and are also logged by postfix; with ``auth_verbose=yes``
those are seen twice (once by each daemon).
"""

from __future__ import annotations

import re

from ..model import Kind, Service
from .ledger import Ledger

K_FAIL, K_INVALID, K_ABORTED = Kind.AUTH_FAILED.value, Kind.INVALID_USER.value, Kind.ABORTED.value
K_PROBE, K_SUCCESS = Kind.PROBE.value, Kind.SUCCESS.value
OTHER = Service.OTHER.value

LOGIN_SERVICES = {
    "pop3-login": Service.POP3.value,
    "imap-login": Service.IMAP.value,
    "submission-login": Service.SUBMISSION.value,
    "managesieve-login": Service.SIEVE.value,
    "lmtp": Service.LMTP.value,
}

Hit = tuple[str, str, "str | None", "str | None", int, "str | None"]

_ATTEMPTS = re.compile(r"\(auth failed, (\d+) attempts?")
# 2.3 auth prefix after `DRIVER(`: `user,IP[,master][,<session>]): `
_AUTH23 = re.compile(r",([0-9A-Fa-f:.]+)(?:,master)?(?:,<([A-Za-z0-9+/=]*)>)?\): ")
# 2.4 auth prefix after `auth(` / `auth-worker(`: `user,IP[,mech...])[<pid>][<session>]: `
_AUTH24 = re.compile(r",([0-9A-Fa-f:.]+)(?:,[A-Za-z0-9:_.-]*)*\)(?:<\d+>)?(?:<([A-Za-z0-9+/=]+)>)?: ")
_DRIVER = re.compile(r"[a-z][a-z0-9_-]*\(")
_AUTH24_MSG = re.compile(r"(?:request \[\d+\]: )?(?:Info: )?(?:[A-Za-z0-9_-]+: )?")
# failure messages of passdbs (the whole message must be one of these)
_AUTH_FAIL = re.compile(
    r"(?:(unknown user)|(Password mismatch)|(invalid credentials)"
    r"|pam_authenticate\(\) failed: (?:(User not known to the underlying authentication module)"
    r"|Authentication failure|Permission denied)[^()]*(?: \([Pp]assword mismatch\?\))?)"
    r"(?: \(given password: .*\)| \(SHA1 of given password: [0-9a-f]+\))?$")
_AUTH_KEYWORDS = ("unknown user", "Password mismatch", "pam_authenticate() failed", "invalid credentials")


class DovecotRules:
    """dovecot message -> Hit, with the per-session real-time ledger."""

    def __init__(self, cap: int = 65536) -> None:
        # session -> [auth lines counted, auth-worker lines counted]
        self._sessions: Ledger[list[int]] = Ledger(cap)

    def parse(self, msg: str) -> Hit | None:
        """One dovecot message: ``pop3-login: ...`` / ``auth: ...`` (syslog tag removed)."""
        c = msg[:1]
        if c == "a":
            if msg.startswith("auth"):
                return self._auth(msg)
            return None
        colon = msg.find(": ", 0, 24)
        if colon < 0:
            return None
        service = LOGIN_SERVICES.get(msg[:colon])
        if service is None:
            return None
        body = msg[colon + 2:]
        if body.startswith("Info: "):
            body = body[6:]
        return self._login(service, body)

    # -- login summary lines --------------------------------------------------------------

    def _login(self, service: str, body: str) -> Hit | None:
        u = body.find("user=<")
        if u < 0:
            return None
        if u == 0:
            left = ""
        elif body[u - 2:u] == ": ":
            left = body[:u - 2]
        else:
            return None
        right = body[u + 6:]
        r = right.rfind(", rip=")
        if r < 0:
            return None
        tail = right[r + 6:]
        session = None
        s = tail.find(", session=<")
        if s >= 0:
            se = tail.find(">", s + 11)
            if se >= 0:
                session = tail[s + 11:se]
                rest = tail[:s] + tail[se + 1:]
            else:
                rest = tail
        else:
            rest = tail
        if ">" in rest:
            # dovecot writes no `>` after rip= but in session=<...>: this `rip=` was inside
            # the user name (a line without a real rip=, e.g. a UNIX socket client)
            return None
        e = tail.find(",")
        ip = tail if e < 0 else tail[:e]
        userpart = right[:r]
        mt = userpart.rfind(", method=")
        if mt >= 0 and "," not in userpart[mt + 9:] and " " not in userpart[mt + 9:]:
            userpart = userpart[:mt]
        if not userpart.endswith(">"):
            return None
        user = userpart[:-1]

        if left == "Login":
            return (service, K_SUCCESS, ip, user, 0, session)
        m = _ATTEMPTS.search(left)
        if m is not None:
            n = int(m.group(1))
            if session is not None:
                st = self._sessions.pop(session)
                if st is not None:
                    n = max(0, n - max(st))
            return (service, K_FAIL, ip, user, n, session)
        if "(no auth attempts" in left:
            return (service, K_PROBE, ip, user, 0, session)
        if left.startswith("Aborted login") or "(tried to use disallowed" in left \
                or "(tried to use disabled" in left:
            # dovecot 1.x `Aborted login: user=<root>, ...` (the 2009 seed), plaintext refused
            return (service, K_ABORTED, ip, user, 1, session)
        return None

    # -- auth_verbose lines -------------------------------------------------------------------

    def _auth(self, msg: str) -> Hit | None:
        for kw in _AUTH_KEYWORDS:
            if kw in msg:
                break
        else:
            return None
        worker = msg.startswith("auth-worker(")
        if msg.startswith("auth: ") or (worker and msg[12:13].isdigit()):
            # 2.3: `auth: [Info: ]DRIVER(user,ip,<sess>): msg` / `auth-worker(123): ...`
            p = msg.find(": ") + 2
            if msg.startswith("Info: ", p):
                p += 6
            d = _DRIVER.match(msg, p)
            if d is None:
                return None
            s = msg[d.end():]
            cands = list(_AUTH23.finditer(s))
            if len(cands) != 1:
                return None  # no address, or attacker text that looks like one: ambiguous
            m = cands[0]
            text = s[m.end():]
            if text.startswith("Info: "):
                text = text[6:]
        elif msg.startswith("auth(") or worker:
            s = msg[msg.find("(") + 1:]
            cands = list(_AUTH24.finditer(s))
            if len(cands) != 1:
                return None
            m = cands[0]
            text = s[m.end():]
            text = text[_AUTH24_MSG.match(text).end():]  # type: ignore[union-attr]
        else:
            return None
        f = _AUTH_FAIL.match(text)
        if f is None:
            return None
        user = s[:m.start()]
        ip, session = m.group(1), m.group(2) or None
        kind = K_INVALID if (f.group(1) or f.group(4)) else K_FAIL
        if user == "?":
            user = None
        n = 1
        if session is not None:
            st = self._sessions.get(session)
            if st is None:
                st = [0, 0]
                self._sessions.put(session, st)
            before = max(st)
            st[1 if worker else 0] += 1
            n = max(st) - before
        return (OTHER, kind, ip, user, n, session)
