"""Real OpenSSH 9.2 output (``sshd -E``, CRLF line ends) for hostile user names sent by hydra
and ssh from 192.0.2.50: the injected 198.51.100.9 must never be reported."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from popwatch.model import RawLine
from popwatch.parse import Parser
from popwatch.sanitize import is_clean

LOG = Path(__file__).resolve().parents[1] / "data" / "parse" / "openssh92-sshd-E-injected-users.log"
CLIENT = "192.0.2.50"


def events() -> list:
    p = Parser(now=lambda: 1795900000.0)
    out = []
    with open(LOG, "rb") as f:  # bytes: keep the CR of each line, as a tail would see it
        for i, raw in enumerate(f, 1):
            text = raw.decode("utf-8", "replace").rstrip("\n")
            ev = p.parse(RawLine(text, str(LOG), i))
            if ev is not None:
                out.append(ev)
    return out


def test_no_injected_address_and_all_clean() -> None:
    evs = events()
    assert len(evs) >= 25
    for ev in evs:
        assert ev.ip in (CLIENT, None), ev
        assert is_clean(ev.line) and not ev.line.endswith("\\x0d")
        assert ev.user is None or is_clean(ev.user)


def test_users_and_counts_from_real_lines() -> None:
    evs = events()
    users = Counter(e.user for e in evs if e.ip == CLIENT and e.is_failure)
    for u in ("root from 198.51.100.9 port 22 ssh2", "x rhost=198.51.100.9", "[@click=app.quit]",
              "a 198.51.100.9 port 22 [preauth]"):
        assert users[u] >= 3, (u, users)
    # hydra: one probe connection (no password) and one with one password, per user name
    per_user = Counter()
    for e in evs:
        if e.is_failure and e.user is not None:
            per_user[e.user] += e.attempts
    assert per_user["x rhost=198.51.100.9"] == 2
    assert per_user["[@click=app.quit]"] == 2
    assert sum(1 for e in evs if e.kind == "invalid_user" and e.attempts == 1) >= 8


DOVECOT_LOG = LOG.parent / "dovecot2319-log_path-injected-users.log"


def test_real_dovecot_hostile_users() -> None:
    """Real dovecot 2.3.19 (log_path, auth_verbose=yes, auth_username_chars empty) for user
    names carrying `rip=`, the auth prefix structure, markup and a fake attempt count."""
    p = Parser(now=lambda: 1795900000.0)
    evs = []
    for i, text in enumerate(DOVECOT_LOG.read_text().splitlines(), 1):
        ev = p.parse(RawLine(text, "dovecot.log", i))
        if ev is not None:
            evs.append(ev)
    assert all(e.ip == CLIENT for e in evs), [e for e in evs if e.ip != CLIENT]
    # 2 + 1 + 2 + 1 attempts; the verbose line whose user name mimics the auth prefix is
    # ambiguous and skipped, so its summary line counts it instead
    assert sum(e.attempts for e in evs if e.is_failure) == 6
    summaries = [e for e in evs if e.service in ("pop3", "imap")]
    assert [e.attempts for e in summaries] == [0, 1, 0, 0]
    assert [e.user for e in summaries] == [
        "x>, method=plain, rip=198.51.100.9, lip=1.1.1.1, session=<evil>",
        "root,198.51.100.9,<abc>): unknown user",
        "[@click=app.quit]",
        "a (auth failed, 99 attempts in 1 secs)",
    ]
    assert all(is_clean(e.line) for e in evs)
