"""`popwatch scan`: files, .gz, stdin, JSON stream, summary, errors, bounded line reading."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from popwatch.cli import main
from popwatch.commands.scan import event_json, iter_blocks, iter_lines
from popwatch.model import RawLine
from popwatch.parse import Parser

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "popwatch" / "data" / "samples"
SEED = ("Jan  4 06:25:52 mail dovecot: pop3-login: Aborted login: user=<root>, method=PLAIN, "
        "rip=::ffff:200.57.91.104, lip=::ffff:192.0.2.1")


def scan(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["scan", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_seed_line_via_stdin_subprocess() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "popwatch", "scan", "--json", "-"], input=SEED + "\n",
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    (ev,) = jsonl(r.stdout)
    assert (ev["ip"], ev["service"], ev["user"], ev["kind"], ev["attempts"]) == (
        "200.57.91.104", "pop3", "root", "aborted", 1)
    assert (ev["source"], ev["lineno"], ev["line"]) == ("stdin", 1, SEED)
    # a BSD syslog stamp has no year and no zone: the year is inferred, the zone is the host's
    assert re.fullmatch(r"\d{4}-01-04T06:25:52[+-]\d\d:\d\d", ev["ts"]), ev["ts"]


def test_json_fields_and_line_numbers(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "auth.log"
    f.write_text("noise\n" + SEED + "\n\n2026-11-28T05:00:21Z mx sshd[1]: Invalid user eve from 203.0.113.7 port 5\n")
    rc, out, _err = scan(capsys, "--json", str(f))
    assert rc == 0
    evs = jsonl(out)
    assert [(e["lineno"], e["ip"], e["kind"]) for e in evs] == [
        (2, "200.57.91.104", "aborted"), (4, "203.0.113.7", "invalid_user")]
    assert set(evs[0]) == {"ts", "service", "ip", "user", "kind", "attempts", "source", "lineno", "line"}
    assert evs[1]["ts"] == "2026-11-28T05:00:21+00:00"
    assert evs[0]["source"] == str(f)


def test_json_every_failure_line_probes_and_successes_only_with_all(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(SAMPLES / "debian12-rsyslog" / "auth.log")
    _rc, out, _ = scan(capsys, "--json", path)
    evs = jsonl(out)
    assert {e["kind"] for e in evs} <= {"auth_failed", "invalid_user", "aborted", "too_many", "not_allowed"}
    assert sum(e["attempts"] for e in evs) == 129
    # the pam_unix twin of a `Failed password` is a failure line too, about an attempt its twin
    # counted: it is listed, with attempts 0, so every failure line is accounted for
    dups = [e for e in evs if e["attempts"] == 0]
    assert dups and all(e["ip"] for e in dups)
    assert len({e["lineno"] for e in evs}) == len(evs)
    _rc, out, _ = scan(capsys, "--json", "--all", path)
    alls = jsonl(out)
    kinds = {e["kind"] for e in alls}
    assert {"success", "probe"} <= kinds
    assert len(alls) > len(evs)
    assert sum(e["attempts"] for e in alls) == 129  # --all adds no counted attempts


def test_gz_and_several_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src = (SAMPLES / "debian12-rsyslog" / "mail.log").read_bytes()
    gz = tmp_path / "mail.log.1.gz"
    gz.write_bytes(gzip.compress(src))
    rc, out, _ = scan(capsys, "--json", str(gz), str(SAMPLES / "sshd-E" / "sshd-E.log"))
    assert rc == 0
    evs = jsonl(out)
    assert {e["source"] for e in evs} == {str(gz), str(SAMPLES / "sshd-E" / "sshd-E.log")}
    assert sum(e["attempts"] for e in evs if e["source"] == str(gz)) == 75


def test_summary_table(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = scan(capsys, str(SAMPLES / "debian12-rsyslog" / "auth.log"),
                      str(SAMPLES / "debian12-rsyslog" / "mail.log"))
    assert rc == 0
    assert "713 lines, 204 failed attempts from 5 addresses" in out
    row = next(line for line in out.splitlines() if line.startswith("203.0.113.12 "))
    assert row.split()[1] == "121" and "ssh" in row and "2026-11-28 05:32:47" in row
    assert any(line.split()[:2] == ["pop3", "39"] for line in out.splitlines())
    assert any(line.split()[:2] == ["ssh", "129"] for line in out.splitlines())


@pytest.mark.parametrize("bad", ["/nonexistent/auth.log", "/"])
def test_unreadable_file_is_one_line_exit_2(capsys: pytest.CaptureFixture[str], bad: str) -> None:
    rc, out, err = scan(capsys, bad)
    assert rc == 2
    assert out == ""
    assert err.count("\n") == 1 and bad in err


def test_corrupt_gz_is_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "x.gz"
    f.write_bytes(gzip.compress(SEED.encode() * 1000)[:200])
    rc, _out, err = scan(capsys, "--json", str(f))
    assert rc == 2 and "x.gz" in err


def test_invalid_utf8_crlf_and_nul_in_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "mixed.log"
    f.write_bytes(b"\xff\xfe\x00garbage\r\n"
                  b"2026-11-28T05:00:21Z mx sshd[1]: Invalid user \xc3(\x1b[2J from 203.0.113.7 port 5\r\n")
    rc, out, _ = scan(capsys, "--json", str(f))
    assert rc == 0
    (ev,) = jsonl(out)
    assert ev["ip"] == "203.0.113.7" and ev["lineno"] == 2
    assert ev["user"] == "\ufffd(\\x1b[2J"


def test_event_json_is_json_dumps_of_to_json() -> None:
    p = Parser()
    n = 0
    for path in sorted(SAMPLES.glob("*/*")):
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            ev = p.parse(RawLine(line, str(path), i))
            if ev is not None:
                assert event_json(ev) == json.dumps(ev.to_json())
                n += 1
    ev = p.parse(RawLine("2026-11-28T05:00:21.999999+00:00 mx sshd[1]: User root from host.example not "
                         "allowed because listed in DenyUsers \u00e9", "src\u00e9", None))
    assert ev is not None
    assert event_json(ev) == json.dumps(ev.to_json())
    assert n > 1000


def test_huge_line_is_cut_and_the_next_line_still_counts(capsys: pytest.CaptureFixture[str],
                                                         tmp_path: Path) -> None:
    f = tmp_path / "huge.log"
    with open(f, "wb") as fh:
        fh.write(b"2026-11-28T05:00:21Z mx sshd[1]: Invalid user ")
        fh.write(b"A" * (20 * 1024 * 1024))
        fh.write(b" from 198.51.100.9 port 5\n")
        fh.write(b"2026-11-28T05:00:22Z mx sshd[2]: Invalid user eve from 203.0.113.7 port 5\n")
    rc, out, _ = scan(capsys, "--json", str(f))
    assert rc == 0
    (ev,) = jsonl(out)
    assert (ev["ip"], ev["lineno"]) == ("203.0.113.7", 2)


def test_iter_lines_bounds_memory_per_line() -> None:
    data = b"a" * 5_000_000 + b"\nshort\n" + b"b" * 10 + b"\nlast"
    lines = list(iter_lines(io.BytesIO(data), cap=1000))
    assert [len(x) for x in lines] == [1000, 5, 10, 4]
    blocks = list(iter_blocks(io.BytesIO(data), cap=1000))
    assert max(len(b) for b in blocks) <= 1_100_000


def test_scan_registered_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["scan", "--help"])
    out = capsys.readouterr().out
    assert "--json" in out and "--all" in out


def test_progress_bar_only_on_a_terminal(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import popwatch.commands.scan as scan_mod

    f = tmp_path / "big.log"
    f.write_text((SEED + "\n") * 5000)
    monkeypatch.setattr(scan_mod, "PROGRESS_MIN", 1000)
    rc, _out, err = scan(capsys, str(f))
    assert rc == 0 and err == ""               # captured stderr is not a terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    rc, out, err = scan(capsys, str(f))
    assert rc == 0 and "100.0%" in err and "200.57.91.104" in out


def test_fast_iso_matches_model_iso() -> None:
    import random

    from popwatch.commands.scan import fast_iso
    from popwatch.model import iso

    r = random.Random(5)
    values = [r.uniform(0, 4e9) for _ in range(20000)]
    values += [1795842021 + k * 0.37 for k in range(5000)]
    values += [1795842021 + k / 1e6 + 0.5e-6 for k in range(2000)]
    values += [0.0, 1e-7, 86399.9999999, 1795842021.9999995, -1.5, 2.5e11]
    assert [fast_iso(v) for v in values] == [iso(v) for v in values]
