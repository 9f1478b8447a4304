"""Counting: one attempt is counted once, however many lines the daemons write about it."""

from __future__ import annotations

from popwatch.model import RawLine
from popwatch.parse import Parser
from popwatch.parse.ledger import Ledger

IP = "203.0.113.7"
T = "2026-11-28T05:00:21Z mx "


def run(lines: list[str], p: Parser | None = None) -> list[tuple[str, int]]:
    p = p or Parser(now=lambda: 1795900000.0)
    out = []
    for i, text in enumerate(lines, 1):
        ev = p.parse(RawLine(text, "t", i))
        if ev is not None:
            out.append((ev.kind, ev.attempts))
    return out


def pam(pid: int, user: str = "root") -> str:
    return (f"{T}sshd[{pid}]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh "
            f"ruser= rhost={IP}  user={user}")


def failed(pid: int, user: str = "root", port: int = 5) -> str:
    return f"{T}sshd[{pid}]: Failed password for {user} from {IP} port {port} ssh2"


def test_pam_line_and_failed_password_are_one_attempt() -> None:
    assert run([pam(1), failed(1), pam(1), failed(1)]) == [
        ("auth_failed", 1), ("auth_failed", 0), ("auth_failed", 1), ("auth_failed", 0)]


def test_failed_without_pam_counts_each() -> None:
    assert run([failed(1), failed(1), failed(1)]) == [("auth_failed", 1)] * 3


def test_interleaved_connections_are_kept_apart() -> None:
    got = run([pam(1), pam(2), failed(2), failed(1), pam(2), failed(2)])
    assert sum(n for _k, n in got) == 3


def test_invalid_user_counts_the_first_attempt() -> None:
    inv = f"{T}sshd[3]: Invalid user bob from {IP} port 9"
    unknown = f"{T}sshd[3]: pam_unix(sshd:auth): check pass; user unknown"
    pam_nouser = (f"{T}sshd[3]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh "
                  f"ruser= rhost={IP} ")
    f = f"{T}sshd[3]: Failed password for invalid user bob from {IP} port 9 ssh2"
    closed = f"{T}sshd[3]: Disconnected from invalid user bob {IP} port 9 [preauth]"
    got = run([inv, unknown, pam_nouser, f, unknown, pam_nouser, f, unknown, pam_nouser, f, closed])
    assert sum(n for _k, n in got) == 3
    assert got[0] == ("invalid_user", 1)


def test_username_probe_without_password_counts_once() -> None:
    inv = f"{T}sshd[4]: Invalid user bob from {IP} port 9"
    closed = f"{T}sshd[4]: Connection closed by invalid user bob {IP} port 9 [preauth]"
    assert run([inv, closed]) == [("invalid_user", 1), ("invalid_user", 0)]
    # seen only at disconnect (say, reading started mid-connection): still one
    assert run([closed]) == [("invalid_user", 1)]


def test_max_tries_summary_does_not_add() -> None:
    lines = [failed(5)] * 6 + [
        f"{T}sshd[5]: error: maximum authentication attempts exceeded for root from {IP} port 5 ssh2 [preauth]",
        f"{T}sshd[5]: Disconnecting authenticating user root {IP} port 5: Too many authentication failures [preauth]",
        f"{T}sshd[5]: PAM 5 more authentication failures; logname= uid=0 euid=0 tty=ssh ruser= rhost={IP}  user=root",
    ]
    got = run(lines)
    assert sum(n for _k, n in got) == 6
    # PAM's count of the failures (1 logged + 5 more) is what the Failed lines counted already
    assert got[-3:] == [("too_many", 0), ("too_many", 0), ("auth_failed", 0)]


def more(pid: int, n: int, ip: str = IP) -> str:
    s = "s" if n > 1 else ""
    return (f"{T}sshd[{pid}]: PAM {n} more authentication failure{s}; logname= uid=0 euid=0 tty=ssh "
            f"ruser= rhost={ip}  user=root")


def test_pam_more_after_the_connection_closed_adds_nothing_it_counted() -> None:
    # sshd ends the PAM handle after the preauth child said goodbye: the count comes last
    closed = f"{T}sshd[7]: Connection closed by authenticating user root {IP} port 5 [preauth]"
    got = run([pam(7), failed(7), failed(7), failed(7), closed, more(7, 2),
               f"{T}sshd[7]: PAM service(sshd) ignoring max retries; 3 > 3"])
    assert sum(n for _k, n in got) == 3
    assert got[-1] == ("auth_failed", 0)  # `ignoring max retries` names no address: not an event
    # the pid then serves a new connection: its lines count again
    assert run([pam(8), failed(8), closed.replace("[7]", "[8]"), more(8, 1), failed(8)])[-1] == ("auth_failed", 1)


def test_pam_more_brings_back_failures_whose_lines_were_lost() -> None:
    # journald's rate limit dropped two of the four `Failed password` lines of the connection
    got = run([pam(9), failed(9), failed(9), more(9, 3)])
    assert got[-1] == ("auth_failed", 2)
    assert sum(n for _k, n in got) == 4
    # old Linux-PAM wrote it under its own ident
    old = (f"{T}sshd(pam_unix)[10]: 2 more authentication failures; logname= uid=0 euid=0 tty=ssh "
           f"ruser= rhost={IP}  user=root")
    assert run([pam(10), failed(10), old]) == [("auth_failed", 1), ("auth_failed", 0), ("auth_failed", 2)]


def test_pam_more_without_pid_or_address_counts_nothing_new() -> None:
    bare = f"{T}sshd: PAM 4 more authentication failures; logname= uid=0 euid=0 tty=ssh ruser= rhost={IP}  user=root"
    assert run([bare]) == [("auth_failed", 0)]
    assert run([more(11, 2, ip="")]) == []


def test_key_spray_with_unlogged_failures_counts_once() -> None:
    # publickey failures of a valid user are not logged at INFO; the disconnect still counts one
    got = run([f"{T}sshd[6]: Disconnecting authenticating user root {IP} port 5: Too many authentication "
               "failures [preauth]"])
    assert got == [("too_many", 1)]


def test_pid_reuse_after_disconnect_starts_fresh() -> None:
    end = f"{T}sshd[7]: Connection closed by authenticating user root {IP} port 5 [preauth]"
    got = run([pam(7), failed(7), end, pam(7), failed(7)])
    assert [n for _k, n in got] == [1, 0, 0, 1, 0]


def test_pidless_pam_line_never_counts() -> None:
    p = Parser(now=lambda: 1.0)
    fields = {"SYSLOG_IDENTIFIER": "sshd", "__REALTIME_TIMESTAMP": "1000000"}
    ev = p.parse(RawLine("pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= "
                         f"rhost={IP}  user=root", "journal", None, fields))
    assert ev is not None and ev.attempts == 0 and ev.is_failure


def test_sshd_E_lines_pair_by_address_and_port() -> None:
    lines = [f"Invalid user bob from {IP} port 9", f"Failed password for invalid user bob from {IP} port 9 ssh2",
             f"Failed password for invalid user bob from {IP} port 9 ssh2",
             f"Failed password for invalid user bob from {IP} port 10 ssh2"]
    assert [n for _k, n in run(lines)] == [1, 0, 1, 1]


# -- dovecot -------------------------------------------------------------------------------------

def verbose(sess: str, msg: str = "unknown user", user: str = "root") -> str:
    return f"{T}dovecot: auth: passwd-file({user},{IP},<{sess}>): {msg}"


def summary(sess: str, n: int) -> str:
    return (f"{T}dovecot: pop3-login: Disconnected: Connection closed (auth failed, {n} attempts in 30 secs): "
            f"user=<root>, method=PLAIN, rip={IP}, lip=192.0.2.1, session=<{sess}>")


def test_summary_adds_only_uncounted_attempts() -> None:
    got = run([verbose("s1"), verbose("s1", "Password mismatch"), verbose("s1"), summary("s1", 5)])
    assert [n for _k, n in got] == [1, 1, 1, 2]


def test_summary_never_negative_and_session_forgotten_after() -> None:
    p = Parser(now=lambda: 1.0)
    got = run([verbose("s2"), verbose("s2"), verbose("s2"), summary("s2", 2)], p)
    assert [n for _k, n in got] == [1, 1, 1, 0]
    # the same session id again (new connection after a restart): counted in full
    assert run([summary("s2", 4)], p) == [("auth_failed", 4)]


def test_summary_alone_counts_n() -> None:
    assert run([summary("s3", 11)]) == [("auth_failed", 11)]


def test_other_sessions_do_not_interfere() -> None:
    got = run([verbose("a"), verbose("b"), summary("a", 3), summary("b", 1)])
    assert [n for _k, n in got] == [1, 1, 2, 0]


def test_24_auth_and_worker_lines_of_one_attempt_count_once() -> None:
    worker = f"{T}dovecot[9]: auth-worker(root,{IP})<55><s4>: request [1]: sql: Password mismatch"
    auth = f"{T}dovecot[9]: auth(root,{IP},sasl:plain)<s4>: sql: Password mismatch"
    login = (f"{T}dovecot[9]: imap-login: Login aborted: Connection closed (auth failed, 3 attempts in 16 secs) "
             f"(auth_failed): user=<root>, method=PLAIN, rip={IP}, lip=192.0.2.1, session=<s4>")
    # attempt 1 logged by both, attempts 2-3 only by auth (cache hits)
    got = run([worker, auth, auth, auth, login])
    assert [n for _k, n in got] == [1, 0, 1, 1, 0]


def test_ledgers_are_bounded() -> None:
    p = Parser(now=lambda: 1.0)
    p.dovecot._sessions.cap = 100  # noqa: SLF001
    p.sshd._conns.cap = 100  # noqa: SLF001
    for i in range(1000):
        p.parse(RawLine(verbose(f"x{i}"), "t"))
        p.parse(RawLine(pam(10_000 + i), "t"))
    assert len(p.dovecot._sessions) == 100  # noqa: SLF001
    assert len(p.sshd._conns) == 100  # noqa: SLF001


def test_ledger_lru() -> None:
    led: Ledger[int] = Ledger(2)
    led.put("a", 1)
    led.put("b", 2)
    assert led.get("a") == 1      # a is now the newest
    led.put("c", 3)               # evicts b
    assert led.get("b") is None and led.get("a") == 1 and led.get("c") == 3
    assert led.pop("a") == 1 and len(led) == 1


def test_fast_event_builder_equals_the_dataclass() -> None:
    from popwatch.model import AuthEvent
    from popwatch.parse import _make_event

    args = (1.5, "ssh", "auth_failed", IP, "root", 1, "src", 3, "line", None, "s")
    ev = _make_event(*args)
    assert ev == AuthEvent(*args) and hash(ev) == hash(AuthEvent(*args))
    assert ev.to_json() == AuthEvent(*args).to_json()
    import dataclasses
    import pytest
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.ip = "198.51.100.9"  # type: ignore[misc]
