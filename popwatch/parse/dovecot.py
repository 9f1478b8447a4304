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
MAIL = Service.MAIL.value

LOGIN_SERVICES = {
    "pop3-login": Service.POP3.value,
    "imap-login": Service.IMAP.value,
    "submission-login": Service.SUBMISSION.value,
    "managesieve-login": Service.SIEVE.value,
    "lmtp": Service.LMTP.value,
}

Hit = tuple[str, str, "str | None", "str | None", int, "str | None"]

_ATTEMPTS = re.compile(r"\(auth failed, (\d+) attempts?")
# 1.1 imap-login/pop3-login client.c cmd_logout: `Aborted login (%u authentication attempts)`
_ATTEMPTS11 = re.compile(r"Aborted login \((\d+) authentication attempts\)$")
# 2.3 auth prefix after `DRIVER(`: `user,IP[,master][,<session>]): `
_AUTH23 = re.compile(r",([0-9A-Fa-f:.]+)(?:,master)?(?:,<([A-Za-z0-9+/=]*)>)?\): ")
# 2.4 auth prefix after `auth(` / `auth-worker(`: `user,IP[,mech...])[<pid>][<session>]: `
_AUTH24 = re.compile(r",([0-9A-Fa-f:.]+)(?:,[A-Za-z0-9:_.-]*)*\)(?:<\d+>)?(?:<([A-Za-z0-9+/=]+)>)?: ")
_DRIVER = re.compile(r"[a-z][a-z0-9_-]*\(")
_AUTH24_MSG = re.compile(r"(?:request \[\d+\]: )?(?:Info: )?(?:[A-Za-z0-9_-]+: )?")
# failure messages of passdbs (the whole message must be one of these)
_AUTH_FAIL = re.compile(
    r"(?:(unknown user)|([Pp]assword mismatch)(?: \(for LDAP bind\))?|(invalid credentials)"
    r"|pam_authenticate\(\) failed: (?:(User not known to the underlying authentication module)"
    r"|Authentication failure|Permission denied)[^()]*(?: \([Pp]assword mismatch\?\))?"
    r"|Login failed \(status=1\))"
    r"(?: \(given password: .*\)| \(SHA1 of given password: [0-9a-f]+\))?$")
# (1.x mechanisms and bsdauth/sia passdbs write `password mismatch` in lower case)
_AUTH_KEYWORDS = ("unknown user", "assword mismatch", "pam_authenticate() failed", "invalid credentials",
                  "Login failed (status=")
_WORKER_CONN = re.compile(r"conn [^\s()]+ \(pid=\d+,uid=\d+\): auth-worker<\d+>: (?:Info: )?")
# Linux-PAM `pam_unix(dovecot:auth): authentication failure; ... rhost=ADDR [ user=USER]`
_PAM = re.compile(
    r"pam_[a-z0-9_]+\(([A-Za-z0-9_.-]+):auth\): authentication failure; logname=\S* uid=\d* euid=\d* "
    r"tty=\S* ruser=\S* rhost=(\S+) ?(?: user=(.*))?$")
_PAM_SERVICES = {"imap": Service.IMAP.value, "imaps": Service.IMAP.value, "pop3": Service.POP3.value,
                 "pop3s": Service.POP3.value, "submission": Service.SUBMISSION.value,
                 "sieve": Service.SIEVE.value, "managesieve": Service.SIEVE.value, "smtp": Service.SMTP.value}


def _ipkey(ip: str) -> str:
    """The address as a ledger key: dovecot 1.x writes v4-mapped forms where 2.x writes IPv4."""
    return ip[7:] if ip.startswith("::ffff:") else ip


class DovecotRules:
    """dovecot message -> Hit, with the per-session real-time ledger."""

    def __init__(self, cap: int = 65536) -> None:
        # (session, address) -> [auth lines counted, auth-worker lines counted]: a session id
        # is random per connection, the address guards against ids that repeat anyway
        # (copied or made-up lines, a proxy that forwards them)
        self._sessions: Ledger[list[int]] = Ledger(cap)
        # session -> service, from the login process's lines (auth lines do not name it)
        self._svc: Ledger[str] = Ledger(cap)
        # address -> [attempts counted by PAM lines and not yet by a dovecot line]: PAM's own
        # `pam_unix(dovecot:auth): authentication failure` has no session, dovecot's lines
        # about the same attempt (auth_verbose, or the summary) then add nothing for it
        self._pam_ip: Ledger[list[int]] = Ledger(cap)

    def parse(self, msg: str, proc: str | None = None) -> Hit | None:
        """One dovecot message: ``pop3-login: ...`` / ``auth: ...`` (syslog tag removed).

        ``proc``: the dovecot process the syslog tag named (1.x ``dovecot-auth``, inetd
        ``imap-login``), whose messages carry no process prefix of their own."""
        if proc is not None:
            if msg.startswith("[ID "):  # illumos `[ID 702911 mail.info] `
                e = msg.find("] ")
                msg = msg[e + 2:] if e > 0 else ""
            if not msg.startswith("pam_"):
                msg = proc + ": " + msg
        c = msg[:1]
        if c == "a":
            if msg.startswith("auth"):
                return self._auth(msg)
            return None
        if c == "d" and msg.startswith("dovecot: "):
            # doubled prefix: `dovecot[N]: dovecot: auth(default): ...` (1.x/2.0 via syslog)
            msg = msg[9:]
            c = msg[:1]
            if c == "a":
                return self._auth(msg) if msg.startswith("auth") else None
        elif c == "[" and msg.startswith("[ID "):
            e = msg.find("] ")  # illumos `[ID 702911 mail.info] `
            return self.parse(msg[e + 2:]) if e > 0 else None
        if c == "p" and msg.startswith("pam_") and " authentication failure; " in msg:
            return self._pam(msg)
        if c == "I":
            # 1.x log_path with an empty log_prefix: `May 31 09:43:57 Info: pop3-login: ...`
            msg = msg.removeprefix("Info: ")
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
            return self._login_nouser(service, body)
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
        method = mt >= 0 and "," not in userpart[mt + 9:] and " " not in userpart[mt + 9:]
        if method:
            userpart = userpart[:mt]
        if not userpart.endswith(">"):
            return None
        user = userpart[:-1]
        if method and user and left.startswith("Disconnected") and "(" not in left:
            # 1.0 (no `(auth failed, N attempts)` yet): a client that named a user and began
            # a mechanism, then dropped or timed out before a login: `Disconnected[: Inactivity]:
            # user=<root>, method=PLAIN, rip=...` - the dropped twin of `Aborted login: user=<root>`
            if session is not None:
                self._svc.put(session, service)
            return (service, K_ABORTED, ip, user, 1, session)
        return self._outcome(service, left, ip, user, session)

    def _login_nouser(self, service: str, body: str) -> Hit | None:
        """A summary with no ``user=<>`` (dovecot leaves out empty fields): all of the right
        part is dovecot's own (method, rip, lip, session), so the first ``rip=`` is the one."""
        k = body.find(": method=")
        if k < 0:
            k = body.find(": rip=")
            if k < 0:
                return None
        left, right = body[:k], body[k + 2:]
        if right.startswith("rip="):
            r = 4
        else:
            r = right.find(", rip=")
            if r < 0:
                return None
            r += 6
        e = right.find(",", r)
        ip = right[r:] if e < 0 else right[r:e]
        session = None
        s = right.find(", session=<")
        if s >= 0:
            se = right.find(">", s + 11)
            if se > 0:
                session = right[s + 11:se]
        if left == "Aborted login" and not right.startswith("method="):
            # 1.x cmd_quit/cmd_logout with neither a user nor a mechanism: QUIT before any
            # login was tried (a monitoring check, a scanner); 1.x writes no attempt count
            return (service, K_PROBE, ip, None, 0, session)
        return self._outcome(service, left, ip, None, session)

    def _outcome(self, service: str, left: str, ip: str, user: str | None, session: str | None) -> Hit | None:
        if session is not None:
            self._svc.put(session, service)
        if left == "Login":
            return (service, K_SUCCESS, ip, user, 0, session)
        m = _ATTEMPTS.search(left)
        if m is not None:
            n = int(m.group(1))
            if session is not None:
                st = self._sessions.pop((session, _ipkey(ip)))
                if st is not None:
                    n = max(0, n - max(st))
            pend = self._pam_ip.get(ip)
            if pend is not None and pend[0] and n:
                # attempts already counted by their PAM lines alone (auth_verbose off)
                k = min(n, pend[0])
                pend[0] -= k
                n -= k
            return (service, K_FAIL, ip, user, n, session)
        if left.startswith("Aborted login (") and left[15:16].isdigit():
            m = _ATTEMPTS11.match(left)
            if m is None:
                return None
            n = int(m.group(1))
            return (service, K_FAIL if n else K_PROBE, ip, user, n, session)
        if "(no auth attempts" in left:
            return (service, K_PROBE, ip, user, 0, session)
        if left.startswith("Aborted login") or "(tried to use disallowed" in left \
                or "(tried to use disabled" in left:
            # dovecot 1.x `Aborted login: user=<root>, ...` (the 2009 seed), plaintext refused
            return (service, K_ABORTED, ip, user, 1, session)
        if "(proxy dest auth failed)" in left:
            # the backend refused the credentials this proxy passed on
            return (service, K_FAIL, ip, user, 1, session)
        return None

    def _pam(self, msg: str) -> Hit | None:
        """Linux-PAM's line from the auth worker: the only per-attempt line when
        auth_verbose is off. Its service is PAM's (``dovecot`` unless ``pam: args = %s``)."""
        m = _PAM.match(msg)
        if m is None or msg.count(" rhost=") != 1:
            return None  # a second rhost= is in a user name (ruser= and user= are dovecot's user)
        pam_service, rhost, user = m.groups()
        pend = self._pam_ip.get(rhost)
        if pend is None:
            self._pam_ip.put(rhost, [1])
        else:
            pend[0] += 1
        return (_PAM_SERVICES.get(pam_service, MAIL), K_FAIL, rhost, user, 1, None)

    # -- auth_verbose lines -------------------------------------------------------------------

    def _auth(self, msg: str) -> Hit | None:
        for kw in _AUTH_KEYWORDS:
            if kw in msg:
                break
        else:
            return None
        worker = msg.startswith("auth-worker(")
        if msg.startswith(("auth: ", "auth(default): ", "auth-worker(default): ")) \
                or (worker and msg[12:13].isdigit()):
            # 2.3: `auth: [Info: ]DRIVER(user,ip,<sess>): msg` / `auth-worker(123): ...`
            # (1.x/2.0: `auth(default): ...`, `auth-worker(default): ...`)
            p = msg.find(": ") + 2
            if msg.startswith("Info: ", p):
                # every passdb writes a client's failure at info level (auth_request_log_info,
                # e_info), with auth_debug too; errors are the server's own (`... missing?`)
                p += 6
            if msg.startswith("conn ", p):
                # 2.3.x worker: `conn unix:auth-worker (pid=N,uid=N): auth-worker<N>: DRIVER(...)`
                w = _WORKER_CONN.match(msg, p)
                if w is None:
                    return None
                p = w.end()
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
            text = text[_AUTH24_MSG.match(text).end():]  # type: ignore[union-attr]  # the message regex matched just before (finditer)
        else:
            return None
        f = _AUTH_FAIL.match(text)
        if f is None:
            return None
        user: str | None = s[:m.start()]
        ip, session = m.group(1), m.group(2) or None
        kind = K_INVALID if (f.group(1) or f.group(4)) else K_FAIL
        if user == "?":
            user = None
        n = 1
        if session is not None:
            sk = (session, _ipkey(ip))
            st = self._sessions.get(sk)
            if st is None:
                st = [0, 0]
                self._sessions.put(sk, st)
            before = max(st)
            st[1 if worker else 0] += 1
            n = max(st) - before
        if n and text.startswith("pam_authenticate"):
            # pam_authenticate() failed: the PAM module logged this attempt just before
            pend = self._pam_ip.get(ip)
            if pend is not None and pend[0]:
                pend[0] -= 1
                n = 0
        # the service is only named by the login process (usually its summary, at the end):
        # until then a mail login whose protocol is not known yet (the store relabels)
        svc = (self._svc.get(session) if session is not None else None) or MAIL
        return (svc, kind, ip, user, n, session)
