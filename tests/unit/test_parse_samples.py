"""Every event class of samples/CATALOG.md, on the real lines shipped in popwatch/data/samples."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from popwatch.model import Kind, RawLine
from popwatch.parse import Parser

SAMPLES = Path(__file__).resolve().parents[2] / "popwatch" / "data" / "samples"
NOW = 1795900000.0  # 2026-11-28T18:26:40Z, after every sample line


def parse_file(rel: str, now: float = NOW) -> list:
    """(lineno, text, event or None) for every line of one sample file."""
    p = Parser(now=lambda: now)
    path = SAMPLES / rel
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, 1):
            text = line.rstrip("\n")
            out.append((i, text, p.parse(RawLine(text, str(path), i))))
    return out


def find(rel: str, needle: str) -> tuple:
    """The first (lineno, text, event) whose text contains needle."""
    for row in parse_file(rel):
        if needle in row[1]:
            return row
    raise AssertionError(f"{needle!r} not in {rel}")


AUTH_FILES = ["debian12-rsyslog/auth.log", "bsd-traditional/auth.log"]
MAIL_FILES = ["debian12-rsyslog/mail.log", "bsd-traditional/mail.log"]

# (catalog class, needle in the line, file list, expected kind or None, ip, user, attempts)
SSH_CASES = [
    ("ssh_failed_password", "Failed password for root from 203.0.113.12 port 42984",
     AUTH_FILES, Kind.AUTH_FAILED, "203.0.113.12", "root", 0),  # its pam twin counted it
    ("ssh_failed_invalid", "Failed password for invalid user oracle from 2001:db8::20",
     AUTH_FILES, Kind.INVALID_USER, "2001:db8::20", "oracle", None),
    ("ssh_invalid_user", "Invalid user test from 203.0.113.12 port 43000",
     AUTH_FILES, Kind.INVALID_USER, "203.0.113.12", "test", 1),
    ("ssh_pam_auth_failure", "rhost=203.0.113.12  user=root",
     AUTH_FILES, Kind.AUTH_FAILED, "203.0.113.12", "root", 1),
    ("ssh_max_auth_exceeded", "maximum authentication attempts exceeded for root from 198.51.100.20",
     AUTH_FILES, Kind.TOO_MANY, "198.51.100.20", "root", 0),
    ("ssh_too_many_failures", "Disconnecting authenticating user root 198.51.100.20 port 60566",
     AUTH_FILES, Kind.TOO_MANY, "198.51.100.20", "root", 0),
    ("ssh_disconnected_invalid_user", "Disconnected from invalid user test 203.0.113.12 port 43000",
     AUTH_FILES, Kind.INVALID_USER, "203.0.113.12", "test", 0),
    ("ssh_disconnected_auth_user", "Disconnected from authenticating user root 203.0.113.12 port 42980",
     AUTH_FILES, Kind.AUTH_FAILED, "203.0.113.12", "root", 1),  # hydra's probe: nothing else counted
    ("ssh_conn_closed_invalid_user", "Connection closed by invalid user test 203.0.113.12 port 44210",
     AUTH_FILES, Kind.INVALID_USER, "203.0.113.12", "test", None),
    ("ssh_conn_reset", "Connection reset by 198.51.100.20 port 43600",
     AUTH_FILES, Kind.PROBE, "198.51.100.20", None, 0),
    ("ssh_conn_closed", "Connection closed by 198.51.100.20 port 43582",
     AUTH_FILES, Kind.PROBE, "198.51.100.20", None, 0),
    ("ssh_unable_to_negotiate", "Unable to negotiate with 198.51.100.20 port 43576",
     AUTH_FILES, Kind.PROBE, "198.51.100.20", None, 0),
    ("ssh_banner_invalid", "banner exchange: Connection from 198.51.100.20 port 43586",
     AUTH_FILES, Kind.PROBE, "198.51.100.20", None, 0),
    ("ssh_kex_ident", "kex_exchange_identification: client sent invalid protocol identifier",
     AUTH_FILES, Kind.PROBE, None, None, 0),
    ("ssh_accepted", "Accepted publickey for root from 198.51.100.20 port 43602",
     AUTH_FILES, Kind.SUCCESS, "198.51.100.20", "root", 0),
    # pam_unix's count at the end of the connection: its Failed lines counted these already
    ("ssh_pam_more_failures", "PAM 1 more authentication failure",
     AUTH_FILES, Kind.AUTH_FAILED, "203.0.113.12", None, 0),
]

# classes that carry nothing countable: the parser must return None for them
SSH_SILENT = [
    ("ssh_pam_user_unknown", "check pass; user unknown"),
    ("ssh_received_disconnect", "Received disconnect from 203.0.113.12 port 42980:11: Bye Bye"),
    ("ssh_received_disconnect_post", "disconnected by user"),
    ("ssh_disconnected_user", "Disconnected from user root 198.51.100.20 port 43602"),
    ("ssh_session", "session opened for user root"),
    ("ssh_pam_ignoring_max_retries", "PAM service(sshd) ignoring max retries"),
    ("ssh_session_noise", "pam_limits(sshd:session)"),
]


@pytest.mark.parametrize("rel", AUTH_FILES)
@pytest.mark.parametrize("case", SSH_CASES, ids=[c[0] for c in SSH_CASES])
def test_ssh_classes(case: tuple, rel: str) -> None:
    _name, needle, files, kind, ip, user, attempts = case
    _i, text, ev = find(rel, needle)
    assert ev is not None, text
    assert ev.kind == kind
    assert ev.service == "ssh"
    assert ev.ip == ip
    assert ev.user == user
    if attempts is not None:
        assert ev.attempts == attempts
    assert ev.line == text


@pytest.mark.parametrize("rel", AUTH_FILES)
@pytest.mark.parametrize("case", SSH_SILENT, ids=[c[0] for c in SSH_SILENT])
def test_ssh_silent_classes(case: tuple, rel: str) -> None:
    _i, text, ev = find(rel, case[1])
    assert ev is None, text


def _totals(rows: list) -> Counter:
    c: Counter = Counter()
    for _i, _t, ev in rows:
        if ev is not None and ev.is_failure:
            c[(ev.ip, ev.service)] += ev.attempts
    return c


@pytest.mark.parametrize("rel", AUTH_FILES)
def test_ssh_each_password_attempt_counted_once(rel: str) -> None:
    rows = parse_file(rel)
    failed_lines = Counter()
    for _i, text, _ev in rows:
        if "Failed password for" in text:
            ip = text.split(" from ")[-1].split(" port ")[0]
            failed_lines[ip] += 1
    totals = _totals(rows)
    # pam twin, Invalid user and Failed password of one attempt count once; the only extra is
    # hydra's first connection to 203.0.113.12, which disconnected while authenticating.
    assert totals[("203.0.113.12", "ssh")] == failed_lines["203.0.113.12"] + 1
    assert totals[("2001:db8::20", "ssh")] == failed_lines["2001:db8::20"] == 2
    assert totals[("198.51.100.20", "ssh")] == failed_lines["198.51.100.20"] == 6


def test_ssh_bsd_and_rfc3339_files_agree() -> None:
    a = [(e.kind, e.ip, e.user, e.attempts) if e else None for _i, _t, e in parse_file(AUTH_FILES[0])]
    b = [(e.kind, e.ip, e.user, e.attempts) if e else None for _i, _t, e in parse_file(AUTH_FILES[1])]
    assert a == b
    assert sum(1 for x in a if x) > 400


def test_sshd_E_bare_lines() -> None:
    rows = parse_file("sshd-E/sshd-E.log", now=NOW)
    evs = [(e.kind, e.ip, e.user, e.attempts) for _i, _t, e in rows if e is not None]
    assert evs == [
        ("auth_failed", "203.0.113.11", "root", 1),
        ("auth_failed", "203.0.113.11", "root", 1),
        ("auth_failed", "203.0.113.11", "root", 0),     # Connection closed by authenticating user
        ("invalid_user", "203.0.113.11", "admin", 1),   # Invalid user (counts attempt 1)
        ("invalid_user", "203.0.113.11", "admin", 0),   # its Failed password
        ("invalid_user", "203.0.113.11", "admin", 1),   # second attempt
        ("invalid_user", "203.0.113.11", "admin", 0),   # Connection closed by invalid user
        ("probe", None, None, 0),                       # kex_exchange_identification
        ("probe", "203.0.113.11", None, 0),             # banner exchange
    ]
    # no timestamp in the file: now() is used
    assert all(e.ts == NOW for _i, _t, e in rows if e is not None)


# -- dovecot ---------------------------------------------------------------------------------

DC_CASES = [
    ("dc_auth_failed", "session=<dLzBgU9h8JwgAQ24AAAAAAAAAAAAAAAg>", MAIL_FILES,
     Kind.AUTH_FAILED, "pop3", "2001:db8::20", "root", 3),
    ("dc_auth_failed_imap", "session=<4WTJgU9h1tDLAHEL>", MAIL_FILES,
     Kind.AUTH_FAILED, "imap", "203.0.113.11", "test", 3),
    ("dc_auth_failed_9", "session=</wTHgU9hDr3LAHEK>", MAIL_FILES,
     Kind.AUTH_FAILED, "pop3", "203.0.113.10", "admin", 9),
    ("dc_auth_failed_tls", "session=<2sJTik9h0JDGM2QU>", MAIL_FILES,
     Kind.AUTH_FAILED, "pop3", "198.51.100.20", "root", 2),
    ("dc_no_auth_attempts", "session=<C9jBgU9h+rzLAHEK>", MAIL_FILES,
     Kind.PROBE, "pop3", "203.0.113.10", None, 0),
    ("dc_no_auth_reset", "session=<lwDzi09hIqvGM2QU>", MAIL_FILES,
     Kind.PROBE, "imap", "198.51.100.20", None, 0),
    ("dc_login_ok", "session=<qdXlgk9hJqfLAHEL>", MAIL_FILES,
     Kind.SUCCESS, "imap", "203.0.113.11", "test", 0),
    ("dc_logpath_default", "session=<MyJajU9hAsfLAHEL>", ["dovecot-log_path/dovecot.default-timestamp.log"],
     Kind.AUTH_FAILED, "pop3", "203.0.113.11", "root", 2),
    ("dc_logpath_iso", "session=<NZLFkE9hrMjLAHEL>", ["dovecot-log_path/dovecot.iso-timestamp.log"],
     Kind.AUTH_FAILED, "imap", "203.0.113.11", "root", 1),
    ("dc_logpath_login", "session=<47Qcj09hHunLAHEL>", ["dovecot-log_path/dovecot.default-timestamp.log"],
     Kind.SUCCESS, "pop3", "203.0.113.11", "test", 0),
    ("dc_logpath_noauth", "session=<GPZjkU9h8q/LAHEL>", ["dovecot-log_path/dovecot.iso-timestamp.log"],
     Kind.PROBE, "pop3", "203.0.113.11", None, 0),
    ("dc_plaintext_no_method", "session=<LZ4flk9hRsLLAHEL>", ["dovecot-syslog-variants/mail.log.plaintext-disallowed"],
     Kind.AUTH_FAILED, "pop3", "203.0.113.11", "root", 2),
]

DC_SILENT = [
    ("dc_session_end", "MAIL", "imap(test)<31697><qdXlgk9hJqfLAHEL>: Disconnected"),
    ("dc_master", "dovecot-log_path/dovecot.default-timestamp.log", "master: Info: Dovecot v2.3.19.1"),
    ("dc_master_killed", "dovecot-syslog-variants/mail.log.plaintext-disallowed", "Killed with signal 15"),
]


@pytest.mark.parametrize("case", DC_CASES, ids=[c[0] for c in DC_CASES])
def test_dovecot_classes(case: tuple) -> None:
    _name, needle, files, kind, service, ip, user, attempts = case
    for rel in files:
        _i, text, ev = find(rel, needle)
        assert ev is not None, text
        assert (ev.kind, ev.service, ev.ip, ev.user, ev.attempts) == (kind, service, ip, user, attempts)
        assert ev.session == needle.split("<")[1].rstrip(">")


@pytest.mark.parametrize("case", DC_SILENT, ids=[c[0] for c in DC_SILENT])
def test_dovecot_silent_classes(case: tuple) -> None:
    _name, rel, needle = case
    for r in (MAIL_FILES if rel == "MAIL" else [rel]):
        _i, text, ev = find(r, needle)
        assert ev is None, text


def test_dovecot_mail_totals_count_attempts_not_lines() -> None:
    rows = parse_file("debian12-rsyslog-hydra-full/mail.log")
    totals = _totals(rows)
    lines = Counter(e.ip for _i, _t, e in rows if e is not None and e.is_failure)
    # the lab's full pop3 run from 203.0.113.10: 11 summary lines standing for 98 attempts
    assert lines["203.0.113.10"] == 11
    assert totals[("203.0.113.10", "pop3")] == 98


def test_dovecot_auth_verbose_counts_each_attempt_once() -> None:
    rows = parse_file("dovecot-syslog-variants/mail.log.auth_verbose")
    evs = [e for _i, _t, e in rows if e is not None]
    verbose = [e for e in evs if e.session == "+Fgzk09hFJjLAHEL"]
    # two real-time `unknown user` lines, then the summary `(auth failed, 2 attempts)`
    assert [(e.kind, e.service, e.attempts) for e in verbose] == [
        ("invalid_user", "mail", 1), ("invalid_user", "mail", 1), ("auth_failed", "pop3", 0)]
    assert all(e.ip == "203.0.113.11" and e.user == "root" for e in verbose)
    mismatch = [e for e in evs if e.session == "V5BWlE9h4sfLAHEL"]
    assert [(e.kind, e.attempts) for e in mismatch] == [("auth_failed", 1), ("auth_failed", 0)]
    assert sum(e.attempts for e in evs if e.is_failure) == 4  # 2 + 1 + 1 attempts in the file


def test_dovecot_plaintext_disallowed_file() -> None:
    rows = parse_file("dovecot-syslog-variants/mail.log.plaintext-disallowed")
    totals = _totals(rows)
    assert totals[("203.0.113.11", "pop3")] == 2 + 1 + 20  # 2, then TLS 1, then 20 single tries
    assert totals[("203.0.113.11", "imap")] == 1


def test_timestamps() -> None:
    _i, _t, ev = find("debian12-rsyslog/auth.log", "Failed password for root from 203.0.113.12 port 42984")
    assert ev.ts == pytest.approx(1795843970.417066)  # 2026-11-28T05:32:50.417066+00:00


def test_every_sample_file_parses_without_error() -> None:
    n = 0
    for path in sorted(SAMPLES.glob("*/*")):
        for _i, text, ev in parse_file(str(path.relative_to(SAMPLES))):
            if ev is not None:
                n += 1
                assert ev.line == text
                assert ev.ip is None or ev.ip in text or ev.ip.replace("::ffff:", "") in text
    assert n > 1000
