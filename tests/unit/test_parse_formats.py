"""Line prefixes, timestamps, journald fields, and the daemon variants beyond the lab samples."""

from __future__ import annotations

import calendar
import os
import time

import pytest

from popwatch.model import RawLine
from popwatch.parse import Parser
from popwatch.parse import prefix as pfx

IP = "203.0.113.7"
NOW = float(calendar.timegm((2026, 11, 28, 12, 0, 0)))


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Year-less and dovecot timestamps are local time: pin the zone."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def one(text: str, now: float = NOW, fields: dict | None = None, **kw):  # noqa: ANN003, ANN201
    return Parser(now=lambda: now, **kw).parse(RawLine(text, "t", 7, fields))


def utc_ts(*args: int) -> float:
    return float(calendar.timegm(args))


# -- prefixes ----------------------------------------------------------------------------------

def test_rfc3339_prefix() -> None:
    ev = one(f"2026-11-28T05:00:21.664766+01:00 mx sshd[42]: Failed password for root from {IP} port 5 ssh2")
    assert ev.ts == pytest.approx(utc_ts(2026, 11, 28, 4, 0, 21) + 0.664766)
    assert (ev.service, ev.kind, ev.ip, ev.user, ev.lineno, ev.source) == ("ssh", "auth_failed", IP, "root", 7, "t")


@pytest.mark.parametrize("stamp,expected", [
    ("2026-11-28T05:00:21Z", utc_ts(2026, 11, 28, 5, 0, 21)),
    ("2026-11-28T05:00:21.5+00:00", utc_ts(2026, 11, 28, 5, 0, 21) + 0.5),
    ("2026-11-28T05:00:21.123-05:00", utc_ts(2026, 11, 28, 10, 0, 21) + 0.123),
    ("2026-11-28T05:00:21", utc_ts(2026, 11, 28, 5, 0, 21)),  # no zone: local (UTC here)
])
def test_iso_variants(stamp: str, expected: float) -> None:
    ev = one(f"{stamp} mx sshd[1]: Invalid user bob from {IP} port 5")
    assert ev.ts == pytest.approx(expected)


@pytest.mark.parametrize("stamp,now,expected", [
    ("Nov 28 05:00:21", NOW, utc_ts(2026, 11, 28, 5, 0, 21)),
    ("Nov 28 12:30:00", NOW, utc_ts(2026, 11, 28, 12, 30, 0)),       # minutes ahead: clock skew, same year
    ("Dec 31 23:59:59", utc_ts(2027, 1, 1, 0, 0, 5), utc_ts(2026, 12, 31, 23, 59, 59)),
    ("Dec  1 10:00:00", NOW, utc_ts(2025, 12, 1, 10, 0, 0)),         # would be in the future: last year
    ("Feb 29 10:00:00", utc_ts(2027, 3, 1, 0, 0, 0), utc_ts(2024, 2, 29, 10, 0, 0)),
])
def test_bsd_year_is_the_most_recent_past(stamp: str, now: float, expected: float) -> None:
    ev = one(f"{stamp} mx sshd[1]: Invalid user bob from {IP} port 5", now=now)
    assert ev.ts == expected


def test_bsd_cache_does_not_keep_a_stale_year() -> None:
    t = [utc_ts(2026, 6, 1, 0, 0, 0)]
    p = Parser(now=lambda: t[0])
    line = f"Jan  2 03:04:05 mx sshd[1]: Invalid user bob from {IP} port 5"
    assert p.parse(RawLine(line, "t")).ts == utc_ts(2026, 1, 2, 3, 4, 5)
    t[0] = utc_ts(2027, 1, 3, 0, 0, 0)
    assert p.parse(RawLine(line, "t")).ts == utc_ts(2027, 1, 2, 3, 4, 5)


def test_dovecot_log_path_prefixes() -> None:
    a = one(f"Nov 28 05:18:22 pop3-login: Info: Disconnected: Aborted login by logging out (auth failed, "
            f"2 attempts in 8 secs): user=<root>, method=PLAIN, rip={IP}, lip=192.0.2.1, session=<s1>")
    b = one(f"2026-11-28 05:18:22 imap-login: Info: Disconnected: Connection closed (auth failed, 4 attempts "
            f"in 8 secs): user=<root>, rip={IP}, lip=192.0.2.1, session=<s2>")
    assert (a.service, a.attempts, a.ip, a.ts) == ("pop3", 2, IP, utc_ts(2026, 11, 28, 5, 18, 22))
    assert (b.service, b.attempts, b.ip, b.ts) == ("imap", 4, IP, utc_ts(2026, 11, 28, 5, 18, 22))


def test_rfc5424() -> None:
    ev = one(f"<38>1 2026-11-28T05:00:21.000001Z mx sshd 1234 - - Failed password for root from {IP} port 5 ssh2")
    assert (ev.ip, ev.user, ev.ts) == (IP, "root", pytest.approx(utc_ts(2026, 11, 28, 5, 0, 21) + 1e-6))
    ev = one('<38>1 2026-11-28T05:00:21Z mx sshd 1234 ID47 [ex@32473 iut="3" note="a \\] b"][x@1 y="z"] '
             f"\ufeffInvalid user eve from {IP} port 5")
    assert (ev.kind, ev.ip, ev.user) == ("invalid_user", IP, "eve")
    ev = one(f"<86>Nov 28 05:00:21 mx sshd[9]: Invalid user eve from {IP} port 5")  # RFC 3164 with PRI
    assert (ev.kind, ev.ip, ev.ts) == ("invalid_user", IP, utc_ts(2026, 11, 28, 5, 0, 21))


def test_hostless_and_busybox_syslog() -> None:
    ev = one(f"Nov 28 05:00:21 sshd[7]: Invalid user eve from {IP} port 5")
    assert (ev.kind, ev.ip) == ("invalid_user", IP)
    ev = one(f"May 29 15:21:53 gw auth.info sshd-session[25292]: banner exchange: Connection from {IP} "
             "port 47144: invalid format")
    assert (ev.kind, ev.ip) == ("probe", IP)


def test_ipv6_hostname_field_uses_slow_path() -> None:
    ev = one(f"2026-11-28T05:00:21Z 2001:db8::1 sshd[1]: Invalid user eve from {IP} port 5")
    assert (ev.kind, ev.ip) == ("invalid_user", IP)


def test_journald_fields() -> None:
    f = {"SYSLOG_IDENTIFIER": "sshd-session", "_PID": "77", "__REALTIME_TIMESTAMP": "1795842021664766",
         "_HOSTNAME": "mx"}
    ev = one(f"Failed password for invalid user eve from {IP} port 5 ssh2", fields=f)
    assert (ev.kind, ev.ip, ev.user, ev.ts) == ("invalid_user", IP, "eve", 1795842021.664766)
    f = {"SYSLOG_IDENTIFIER": "dovecot", "_PID": "9", "__REALTIME_TIMESTAMP": "1795842021000000"}
    ev = one(f"imap-login: Login aborted: Connection closed (auth failed, 3 attempts in 16 secs) (auth_failed): "
             f"user=<eve>, method=PLAIN, rip={IP}, lip=192.0.2.1, TLS, session=<abc>", fields=f)
    assert (ev.service, ev.attempts, ev.ip, ev.user) == ("imap", 3, IP, "eve")
    f = {"SYSLOG_IDENTIFIER": "CRON", "_PID": "1", "__REALTIME_TIMESTAMP": "1795842021000000"}
    assert one(f"Failed password for root from {IP} port 5 ssh2", fields=f) is None


def test_unrelated_tags_and_bare_option() -> None:
    assert one(f"2026-11-28T05:00:21Z mx CRON[1]: Failed password for root from {IP} port 5 ssh2") is None
    assert one(f"2026-11-28T05:00:21Z mx kernel: Failed password for root from {IP} port 5 ssh2") is None
    bare = f"Failed password for root from {IP} port 5 ssh2"
    assert one(bare).ip == IP
    assert one(bare, bare_tag=None) is None
    assert one("") is None
    assert one("garbage") is None


def test_split_is_pure_slicing() -> None:
    assert pfx.split("2026-11-28T05:00:21Z mx postfix/smtpd[5]: hello")[2:] == ("mx", "postfix/smtpd", "5", "hello")
    assert pfx.split("Nov 28 05:00:21 pop3-login: Info: x")[2:] == (None, "dovecot", None, "pop3-login: Info: x")
    assert pfx.split("just text")[3] is None


# -- OpenSSH variants --------------------------------------------------------------------------

S = "2026-11-28T05:00:21Z mx sshd[100]: "


@pytest.mark.parametrize("msg,kind,ip,user", [
    (f"Invalid user admin from {IP}", "invalid_user", IP, "admin"),                   # 7.x, no port
    (f"Failed none for invalid user admin from {IP} port 5 ssh2", "invalid_user", IP, "admin"),
    (f"Failed publickey for root from {IP} port 5 ssh2: RSA SHA256:abcDEF+/0", "probe", IP, "root"),  # a probe (policy.count_publickey)
    (f"Failed keyboard-interactive/pam for root from {IP} port 5 ssh2", "auth_failed", IP, "root"),
    (f"Accepted keyboard-interactive/pam for ann from {IP} port 5 ssh2", "success", IP, "ann"),
    (f"Accepted publickey for ann from {IP} port 5 ssh2: ED25519-CERT SHA256:abc ID ann (serial 3) CA "
     "ED25519 SHA256:def", "success", IP, "ann"),
    (f"User root from {IP} not allowed because listed in DenyUsers", "not_allowed", IP, "root"),
    (f"User bob from {IP} not allowed because none of user's groups are listed in AllowGroups",
     "not_allowed", IP, "bob"),
    (f"ROOT LOGIN REFUSED FROM {IP} port 5", "not_allowed", IP, "root"),
    (f"error: PAM: Authentication failure for illegal user zed from {IP}", "invalid_user", IP, "zed"),
    (f"Connection reset by authenticating user root {IP} port 5 [preauth]", "auth_failed", IP, "root"),
    (f"Disconnecting invalid user zed {IP} port 5: Too many authentication failures [preauth]",
     "too_many", IP, "zed"),
    (f"Did not receive identification string from {IP} port 5", "probe", IP, None),
    (f"Did not receive identification string from {IP}", "probe", IP, None),
    (f"Bad protocol version identification 'GET / HTTP/1.1' from {IP} port 5", "probe", IP, None),
    (f"fatal: Timeout before authentication for {IP} port 5", "probe", IP, None),
    (f"Timeout before authentication for {IP} port 5", "probe", IP, None),
    (f"drop connection #0 from [{IP}]:5555 on [192.0.2.1]:22 penalty: failed authentication", "probe", IP, None),
    ("drop connection #3 from [2001:db8::9]:5555 on [2001:db8::1]:22 past MaxStartups", "probe", "2001:db8::9", None),
    (f"fatal: Unable to negotiate with {IP} port 5: no matching cipher found [preauth]", "probe", IP, None),
])
def test_openssh_variants(msg: str, kind: str, ip: str, user: str | None) -> None:
    for tag in ("sshd[100]", "sshd-session[100]", "sshd-auth[100]"):
        ev = one(S.replace("sshd[100]", tag) + msg)
        assert ev is not None, msg
        assert (ev.kind, ev.ip, ev.user, ev.service) == (kind, ip, user, "ssh")


@pytest.mark.parametrize("msg", [
    f"Received disconnect from {IP} port 5:11: Bye Bye [preauth]",
    f"Connection from {IP} port 5 on 192.0.2.1 port 22 rdomain \"\"",
    f"Postponed keyboard-interactive for root from {IP} port 5 ssh2 [preauth]",
    "Server listening on 0.0.0.0 port 22.",
    f"Disconnecting invalid user zed {IP} port 5: Change of username or service not allowed: (a,b) -> (c,d)",
    "pam_unix(sshd:auth): check pass; user unknown",
])
def test_openssh_lines_without_events(msg: str) -> None:
    assert one(S + msg) is None


# -- dovecot variants --------------------------------------------------------------------------

D = "2026-11-28T05:00:21Z mx dovecot: "


@pytest.mark.parametrize("msg,service,kind,user,attempts", [
    (f"submission-login: Disconnected: Connection closed (auth failed, 2 attempts in 4 secs): user=<a@b>, "
     f"method=LOGIN, rip={IP}, lip=192.0.2.1, TLS, session=<x1>", "submission", "auth_failed", "a@b", 2),
    (f"managesieve-login: Disconnected (auth failed, 1 attempts in 3 secs): user=<a>, method=PLAIN, "
     f"rip={IP}, lip=192.0.2.1", "sieve", "auth_failed", "a", 1),
    (f"imap-login: Aborted login (auth failed, 1 attempts): user=<a>, method=PLAIN, rip={IP}, lip=192.0.2.1, TLS",
     "imap", "auth_failed", "a", 1),
    (f"imap-login: Disconnected (tried to use disallowed plaintext auth): user=<>, rip={IP}, lip=192.0.2.1, "
     "session=<x2>", "imap", "aborted", None, 1),
    (f"pop3-login: Aborted login: user=<root>, method=PLAIN, rip=::ffff:{IP}, lip=::ffff:192.0.2.1",
     "pop3", "aborted", "root", 1),
    (f"imap-login: Info: Login aborted: Logged out (auth failed, 1 attempts in 3 secs) (auth_failed): "
     f"user=<d@e>, method=PLAIN, rip={IP}, lip=192.0.2.1, TLS, session=<x3>", "imap", "auth_failed", "d@e", 1),
    (f"imap-login: Disconnected: Inactivity during authentication (auth failed, 13 attempts in 180 secs): "
     f"user=<admin>, method=LOGIN, rip={IP}, lip=192.0.2.1, session=<x4>", "imap", "auth_failed", "admin", 13),
    (f"pop3-login: Disconnected (no auth attempts in 39 secs): user=<>, rip={IP}, lip=192.0.2.1, session=<x5>",
     "pop3", "probe", None, 0),
    (f"auth-worker(4242): pam(root,{IP},<x6>): pam_authenticate() failed: Authentication failure "
     "(password mismatch?)", "mail", "auth_failed", "root", 1),
    (f"auth-worker(4242): pam(nobody,{IP},<x7>): pam_authenticate() failed: User not known to the "
     "underlying authentication module", "mail", "invalid_user", "nobody", 1),
    (f"auth-worker(4242): sql(bob,{IP}): unknown user", "mail", "invalid_user", "bob", 1),  # 2.2, no session
    (f"auth: ldap(bob,{IP},<x8>): invalid credentials", "mail", "auth_failed", "bob", 1),
    (f"auth-worker(bob@example.com,{IP})<1489><x9>: request [393]: unix_user: pam_authenticate() failed: "
     "Authentication failure (Password mismatch?)", "mail", "auth_failed", "bob@example.com", 1),
    (f"auth(bob@example.com,{IP},sasl:login)<x10>: Info: sql: Password mismatch (given password: hunter2)",
     "mail", "auth_failed", "bob@example.com", 1),
    (f"auth-worker(eve@example.com,{IP})<230299>: request [1]: Info: sql: unknown user",
     "mail", "invalid_user", "eve@example.com", 1),
])
def test_dovecot_variants(msg: str, service: str, kind: str, user: str | None, attempts: int) -> None:
    ev = one(D + msg)
    assert ev is not None, msg
    assert (ev.service, ev.kind, ev.ip, ev.user, ev.attempts) == (service, kind, IP, user, attempts)


@pytest.mark.parametrize("msg", [
    f"auth: passwd-file(bob,{IP},<x>): Username character disallowed by auth_username_chars",
    "master: Dovecot v2.4.1 starting up for imap, pop3",
    "imap(bob)<12><x>: Disconnected: Logged out in=1 out=2",
    "lmtp(4242): Connect from local",
    "imap-login: Login: user=<bob>, method=PLAIN, lip=192.0.2.1",          # no rip: nothing to say
    "auth: passwd-file(bob): unknown user",                                 # no address
])
def test_dovecot_lines_without_events(msg: str) -> None:
    assert one(D + msg) is None


def test_dovecot_login_success() -> None:
    ev = one(D + f"imap-login: Login: user=<bob>, method=PLAIN, rip={IP}, lip=192.0.2.1, mpid=5, TLS, session=<q>")
    assert (ev.kind, ev.service, ev.user, ev.session, ev.attempts) == ("success", "imap", "bob", "q", 0)


# -- postfix and courier -----------------------------------------------------------------------

@pytest.mark.parametrize("tag,service", [
    ("postfix/smtpd[5]", "smtp"), ("postfix/submission/smtpd[5]", "submission"),
    ("postfix/smtps/smtpd[5]", "submission"), ("postfix-out/smtpd[5]", "smtp"),
])
def test_postfix_sasl(tag: str, service: str) -> None:
    ev = one(f"2026-11-28T05:00:21Z mx {tag}: warning: unknown[{IP}]: SASL LOGIN authentication failed: "
             "UGFzc3dvcmQ6")
    assert (ev.service, ev.kind, ev.ip, ev.user, ev.attempts) == (service, "auth_failed", IP, None, 1)


def test_postfix_forms() -> None:
    ev = one("2026-11-28T05:00:21Z mx postfix/smtpd[5]: warning: mail.example.net[2001:db8::5]:4455: SASL PLAIN "
             "authentication failed: (reason unavailable), sasl_username=info@example.com")
    assert (ev.ip, ev.user) == ("2001:db8::5", "info@example.com")
    ev = one(f"2026-11-28T05:00:21Z mx postfix/smtpd[5]: lost connection after AUTH from unknown[{IP}]")
    assert (ev.kind, ev.ip) == ("probe", IP)
    for tag in ("postfix/qmgr[5]", "postfix/smtp[5]", "postfix/cleanup[5]"):
        assert one(f"2026-11-28T05:00:21Z mx {tag}: warning: unknown[{IP}]: SASL LOGIN authentication "
                   "failed: x") is None
    assert one(f"2026-11-28T05:00:21Z mx postfix/smtpd[5]: connect from unknown[{IP}]") is None


@pytest.mark.parametrize("line,service,kind,user", [
    (f"Nov 28 05:00:21 mx imapd: LOGIN FAILED, user=bob, ip=[::ffff:{IP}]", "imap", "auth_failed", "bob"),
    (f"Nov 28 05:00:21 mx imapd-ssl: LOGIN FAILED, method=PLAIN, user=bob@x, ip=[::ffff:{IP}]",
     "imap", "auth_failed", "bob@x"),
    (f"Nov 28 05:00:21 mx pop3d: LOGIN FAILED, user=bob, ip=[{IP}], port=[4242]", "pop3", "auth_failed", "bob"),
    (f"Nov 28 05:00:21 mx pop3d-ssl: INFO: LOGIN FAILED, user=bob, ip=[::ffff:{IP}]", "pop3", "auth_failed", "bob"),
    (f"Nov 28 05:00:21 mx imapd: LOGIN, user=bob, ip=[::ffff:{IP}], port=[4242], protocol=IMAP",
     "imap", "success", "bob"),
])
def test_courier(line: str, service: str, kind: str, user: str) -> None:
    ev = one(line)
    assert (ev.service, ev.kind, ev.ip, ev.user) == (service, kind, IP, user)


def test_mapped_and_hex_mapped_addresses_become_ipv4() -> None:
    ev = one(f"{S}Invalid user eve from ::ffff:{IP} port 5")
    assert ev.ip == IP
    ev = one(f"{S}Invalid user eve from ::ffff:cb00:7107 port 5")
    assert ev.ip == IP
    ev = one(f"{S}Invalid user eve from fe80::1%eth0 port 5")
    assert ev.ip == "fe80::1"


def test_tz_fixture_really_is_utc() -> None:
    assert os.environ["TZ"] == "UTC"


def test_parse_many_equals_parse_text_line_by_line() -> None:
    from pathlib import Path

    from tests.unit.test_parse_hostile import INJECTIONS, MARKUP, TEMPLATES

    root = Path(__file__).resolve().parents[2] / "popwatch" / "data" / "samples"
    lines: list[str] = []
    for path in sorted(root.glob("*/*")):
        lines += path.read_bytes().decode("utf-8", "replace").split("\n")  # CRLF kept
    for t in TEMPLATES.values():
        lines += [t.replace("{U}", u) for u in INJECTIONS + MARKUP]
    lines += ["", "x" * 20000, f"2026-11-28T05:00:21Z mx sshd[1]: Invalid user {'y' * 9000} from {IP} port 5"]
    a = list(Parser(now=lambda: NOW).parse_many(lines, "s", 10))
    p = Parser(now=lambda: NOW)
    b = [e for e in (p.parse_text(t, "s", i) for i, t in enumerate(lines, 10)) if e is not None]
    assert a == b
    assert len(a) > 2000


def test_iso_minute_cache_matches_datetime() -> None:
    import datetime as dt
    import random

    r = random.Random(11)
    clock = pfx.Clock(now=lambda: NOW)
    for _ in range(5000):
        base = dt.datetime(2026, 11, 28, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=r.randrange(0, 3 * 86400))
        zone = r.choice(["+00:00", "+01:00", "-05:30", "+14:00"])
        stamp = base.strftime("%Y-%m-%dT%H:%M:%S") + f".{r.randrange(0, 10**6):06d}" + zone
        assert clock.resolve(pfx.TS_ISO, stamp) == pytest.approx(dt.datetime.fromisoformat(stamp).timestamp(),
                                                                  abs=1e-6)
    # garbage in the seconds of a cached minute does not pass as a time
    clock.resolve(pfx.TS_ISO, "2026-11-28T05:00:21.000000+00:00")
    assert clock.resolve(pfx.TS_ISO, "2026-11-28T05:00:x1.000000+00:00") == NOW
