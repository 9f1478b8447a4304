"""OpenSSH (3.x-10.x, ``sshd``, ``sshd-session``, ``sshd-auth``) rules, with Linux-PAM and tcp-wrappers lines.

Every rule is anchored at the start of the message (after the tag) and takes the address
from the position sshd writes it. Where the user name (attacker text) comes *before* the
address and only fixed text follows, the rightmost match wins (regex greediness); where
attacker text can appear on both sides (certificate key IDs), a line with more than one
candidate address is ambiguous and yields no address.

Counting, per connection (sshd pid, or address+port for pid-less ``sshd -E`` lines):
one password attempt writes up to three lines: ``Invalid user X`` (first attempt only),
``pam_unix(sshd:auth): authentication failure`` and ``Failed password``. Attempt k is
counted by whichever of its lines comes first, so the total is the number of attempts
(and at least one for a connection that only said ``Invalid user`` or was disconnected
while authenticating).
"""

from __future__ import annotations

import re

from ..model import Kind, Service
from .ledger import Ledger

SSH = Service.SSH.value
K_FAIL, K_INVALID, K_TOO_MANY = Kind.AUTH_FAILED.value, Kind.INVALID_USER.value, Kind.TOO_MANY.value
K_NOT_ALLOWED, K_PROBE, K_SUCCESS = Kind.NOT_ALLOWED.value, Kind.PROBE.value, Kind.SUCCESS.value

# (service, kind, address text, user text, attempts, session)
Hit = tuple[str, str, "str | None", "str | None", int, "str | None"]

_METHOD = re.compile(r"(Failed|Accepted) (\S+) for ")
# the usual shape: nothing but a key fingerprint may follow `ssh2`, so the last ` from ` of the
# line starts the address (attacker text only before it); matched at that position
_FAILED_TAIL = re.compile(
    r" from (\S+) port (\d+) ssh2(?:: [A-Za-z0-9@.-]+ (?:SHA256:[A-Za-z0-9+/=]+|MD5:[0-9a-f:]+|[0-9a-f:]+))?$")
_INVALID_TAIL = re.compile(r" from (\S+?)(?: port (\d+))?$")
# OpenSSH < 6.x: `port N` with no ` ssh2` or with ` ssh1`; anything after it is checked below
_FROM_PORT = re.compile(r" from (\S+) port (\d+)(?: ssh[12])?(?=[: ]|$)")
# key info after `ssh2: ` that holds no free text (plain keys; certificates carry a key ID)
_STRICT_TAIL = re.compile(r": [A-Za-z0-9@.-]+ (?:SHA256:[A-Za-z0-9+/=]+|MD5:[0-9a-f:]+|[0-9a-f:]+)$")
# Linux-PAM's pam_unix (and pam_sss, pam_ldap... with the same wording): `MODULE(SERVICE:auth)`
_PAM = re.compile(
    r"pam_[a-z0-9_]+\([A-Za-z0-9_.-]+:auth\): authentication failure; logname=\S* uid=\d* euid=\d* "
    r"tty=\S* ruser=\S* rhost=(\S*) ?(?: user=(.*))?$")
# pam_unix's count of the failures it did not log one by one, written when sshd ends the PAM
# handle (`PAM` is libpam's prefix when no module is running, Linux-PAM >= 0.99; a module's own
# prefix when the count is written while it runs): `PAM 2 more authentication failures; ...`
_PAM_MORE = re.compile(
    r"(?:PAM|pam_[a-z0-9_]+\([A-Za-z0-9_.-]+:auth\):) (\d{1,6}) more authentication failures?; logname=\S* "
    r"uid=\d* euid=\d* tty=\S* ruser=\S* rhost=(\S*) ?(?: user=(.*))?$")
# auth-pam.c: `PAM: <pam_strerror> for [illegal user ]USER from HOST`; Apple's sshd adds
# ` via LOCAL-ADDRESS` (the server's own address, never the attacker's)
# (the message is pam_strerror() text, any case: Linux-PAM `Authentication failure`, `User not
# known to the underlying authentication module`, `Permission denied`, `Have exhausted maximum
# number of retries for service`; OpenPAM `authentication error`, `unknown user`. Errors of
# the server's own PAM stack - `Module is unknown`, `System error`, `Authentication service
# cannot retrieve authentication info` - say nothing about the client and are not read.)
_PAM_ERR = re.compile(r"PAM: (?i:(authentication failure|authentication error|authentication failed|"
                      r"(user not known to the underlying authentication module|unknown user|no such user)|"
                      r"permission denied|have exhausted maximum number of retries for service|"
                      r"maximum number of tries exceeded)) "
                      r"for (illegal user )?(.*) from (\S+?)(?: via \S+)?$")
# packet.c: `Received disconnect from HOST[ port N]:CODE: REASON` (REASON is the client's text;
# 6.2-7.x log it as `error: ` when the reason is not 11 by-application); reason 14 (no more/no
# supported authentication methods) ends a connection that tried no accepted method: a probe
_RECV_DISC = re.compile(r"Received disconnect from (\S+?)(?: port (\d+):|: )(\d+): ")
# tcp-wrappers (libwrap refuse()): `refused connect from ADDR` / `NAME (ADDR)` / `user@NAME (ADDR)`
_REFUSED = re.compile(r"refused connect from (?:\S*? \()?([0-9A-Fa-f:.]+)\)?$")
_CONN_PLAIN = re.compile(r"(?:Disconnected from|Connection closed by|Connection reset by) (\S+) port (\d+)$")
_DISCONNECTING = re.compile(
    r"Disconnecting (invalid|authenticating) user (.*) (\S+) port (\d+): "
    r"Too many authentication failures$")
_MAX_EXCEEDED = re.compile(
    r"maximum authentication attempts exceeded for (invalid user )?(.*) from (\S+) port (\d+)(?: ssh[12])?$")
# `Disconnecting ADDR port N: ...` (7.x+ with no user yet) and the address-less older forms
_DISCONNECTING_ADDR = re.compile(r"Disconnecting (\S+) port (\d+): Too many authentication failures$")
_NOT_ALLOWED = re.compile(r"User (.*) from (\S+) not allowed because (?:not listed|listed|none of|a group|"
                          r"shell|account|user|not in)[^\n]*$")
_ILLEGAL = re.compile(r"Illegal user (.*) from (\S+)$")
_NOT_ALLOWED_NOADDR = re.compile(
    r"User (\S+) not allowed because (?:account is locked|shell \S+ (?:does not exist|is not executable)|"
    r"listed in DenyUsers|not listed in AllowUsers|not in any group|a group is listed in DenyGroups|"
    r"none of user's groups are listed in AllowGroups)$")
_ROOT_REFUSED = re.compile(r"ROOT LOGIN REFUSED FROM (\S+?)(?: port (\d+))?$")
_NEGOTIATE = re.compile(r"Unable to negotiate with (\S+) port (\d+): ")
_BANNER = re.compile(r"banner exchange: Connection from (\S+) port (\d+): ")
_NO_IDENT = re.compile(r"Did not receive identification string from (\S+?)(?: port (\d+))?$")
_BAD_PROTO = re.compile(r"Bad protocol version identification .* from (\S+?)(?: port (\d+))?$")
_TIMEOUT = re.compile(r"Timeout before authentication for (\S+) port (\d+)$")
_DROP = re.compile(r"drop connection #\d+ from \[([^\]\s]+)\]:(\d+) on \[[^\]\s]*\]:\d+ ")


def _addrish(s: str) -> bool:
    """An address as sshd writes it (not a reverse-DNS name, which a pam rhost may be)."""
    return ":" in s or s.replace(".", "").isdigit()


_CONN_PREFIXES = ("Disconnected from ", "Connection closed by ", "Connection reset by ")


def _conn_user(msg: str) -> tuple[str, str, str, str] | None:
    """``Disconnected from|Connection closed by|Connection reset by (invalid|authenticating) user
    USER IP port N`` -> (what, user, ip, port). Only sshd's text follows the user name, so the
    last `` port `` and the token before it are the address (what a greedy ``(.*) (\\S+) port
    (\\d+)$`` would pick, without its backtracking; a test holds them equal)."""
    for pre in _CONN_PREFIXES:
        if msg.startswith(pre):
            break
    else:
        return None
    p = len(pre)
    if msg.startswith("invalid user ", p):
        what, u = "invalid", p + 13
    elif msg.startswith("authenticating user ", p):
        what, u = "authenticating", p + 20
    else:
        return None
    q = msg.rfind(" port ")
    port = msg[q + 6:]
    if q < u or not port.isdigit() or not port.isascii():
        return None
    a = msg.rfind(" ", 0, q)
    if a < u or a + 1 >= q:
        return None
    return what, msg[u:a], msg[a + 1:q], port


class SshdRules:
    """sshd message -> Hit, with the per-connection counting ledger."""

    def __init__(self, cap: int = 16384, *, count_publickey: bool = False) -> None:
        # conn key -> [counted, failed_lines_seen, address text]
        self._conns: Ledger[list] = Ledger(cap)
        # the same for connections that ended, for the line PAM writes after the end (its
        # count of failures); a line of the pid's next connection starts afresh in _conns
        self._closed: Ledger[list] = Ledger(max(16, cap // 8))
        #: `Failed publickey` counts as a failed attempt (else it is a probe: a user's agent
        #: offering several keys writes it before `Accepted publickey`)
        self.count_publickey = count_publickey

    # -- counting -----------------------------------------------------------------------

    def _state(self, key: object, ip: str | None = None) -> list:
        st = self._conns.get(key)
        if st is None:
            st = [0, 0, ip]
            self._conns.put(key, st)
        elif ip is not None and st[2] != ip:
            if st[2] is None:
                st[2] = ip
            elif _addrish(ip) and _addrish(st[2]):
                # the pid was reused by a connection from another address: a new attempt
                st[0] = st[1] = 0
                st[2] = ip
        return st

    def conn_ip(self, conn: object | None) -> str | None:
        """The address last seen on a connection (for lines that do not name it)."""
        if conn is None:
            return None
        st = self._conns.get(conn)
        return st[2] if st is not None else None

    def _close(self, key: object | None) -> None:
        if key is not None:
            st = self._conns.pop(key)
            if st is not None:
                self._closed.put(key, st)

    def _credit_total(self, key: object | None, total: int, ip: str | None) -> int:
        """A line that gives the connection's whole count (PAM's, at its end): what it adds."""
        if key is None:
            return 0  # no pid: cannot be paired with the lines that counted them already
        closed = self._closed.get(key) if self._conns.get(key) is None else None
        if closed is not None and not (ip is not None and closed[2] != ip and _addrish(ip)
                                       and _addrish(closed[2] or "")):
            st = closed  # the connection that just ended (not a new one from another address)
        else:
            st = self._state(key, ip)
        if st[0] < total:
            n = total - st[0]
            st[0] = total
            return n
        return 0

    def _credit(self, key: object | None, idx_from_failed: int, *, failed: bool = False,
                at_least_one: bool = False, ip: str | None = None) -> int:
        """How many new attempts this line stands for (see module doc)."""
        if key is None:
            return 1 if (failed or not at_least_one) else 0
        st = self._state(key, ip)
        if failed:
            st[1] += 1
            idx = st[1]
        elif at_least_one:
            idx = max(st[1], 1)
        else:
            idx = st[1] + idx_from_failed
        if st[0] < idx:
            n = idx - st[0]
            st[0] = idx
            return n
        return 0

    @staticmethod
    def _key(conn: object | None, ip: str | None, port: str | None) -> object | None:
        if conn is not None:
            return conn
        if ip is not None and port is not None:
            return ("addr", ip, port)
        return None

    # -- rules --------------------------------------------------------------------------

    def parse(self, msg: str, conn: object | None) -> Hit | None:
        """One sshd message (prefix removed). ``conn`` identifies the sshd process."""
        if msg.endswith(" [preauth]"):
            msg = msg[:-10]
        if not msg:
            return None
        c = msg[0]
        if c == "[" and msg.startswith("[ID "):
            # illumos/Solaris syslog: `[ID 800047 auth.info] ` before the message
            e = msg.find("] ")
            if e < 0:
                return None
            msg = msg[e + 2:]
            if not msg:
                return None
            c = msg[0]
        if c == "F":
            if msg.startswith("Failed "):
                return self._failed_accepted(msg, conn)
            return None
        if c == "f":
            if msg.startswith("fatal: "):
                return self._probe_rules(msg[7:])
            return None
        if c == "I":
            if msg.startswith("Invalid user "):
                i = msg.rfind(" from ")
                m = _INVALID_TAIL.match(msg, i) if i >= 13 else None
                if m is None:
                    return None
                user = msg[13:i]
                ip, port = m.groups()
                n = self._credit(self._key(conn, ip, port), 1, ip=ip)
                return (SSH, K_INVALID, ip, user, n, None)
            if msg.startswith("Illegal user "):  # OpenSSH < 3.8
                m = _ILLEGAL.match(msg)
                if m is None:
                    return None
                user, ip = m.groups()
                n = self._credit(conn, 1, ip=ip)
                return (SSH, K_INVALID, ip, user, n, None)
            return None
        if c == "i":
            if msg.startswith("input_userauth_request: invalid user "):
                # OpenSSH 3.9-7.4 auth2.c, after `Invalid user USER from HOST` of the same pid
                ip = self.conn_ip(conn)
                if ip is None:
                    return None
                n = self._credit(conn, 1, ip=ip)
                return (SSH, K_INVALID, ip, msg[37:], n, None)
            return None
        if c == "m":
            if msg.startswith("message repeated "):
                return self._repeated(msg, conn)
            return None
        if c == "P" and msg.startswith("PAM "):
            return self._pam_more(msg, conn)
        if c == "p":
            if msg.startswith("pam_") and " more authentication failure" in msg:
                return self._pam_more(msg, conn)
            if msg.startswith("pam_") and " authentication failure; " in msg:
                m = _PAM.match(msg)
                if m is None:
                    return None
                rhost, user = m.groups()
                if not rhost:
                    return None
                # no pid: cannot pair it with its `Failed password` twin, let that one count
                n = self._credit(conn, 1, ip=rhost) if conn is not None else 0
                return (SSH, K_FAIL, rhost, user, n, None)
            return None
        if c == "A":
            if msg.startswith("Accepted "):
                return self._failed_accepted(msg, conn)
            return None
        if c in "DC":
            cu = _conn_user(msg)
            if cu is not None:
                what, user, ip, port = cu
                key = self._key(conn, ip, port)
                n = self._credit(key, 0, at_least_one=True, ip=ip)
                self._close(key)
                kind = K_INVALID if what == "invalid" else K_FAIL
                return (SSH, kind, ip, user, n, None)
            if msg.startswith("Disconnecting"):
                return self._disconnecting(msg, conn)
            m = _CONN_PLAIN.match(msg)
            if m is not None:
                ip, port = m.groups()
                self._close(self._key(conn, ip, port))
                return (SSH, K_PROBE, ip, None, 0, None)
            if msg.startswith("Did not receive"):
                return self._probe_rules(msg)
            return None
        if c == "e":
            if msg.startswith("error: "):
                body = msg[7:]
                if body.startswith("maximum authentication attempts exceeded for "):
                    m = _MAX_EXCEEDED.match(body)
                    if m is None:
                        return None
                    _inv, user, ip, port = m.groups()
                    n = self._credit(self._key(conn, ip, port), 0, at_least_one=True, ip=ip)
                    return (SSH, K_TOO_MANY, ip, user, n, None)
                if body.startswith("PAM: "):
                    m = _PAM_ERR.match(body)
                    if m is None:
                        return None
                    _text, unknown, illegal, user, ip = m.groups()
                    n = self._credit(conn, 1, ip=ip) if conn is not None else 0
                    return (SSH, K_INVALID if (illegal or unknown) else K_FAIL, ip, user, n, None)
                if body.startswith("Received disconnect from "):
                    return self._recv_disc(body, conn)
                return self._probe_rules(body)
            return None
        if c == "U":
            if msg.startswith("User "):
                m = _NOT_ALLOWED.match(msg)
                if m is None:
                    # OpenSSH < 4.0, and shell/locked in every version: no address, the
                    # connection's own (known from an earlier line of the same pid)
                    m = _NOT_ALLOWED_NOADDR.match(msg)
                    ip = self.conn_ip(conn) if m is not None else None
                    if ip is None:
                        return None
                    n = self._credit(conn, 1, ip=ip)
                    return (SSH, K_NOT_ALLOWED, ip, m.group(1), n, None)  # type: ignore[union-attr]  # the regex matched on the line above
                user, ip = m.groups()
                n = self._credit(conn, 1, ip=ip) if conn is not None else 1
                return (SSH, K_NOT_ALLOWED, ip, user, n, None)
            return self._probe_rules(msg)
        if c == "R":
            if msg.startswith("ROOT LOGIN REFUSED FROM "):
                m = _ROOT_REFUSED.match(msg)
                if m is None:
                    return None
                ip, port = m.groups()
                n = self._credit(self._key(conn, ip, port), 1, ip=ip)
                return (SSH, K_NOT_ALLOWED, ip, "root", n, None)
            if msg.startswith("Received disconnect from "):
                return self._recv_disc(msg, conn)
            return None
        if c == "r":
            if msg.startswith("refused connect from "):
                m = _REFUSED.match(msg)
                if m is None:
                    return None
                return (SSH, K_NOT_ALLOWED, m.group(1), None, 1, None)
            return None
        return self._probe_rules(msg)

    def _pam_more(self, msg: str, conn: object | None) -> Hit | None:
        """pam_unix logs the first failure of a PAM handle, and only counts the rest until sshd
        ends it: ``PAM N more authentication failures; ... rhost=HOST user=USER``. sshd wrote
        its own line for each of them, so this adds only the ones no line counted (lost to
        journald's rate limit, say)."""
        m = _PAM_MORE.match(msg)
        if m is None:
            return None  # `PAM service(sshd) ignoring max retries; 6 > 3`: no address, nothing new
        more, rhost, user = m.groups()
        if not rhost:
            return None
        n = self._credit_total(conn, int(more) + 1, rhost)
        return (SSH, K_FAIL, rhost, user or None, n, None)

    def _repeated(self, msg: str, conn: object | None) -> Hit | None:
        """rsyslog's ``message repeated N times: [ MSG]`` (RepeatedMsgReduction, on by default
        in Debian/Ubuntu): MSG N more times from the same pid."""
        k = msg.find(" times: [", 17, 30)
        if k < 0 or not msg.endswith("]"):
            return None
        times = msg[17:k]
        if not (times.isdigit() and times.isascii()):
            return None
        inner = msg[k + 9:-1].removeprefix(" ")  # rsyslog: "[%.800s]" of the message
        if inner.startswith("message repeated "):
            return None
        total, hit = 0, None
        for _ in range(min(int(times), 1000)):
            hit = self.parse(inner, conn)
            if hit is None:
                return None
            total += hit[4]
        if hit is None:
            return None
        return (hit[0], hit[1], hit[2], hit[3], total, hit[5])

    def _recv_disc(self, msg: str, conn: object | None) -> Hit | None:
        """``Received disconnect from HOST[ port N]:CODE: REASON`` (REASON is the client's
        text): a failure when the client says `Auth fail` (JSch), a probe for code 14."""
        m = _RECV_DISC.match(msg)
        if m is None:
            return None
        ip, port, code = m.groups()
        if "Auth fail" in msg[m.end():]:
            n = self._credit(self._key(conn, ip, port), 0, at_least_one=True, ip=ip)
            return (SSH, K_FAIL, ip, None, n, None)
        if code == "14":
            return (SSH, K_PROBE, ip, None, 0, None)
        return None

    def _disconnecting(self, msg: str, conn: object | None) -> Hit | None:
        """``Disconnecting[ who]: Too many authentication failures[ for USER]``."""
        if "Too many authentication failures" not in msg:
            return None
        user: str | None
        port: str | None
        ip: str | None
        m = _DISCONNECTING.match(msg)
        if m is not None:
            _what, user, ip, port = m.groups()
        elif msg.startswith("Disconnecting: Too many authentication failures"):
            # OpenSSH < 7.6: no address; the connection's own (by pid)
            ip = self.conn_ip(conn)
            if ip is None:
                return None
            port = None
            user = msg[52:] if msg.startswith(" for ", 47) else None
        else:
            m = _DISCONNECTING_ADDR.match(msg)
            if m is None:
                return None
            ip, port = m.groups()
            user = None
        key = self._key(conn, ip, port)
        n = self._credit(key, 0, at_least_one=True, ip=ip)
        return (SSH, K_TOO_MANY, ip, user, n, None)

    def _failed_accepted(self, msg: str, conn: object | None) -> Hit | None:
        failed = msg[0] == "F"
        i = msg.rfind(" from ")
        j = msg.find(" for ")
        m = _FAILED_TAIL.match(msg, i) if j > 0 and j + 5 <= i else None
        method = msg[7:j] if failed else msg[9:j]
        if m is not None and method and " " not in method:
            ip, port = m.groups()
            return self._outcome(failed, method, msg[j + 5:i], ip, port, conn)
        return self._failed_accepted_slow(msg, conn)

    def _outcome(self, failed: bool, method: str, user: str, ip: str, port: str, conn: object | None) -> Hit:
        invalid = user.startswith(("invalid user ", "illegal user "))  # `illegal`: OpenSSH < 3.9
        if invalid:
            user = user[13:]
        key = self._key(conn, ip, port)
        if not failed:
            self._close(key)
            return (SSH, K_SUCCESS, ip, user, 0, None)
        if method == "publickey" and not self.count_publickey:
            # a key offered and refused: what an agent with several keys does before it succeeds
            if key is not None:
                self._state(key, ip)
            return (SSH, K_PROBE, ip, user, 0, None)
        if method == "none":
            # the `none` method is every client's first request; sshd does not count it either
            n = self._credit(key, 0, at_least_one=True, ip=ip)
        else:
            n = self._credit(key, 0, failed=True, ip=ip)
        return (SSH, K_INVALID if invalid else K_FAIL, ip, user, n, None)

    def _failed_accepted_slow(self, msg: str, conn: object | None) -> Hit | None:
        m0 = _METHOD.match(msg)
        if m0 is None:
            return None
        rest = msg[m0.end():]
        cands = list(_FROM_PORT.finditer(rest))
        if not cands:
            return None
        last = cands[-1]
        if len(cands) > 1:
            tail = rest[last.end():]
            if tail and _STRICT_TAIL.match(tail) is None:
                # attacker text on both sides of the address (certificate key ID): ambiguous
                return None
        return self._outcome(m0.group(1) == "Failed", m0.group(2), rest[:last.start()],
                             last.group(1), last.group(2), conn)

    @staticmethod
    def _probe_rules(msg: str) -> Hit | None:
        """Scanner lines: no credentials tried; never counted as failures."""
        m = None
        c = msg[:1]
        if c == "U":
            m = _NEGOTIATE.match(msg)
        elif c == "b":
            m = _BANNER.match(msg)
        elif c == "k":
            if msg.startswith("kex_exchange_identification: "):
                return (SSH, K_PROBE, None, None, 0, None)
        elif c == "D":
            m = _NO_IDENT.match(msg)
        elif c == "B":
            m = _BAD_PROTO.match(msg)
        elif c == "T":
            m = _TIMEOUT.match(msg)
        elif c == "d":
            m = _DROP.match(msg)
        if m is None:
            return None
        return (SSH, K_PROBE, m.group(1), None, 0, None)
