"""The state directory: atomic files, corrupt files set aside, history bounds, the lock."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from popwatch.model import Ban
from popwatch.persist import AlreadyRunning, Persist
from tests.deadline import readline_within

T0 = 1_795_000_000.0


def test_bans_round_trip_and_permissions(tmp_path):
    p = Persist(tmp_path / "s")
    bans = [Ban("203.0.113.1", T0, T0 + 60, "r", "key"), Ban("2001:db8::1", T0, None, "", "auto")]
    p.save_bans(bans)
    assert Persist(tmp_path / "s").load_bans() == bans
    assert (tmp_path / "s" / "bans.json").stat().st_mode & 0o777 == 0o600
    assert not [f for f in os.listdir(tmp_path / "s") if f.endswith(".tmp")]


@pytest.mark.parametrize("content", [b"", b"{", b"[1, 2]", b'{"bans": [{"ip": 5}]}', b"\x00\xff" * 50,
                                     b'{"bans": [{"ip": "evil.example", "created": 1}]}',
                                     b'{"bans": [{"ip": "203.0.113.1"}]}'])
def test_corrupt_or_truncated_bans_file_is_set_aside(tmp_path, content):
    d = tmp_path / "s"
    d.mkdir()
    (d / "bans.json").write_bytes(content)
    p = Persist(d)
    assert p.load_bans() == []
    assert len(p.problems) == 1 and "corrupt" in p.problems[0] and "set aside" in p.problems[0]
    aside = list(d.glob("bans.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == content
    p.save_bans([Ban("203.0.113.2", T0)])  # and life goes on
    assert [b.ip for b in Persist(d).load_bans()] == ["203.0.113.2"]


def test_corrupt_successes_file_set_aside(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    (d / "successes.json").write_text("{nope")
    p = Persist(d)
    assert p.load_successes() == {}
    assert p.problems and list(d.glob("successes.json.corrupt-*"))
    p.save_successes({"198.51.100.1": T0})
    assert Persist(d).load_successes() == {"198.51.100.1": T0}


def test_audit_is_append_only_json_lines_with_who_and_ids(tmp_path):
    p = Persist(tmp_path / "s")
    r1 = p.audit("ban", "203.0.113.1", origin="key", reason="x", change=["ipset add popwatch4 203.0.113.1"])
    r2 = p.audit("unban", "203.0.113.1", origin="cli", prev={"expires": None})
    with open(p.audit_path, "ab") as f:
        f.write(b'{"truncated": ')  # a crash mid-write
    recs = Persist(tmp_path / "s").read_audit()
    assert [r["id"] for r in recs] == [r1["id"], r2["id"]] and r1["id"] != r2["id"]
    assert {"time", "who", "origin", "action", "target", "reason", "change", "ok"} <= recs[0].keys()
    assert {"user", "ssh_client"} <= recs[0]["who"].keys()
    assert recs[1]["prev"] == {"expires": None}


def test_history_is_trimmed_to_history_max(tmp_path):
    p = Persist(tmp_path / "s", history_max=100)
    p.load_history()
    for i in range(250):
        p.add_history(Ban(f"203.0.113.{i % 250}", T0 + i))
    recs = Persist(tmp_path / "s", history_max=100).load_history()
    assert len(recs) == 100 and recs[-1]["created"] == T0 + 249
    assert len((tmp_path / "s" / "history.jsonl").read_text().splitlines()) == 100


_HOLD = r"""
import sys, time
from popwatch.persist import Persist
p = Persist(sys.argv[1]); p.lock(); print("locked", flush=True); time.sleep(60)
"""


def test_second_instance_refused_with_the_holders_pid(tmp_path):
    d = str(tmp_path / "s")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, d], stdout=subprocess.PIPE, text=True)
    try:
        assert readline_within(holder.stdout, 60, "the lock holder").strip() == "locked"
        with pytest.raises(AlreadyRunning, match=rf"pid {holder.pid}\b.*--state-dir"):
            Persist(d).lock()
    finally:
        holder.kill()
        holder.wait()
    # the holder died (even by SIGKILL): the lock is free again
    p = Persist(d)
    p.lock()
    p.unlock()


def test_lock_in_same_process_second_persist_refused(tmp_path):
    a, b = Persist(tmp_path / "s"), Persist(tmp_path / "s")
    a.lock()
    with pytest.raises(AlreadyRunning):
        b.lock()
    a.unlock()
    b.lock()
    b.unlock()
