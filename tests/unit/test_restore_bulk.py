"""Start-up restore hands the saved bans to the firewall's bulk path (``ban_many``) in one
call, and falls back to one ``ban()`` each only when that call fails. The real kernel side
(5,000 bans, one nft transaction) is tests/netns/test_restore_bulk.py."""

from __future__ import annotations

import json
from pathlib import Path

from popwatch.firewall.base import FirewallError
from popwatch.firewall.sim import SimFirewall
from popwatch.model import Ban
from popwatch.monitor import Monitor
from popwatch.parse import Parser
from popwatch.persist import Persist
from popwatch.policy import Protector
from popwatch.store import StateStore


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class BulkSim(SimFirewall):
    """The sim firewall with a bulk call that is recorded (and can be made to fail)."""

    def __init__(self, fail: bool = False, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.fail = fail
        self.bulk_calls: list[list[tuple[str, float | None]]] = []

    def ban_many(self, items: object) -> int:
        got = list(items)  # type: ignore[call-overload]
        self.bulk_calls.append(got)
        if self.fail:
            raise FirewallError("nft: Error: Could not process rule: No buffer space available")
        for ip, ttl in got:
            self.ban(ip, ttl)
        return len(got)


def setup(tmp_path: Path, fail: bool) -> tuple[Monitor, BulkSim, Path]:
    d = tmp_path / "state"
    clock = Clock(1_795_000_000.0)
    Persist(d).save_bans([Ban(f"203.0.113.{i}", clock.t - 100, clock.t + 100 * i, "saved", "auto")
                          for i in range(1, 201)]
                         + [Ban("2001:db8:7::5", clock.t - 100, None, "saved", "cli"),
                            Ban("203.0.113.250", clock.t - 100, clock.t - 1, "gone", "auto")])  # expired
    sim = BulkSim(fail=fail, clock=clock)
    mon = Monitor(store=StateStore(clock=clock), parser=Parser(now=clock), firewall=sim,
                  protector=Protector(), persist=Persist(d), mono=clock)
    return mon, sim, d


def test_restore_is_one_bulk_call(tmp_path: Path) -> None:
    mon, sim, d = setup(tmp_path, fail=False)
    msgs = mon.reconcile()
    assert msgs[0].startswith("bans on start: 201 restored, 0 already in the kernel, 1 expired")
    assert len(sim.bulk_calls) == 1 and len(sim.bulk_calls[0]) == 201
    assert dict(sim.bulk_calls[0])["203.0.113.7"] == 700 and dict(sim.bulk_calls[0])["2001:db8:7::5"] is None
    assert sim.bans()["203.0.113.200"] == 20000 and sim.bans()["2001:db8:7::5"] is None
    audit = [json.loads(l) for l in (d / "audit.jsonl").read_text().splitlines()]
    assert sum(a["action"] == "restore" for a in audit) == 201
    assert len(mon.store.bans) == 201


def test_failed_bulk_call_falls_back_to_one_by_one(tmp_path: Path) -> None:
    mon, sim, _ = setup(tmp_path, fail=True)
    msgs = mon.reconcile()
    assert msgs[0].startswith("bans on start: 201 restored")
    assert any("bulk restore failed (nft: Error" in m and "one by one" in m for m in msgs)
    assert len(sim.bans()) == 201 and sum(l.startswith("ban 203.0.113.9 ") for l in sim.log) == 1
