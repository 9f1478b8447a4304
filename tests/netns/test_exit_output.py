"""One set of exit codes over every command (popwatch/exitcodes.py, README "Exit codes"), and
no raw control character from a reason or a log line on any command's stdout or stderr."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .nslab import REPO, Lab

pytestmark = pytest.mark.netns

#: what must never reach a terminal raw (newline excepted: it ends our own lines)
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
HOSTILE = "x\x1b]0;PWNED\x07\x1b[2Jy\u2028z\u2029\u202eevil\u2066\r\x9b31m\x7f"


def pw(lab: Lab, state: Path, *args: str, backend: str = "nft") -> subprocess.CompletedProcess[str]:
    return lab.run(lab.server, ["env", "-u", "SSH_CONNECTION", "-u", "SSH_CLIENT", f"PYTHONPATH={REPO}",
                                sys.executable, "-m", "popwatch", "--backend", backend, "--state-dir",
                                str(state), *args], check=False)


TABLE = [
    (["ban", "203.0.113.5", "--reason", "ok"], 0),
    (["ban", "203.0.113.5"], 0),                                  # again: refreshed, still 0
    (["unban", "203.0.113.99"], 0),                               # nothing to lift: 0
    (["ban", "example.com"], 2),
    (["ban", "010.0.0.1"], 2),
    (["ban", "--net", "203.0.0.0/16"], 2),                       # too large for the set
    (["ban", "203.0.113.6", "--ttl", "99999999999w"], 2),
    (["ban", "203.0.113.6", "--ttl", "30d"], 2),                 # beyond 2147483 s
    (["ban", "203.0.113.6", "--ttl", "\u0663m"], 2),             # Arabic-Indic digit
    (["limit", "\u0662\u0662"], 2),
    (["limit", "110", "--burst", "\u0665"], 2),
    (["--backend", "none", "ban", "203.0.113.7"], 2),
    (["--backend", "none", "unban", "203.0.113.7"], 2),
    (["ban", "127.0.0.1"], 4),
    (["ban", "192.0.2.1"], 4),                                    # the server itself
    (["ban", "--net", "198.51.100.0/24", "--ttl", "1h"], 0),
    (["unban", "198.51.100.8"], 5),                               # inside a network ban
    (["unban", "--net", "198.51.100.0/24"], 0),
    (["status"], 0),
    (["bans"], 0),
]


def test_exit_code_table(lab: Lab, tmp_path: Path) -> None:
    state = tmp_path / "state"
    r = pw(lab, state, "undo")
    assert r.returncode == 5 and "nothing to undo" in r.stderr   # not 4 ("protected")
    for args, code in TABLE:
        backend = "nft"
        if args[0] == "--backend":
            backend, args = args[1], args[2:]
        r = pw(lab, state, *args, backend=backend)
        assert r.returncode == code, (args, r.returncode, r.stderr)
        if code:
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("popwatch") and "Traceback" not in r.stderr, \
                (args, r.stderr)
            assert len(lines[0]) < 500
    r = pw(lab, state, "ban", "a" * 5000)
    assert r.returncode == 2 and len(r.stderr) < 300 and "a" * 100 not in r.stderr
    r = pw(lab, state, "ban", "010.0.0.1")
    assert "hostname" not in r.stderr and "leading zero" in r.stderr


def test_no_raw_control_character_reaches_any_output(lab: Lab, tmp_path: Path) -> None:
    state = tmp_path / "state"
    log = tmp_path / "auth.log"
    log.write_text(f"Dec  7 05:00:00 mail sshd[1]: Invalid user {HOSTILE} from 203.0.113.40 port 22\n"
                   f"Dec  7 05:00:00 mail sshd[1]: Failed password for invalid user {HOSTILE} from "
                   f"203.0.113.40 port 22 ssh2\n", encoding="utf-8")
    runs = [
        ["ban", "203.0.113.30", "--reason", HOSTILE],
        ["ban", "2001:db8:9::1", "--reason", HOSTILE, "--ttl", "10m"],
        ["bans"], ["bans", "--json"], ["status"], ["status", "--json"],
        ["scan", str(log)], ["scan", str(log), "--json", "--all"],
        ["ban", HOSTILE], ["unban", HOSTILE], ["limit", HOSTILE], ["ban", "203.0.113.31", "--ttl", HOSTILE],
        ["limit", "110", "--rate", HOSTILE], ["--dry-run", "ban", "203.0.113.32", "--reason", HOSTILE],
        ["undo", "--dry-run"], ["unban", "203.0.113.30"], ["undo"], ["bans"],
        ["watch", "--no-tui", "--from-start", "--log", str(log), "--events", "-", "--duration", "2"],
        [HOSTILE],
    ]
    for args in runs:
        r = pw(lab, state, *args)
        assert "Traceback" not in r.stderr, (args, r.stderr)
        for name, text in (("stdout", r.stdout), ("stderr", r.stderr)):
            m = RAW.search(text)
            assert m is None, (args, name, repr(text[max(0, m.start() - 40):m.end() + 40]))
    assert "203.0.113.30" in pw(lab, state, "bans").stdout  # the undo re-banned it
