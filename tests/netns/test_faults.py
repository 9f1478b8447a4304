"""Fault injection (issue 17): kill -9 at every point between the disk writes and the kernel
changes of ban, unban, limit, mass ban and restore (``POPWATCH_FAULT_KILL_AT=N``, see
popwatch/faults.py); after each crash and the next start, the kernel, bans.json and the audit
log agree: bans.json lists exactly what the kernel bans, every kernel ban has its audit record,
a limit in the kernel has its audit record, and no temp file is left. (Full and read-only
state dirs: test_integrity.py::test_unwritable_state_dir_one_line_exit_7_nothing_changed.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from .nslab import REPO, Lab
from .test_integrity import audit, kernel, pw, reboot, restore, saved

pytestmark = pytest.mark.netns

MAX_POINTS = 24  # bounded: every operation passes fewer points than this (mass ban of 3: 18)
KILLED = (-9, 137)

MASS = ("import sys, time; sys.path.insert(0, {repo!r});"
        "from popwatch.config import load; from popwatch.commands.fw import _firewall, _monitor, _ensure_base; from popwatch.actions import run_sync;"
        "cfg = load(None); cfg.backend = 'nft'; from pathlib import Path; cfg.state_dir = Path({state!r});"
        "fw = _firewall(cfg, False); _ensure_base(fw, False); mon = _monitor(cfg, fw, False);"
        "done, refused = run_sync(mon.actions.ban_many(['198.51.100.%d' % i for i in range(1, 4)], ttl=3600, reason='mass', origin='cli'));"
        "print(len(done))")


def _setup(lab: Lab, state: Path, op: str) -> None:
    assert pw(lab, state, "ban", "203.0.113.20", "--reason", "before").returncode == 0
    if op == "restore":
        for i in range(1, 31):
            assert pw(lab, state, "ban", f"198.51.100.{i}", "--reason", "saved").returncode == 0 if i == 1 else True
        bans = json.loads((state / "bans.json").read_text())
        bans["bans"] += [dict(bans["bans"][0], ip=f"198.51.100.{i}") for i in range(2, 31)]
        (state / "bans.json").write_text(json.dumps(bans))
        reboot(lab)


def _run(lab: Lab, state: Path, op: str, n: int) -> int:
    env = {"POPWATCH_FAULT_KILL_AT": str(n)}
    if op == "ban":
        return pw(lab, state, "ban", "203.0.113.21", "--reason", "x", env=env).returncode
    if op == "unban":
        return pw(lab, state, "unban", "203.0.113.20", env=env).returncode
    if op == "limit":
        return pw(lab, state, "limit", "110", "--mode", "global", "--rate", "3/second", env=env).returncode
    if op == "mass":
        return lab.run(lab.server, ["env", f"POPWATCH_FAULT_KILL_AT={n}", f"PYTHONPATH={REPO}", sys.executable,
                                    "-c", MASS.format(repo=str(REPO), state=str(state))],
                       check=False).returncode
    log = state.parent / "empty.log"
    log.touch()
    return pw(lab, state, "watch", "--no-tui", "--log", str(log), "--duration", "1", env=env,
              timeout=60).returncode


def _check(lab: Lab, state: Path, what: str) -> None:
    restore(lab, state)  # the next start after the crash (reconcile)
    k = kernel(lab)
    assert set(saved(state)) == k, (what, set(saved(state)) ^ k)
    recs = audit(state)
    voided = {r.get("voids") for r in recs if r["action"] == "void"}
    recorded = {r["target"] for r in recs if r["action"] in ("ban", "restore") and r.get("ok", True)
                and r["id"] not in voided} | {t for r in recs if r["action"] == "restore" for t in r.get("targets", [])}
    assert k <= recorded, (what, k - recorded)
    rules = lab.run(lab.server, ["iptables", "-S", "POPWATCH"], check=False).stdout
    if "3/sec" in rules:
        assert any(r["action"] == "limit" and r["id"] not in voided for r in recs), what
    assert not [p.name for p in state.iterdir() if p.name.endswith(".tmp")], what


@pytest.mark.parametrize("op", ["ban", "unban", "limit", "mass", "restore"])
def test_kill_9_at_every_point_leaves_kernel_state_and_audit_agreeing(lab: Lab, tmp_path: Path, op: str) -> None:
    completed = False
    for n in range(1, MAX_POINTS + 1):
        state = tmp_path / f"state-{n}"
        pw(lab, tmp_path / "scratch", "uninstall")  # a clean kernel for each run
        _setup(lab, state, op)
        code = _run(lab, state, op, n)
        _check(lab, state, f"{op} killed at point {n}" if code in KILLED else f"{op} completed")
        if code not in KILLED:
            assert code == 0, (op, n, code)
            completed = True
            break
    assert completed, f"{op} still killed after {MAX_POINTS} points"
    assert n > 2, f"{op}: the fault points were not reached"
