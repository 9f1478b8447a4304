"""The Monitor wiring: a replay source -> the real parser -> the store, counters -> store,
actions through policy -> firewall -> store -> audit."""

from __future__ import annotations

import asyncio
import io
import json
from importlib import resources

import pytest

from popwatch.firewall.base import PortLimit, Rate
from popwatch.firewall.sim import SimFirewall
from popwatch.monitor import Monitor
from popwatch.parse import Parser
from popwatch.persist import Persist
from popwatch.policy import Protector, Refused
from popwatch.sources.replay import ReplaySource
from popwatch.store import StateStore

SAMPLES = resources.files("popwatch") / "data" / "samples"


class Clock:
    def __init__(self) -> None:
        self.t = 1_795_000_000.0

    def __call__(self) -> float:
        return self.t


def make(lines, tmp_path=None, **kw):
    clock = Clock()
    sim = SimFirewall(clock=clock)
    out = io.StringIO()
    mon = Monitor(store=StateStore(clock=clock), parser=Parser(now=clock), firewall=sim,
                  sources=[ReplaySource(lines, name="mail.log", batch=7)],
                  protector=Protector(allow=["192.0.2.0/24"], ssh={"198.51.100.99"}),
                  persist=Persist(tmp_path / "state") if tmp_path else None, mono=clock,
                  events_out=out, poll_interval=0.01, **kw)
    mon.start_firewall([PortLimit(110, "global", Rate.parse("1/second"), 1), PortLimit(22)])
    return mon, sim, clock, out


async def run_briefly(mon: Monitor, seconds: float = 0.3) -> None:
    task = asyncio.create_task(mon.run())
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_replay_of_real_mail_log_fills_the_store():
    lines = (SAMPLES / "debian12-rsyslog-hydra-full" / "mail.log").read_text().splitlines()
    mon, sim, clock, out = make(lines)
    await run_briefly(mon)
    snap = mon.store.snapshot()
    by_ip = {r.ip: r for r in snap.rows}
    # the hydra run from 203.0.113.10: summary lines carry N attempts each, and they add up
    want = 0
    for line in lines:
        if "rip=203.0.113.10," in line and "auth failed, " in line:
            want += int(line.split("auth failed, ")[1].split(" ")[0])
    assert want > 0 and by_ip["203.0.113.10"].failures == want
    assert by_ip["203.0.113.10"].services == ("pop3",)
    # every event went out as one JSON line with the documented fields
    events = [json.loads(l) for l in out.getvalue().splitlines()]
    assert events and all({"ts", "service", "ip", "user", "kind", "source", "lineno", "line"} <= e.keys()
                          for e in events)
    assert {e["source"] for e in events} == {"mail.log"}
    assert mon.store.sources["mail.log"].state == "stopped"
    assert mon.lines_in == len(lines)


async def test_counters_reach_the_store_as_rates():
    mon, sim, clock, _ = make([])
    task = asyncio.create_task(mon.run())
    await asyncio.sleep(0.05)
    for _ in range(10):
        clock.t += 0.1
        sim.connect("203.0.113.1", 110)
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    ports = {p.port: p for p in mon.store.snapshot().ports}
    assert ports[110].passed_total + ports[110].dropped_total == 10
    assert ports[110].dropped_total >= 8  # 1/s burst 1 over ~1 s of demo time


def test_ban_goes_through_policy_firewall_store_and_audit(tmp_path):
    mon, sim, clock, _ = make([], tmp_path)
    r = mon.ban("::ffff:203.0.113.7", ttl=600, reason="test", origin="cli")
    assert r.ok and r.ban.ip == "203.0.113.7"
    assert "203.0.113.7" in sim.bans() and "203.0.113.7" in mon.store.bans
    with pytest.raises(Refused, match="SSH client"):
        mon.ban("198.51.100.99")
    with pytest.raises(Refused, match="allow-list"):
        mon.ban("192.0.2.10")
    with pytest.raises(ValueError):
        mon.ban("evil.example")
    assert set(sim.bans()) == {"203.0.113.7"}
    saved = json.loads((tmp_path / "state" / "bans.json").read_text())
    assert [b["ip"] for b in saved["bans"]] == ["203.0.113.7"]
    audit = [json.loads(l) for l in (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]
    assert [(a["action"], a["target"], a["ok"]) for a in audit] == [
        ("ban", "203.0.113.7", True), ("ban", "198.51.100.99", False), ("ban", "192.0.2.10", False)]
    mon.unban("203.0.113.7")
    assert sim.bans() == {} and mon.store.bans == {}


async def test_async_actions_and_limit_change():
    mon, sim, clock, _ = make([])
    r = await mon.aban("203.0.113.8", ttl=None, reason="key")
    assert r.ok and sim.bans() == {"203.0.113.8": None}
    new = PortLimit(110, "per-source", Rate.parse("5/minute"), 10)
    await mon.aset_limit(new)
    assert sim.limits()[110] == new and mon.store.limits[110] == new
    await mon.aunban("203.0.113.8")
    assert sim.bans() == {}
    mon.close()


def test_dry_run_changes_nothing(tmp_path):
    mon, sim, clock, _ = make([], tmp_path, dry_run=True)
    r = mon.ban("203.0.113.9", ttl=60)
    assert r.ok and "dry run" in r.message and r.change
    assert sim.bans() == {} and mon.store.bans == {}
    assert not (tmp_path / "state" / "audit.jsonl").exists()


def test_corrupt_state_file_is_set_aside(tmp_path):
    d = tmp_path / "state"
    d.mkdir()
    (d / "bans.json").write_text('{"version": 1, "bans": [{"ip": ')
    p = Persist(d)
    assert p.load_bans() == []
    assert p.problems and "corrupt" in p.problems[0]
    assert not (d / "bans.json").exists() and list(d.glob("bans.json.corrupt-*"))
