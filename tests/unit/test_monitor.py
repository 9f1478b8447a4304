"""The Monitor wiring: a replay source -> the real parser -> the store, counters -> store,
actions through policy -> firewall -> store -> audit."""

from __future__ import annotations

import asyncio
import io
import json
from importlib import resources

import pytest

from popwatch.model import PortLimit, Rate
from popwatch.firewall.sim import SimFirewall
from popwatch.monitor import Monitor
from popwatch.parse import Parser
from popwatch.persist import Persist
from popwatch.policy import Protector, Refused
from popwatch.sources.replay import ReplaySource
from popwatch.store import StateStore

SAMPLES = resources.files("popwatch") / "data" / "samples"


def make(lines, tmp_path=None, **kw):
    clock = Clock(1_795_000_000.0)
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
    # (and campaign records, "type": "campaign", in between)
    events = [e for l in out.getvalue().splitlines() if (e := json.loads(l)).get("type") != "campaign"]
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

    def seen() -> int:
        p = {p.port: p for p in mon.store.snapshot().ports}.get(110)
        return 0 if p is None else p.passed_total + p.dropped_total
    for _ in range(500):  # until the counter poll brought them in (at most 5 s)
        if seen() >= 10:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    ports = {p.port: p for p in mon.store.snapshot().ports}
    assert ports[110].passed_total + ports[110].dropped_total == 10
    assert ports[110].dropped_total >= 8  # 1/s burst 1 over ~1 s of demo time


def test_ban_goes_through_policy_firewall_store_and_audit(tmp_path):
    mon, sim, clock, _ = make([], tmp_path)
    r = run_sync(mon.actions.ban("::ffff:203.0.113.7", ttl=600, reason="test", origin="cli"))
    assert r.ok and r.ban.ip == "203.0.113.7"
    assert "203.0.113.7" in sim.bans() and "203.0.113.7" in mon.store.bans
    with pytest.raises(Refused, match="SSH client"):
        run_sync(mon.actions.ban("198.51.100.99", origin="cli"))
    with pytest.raises(Refused, match="allow-list"):
        run_sync(mon.actions.ban("192.0.2.10", origin="cli"))
    with pytest.raises(ValueError):
        run_sync(mon.actions.ban("evil.example", origin="cli"))
    assert set(sim.bans()) == {"203.0.113.7"}
    saved = json.loads((tmp_path / "state" / "bans.json").read_text())
    assert [b["ip"] for b in saved["bans"]] == ["203.0.113.7"]
    audit = [json.loads(l) for l in (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]
    assert [(a["action"], a["target"], a["ok"]) for a in audit] == [
        ("ban", "203.0.113.7", True), ("ban", "198.51.100.99", False), ("ban", "192.0.2.10", False)]
    run_sync(mon.actions.unban("203.0.113.7", origin="cli"))
    assert sim.bans() == {} and mon.store.bans == {}


async def test_async_actions_and_limit_change():
    mon, sim, clock, _ = make([])
    r = await mon.actions.ban("203.0.113.8", ttl=None, reason="key")
    assert r.ok and sim.bans() == {"203.0.113.8": None}
    new = PortLimit(110, "per-source", Rate.parse("5/minute"), 10)
    await mon.actions.set_limit(new)
    assert sim.limits()[110] == new and mon.store.limits[110] == new
    await mon.actions.unban("203.0.113.8")
    assert sim.bans() == {}
    mon.close()


def test_dry_run_changes_nothing(tmp_path):
    mon, sim, clock, _ = make([], tmp_path, dry_run=True)
    r = run_sync(mon.actions.ban("203.0.113.9", ttl=60, origin="cli"))
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


# ---------------------------------------------------------------------------- policy paths

from dataclasses import replace as _replace  # noqa: E402

from popwatch.config import PolicyConfig  # noqa: E402
from popwatch.model import Ban, RawLine  # noqa: E402
from popwatch.actions import run_sync
from tests.helpers import Clock


def dove(ip: str, n: int, i: int = 0, user: str = "root") -> str:
    return (f"2026-11-28T05:02:{i % 60:02d}.574142+00:00 srv dovecot: pop3-login: Disconnected: "
            f"Connection closed (auth failed, {n} attempts in 152 secs): user=<{user}>, method=LOGIN, "
            f"rip={ip}, lip=192.0.2.1, session=<s{i}x{ip}>")


def pmon(tmp_path=None, **pol):
    clock = Clock(1_795_000_000.0)
    sim = SimFirewall(clock=clock)
    policy = _replace(PolicyConfig(), **pol)
    mon = Monitor(store=StateStore(clock=clock), parser=Parser(now=clock), firewall=sim,
                  protector=Protector(allow=["192.0.2.0/24"], ssh={"198.51.100.99"}),
                  persist=Persist(tmp_path / "state") if tmp_path else None, mono=clock, policy=policy)
    mon.start_firewall([PortLimit(110)])
    return mon, sim, clock


def raw(*lines):
    return [RawLine(l, "mail.log", i) for i, l in enumerate(lines, 1)]


def test_auto_ban_in_ingest_with_reason_in_the_audit(tmp_path):
    mon, sim, clock = pmon(tmp_path, maxretry=5, auto_ban=True)
    mon.ingest(raw(dove("203.0.113.10", 3, 1)))
    assert sim.bans() == {}
    mon.ingest(raw(dove("203.0.113.10", 3, 2)))          # 6 >= 5: banned at once
    assert set(sim.bans()) == {"203.0.113.10"} and mon.store.bans["203.0.113.10"].origin == "auto"
    audit = [json.loads(l) for l in (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]
    [a] = [a for a in audit if a["action"] == "ban"]
    assert a["origin"] == "auto" and "6 failed attempts within 10m" in a["reason"]
    assert a["change"] and a["detail"]["rule"] == "maxretry" and a["detail"]["count"] == 6
    assert a["expires"] == clock.t + 3600
    hist = (tmp_path / "state" / "history.jsonl").read_text().splitlines()
    assert len(hist) == 1 and mon.auto_latency and mon.auto_latency[0][0] == "203.0.113.10"


async def test_auto_ban_while_running_goes_through_the_firewall_thread(tmp_path):
    mon, sim, clock = pmon(tmp_path, maxretry=2, auto_ban=True)
    mon.running = True
    mon.ingest(raw(dove("203.0.113.11", 2, 1)))
    assert "203.0.113.11" in mon.actions.pending               # in flight, not yet in the store
    for _ in range(100):
        await asyncio.sleep(0.01)
        if "203.0.113.11" in mon.store.bans:
            break
    assert set(sim.bans()) == {"203.0.113.11"} and not mon.actions.pending
    mon.ingest(raw(dove("203.0.113.11", 5, 2)))          # already banned: no second decision
    mon.ingest(raw(dove("203.0.113.12", 2, 3)))          # the marker: decided after it, FIFO
    for _ in range(100):
        await asyncio.sleep(0.01)
        if "203.0.113.12" in mon.store.bans:
            break
    mon.flush()
    for _ in range(200):  # the audit writer may trail the store by a moment
        audit = [json.loads(l) for l in (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]
        if len(audit) >= 2:
            break
        await asyncio.sleep(0.01)
    assert [(a["action"], a["target"]) for a in audit] == [("ban", "203.0.113.11"), ("ban", "203.0.113.12")]
    assert [b["ip"] for b in json.loads((tmp_path / "state" / "bans.json").read_text())["bans"]] == [
        "203.0.113.11", "203.0.113.12"]
    mon.close()


def test_auto_ban_toggle_off_by_default_and_audited(tmp_path):
    mon, sim, clock = pmon(tmp_path, maxretry=2)
    assert mon.auto_ban is False
    mon.ingest(raw(dove("203.0.113.12", 5, 1)))
    assert sim.bans() == {}
    assert mon.store.state_of(mon.store.attackers["203.0.113.12"], clock.t)[0] == "near"
    assert mon.set_auto_ban() is True and mon.auto_ban
    mon.ingest(raw(dove("203.0.113.12", 1, 2)))
    assert "203.0.113.12" in sim.bans()
    assert mon.set_auto_ban(False) is False
    acts = [json.loads(l)["action"] for l in (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]
    assert acts == ["auto-ban", "ban", "auto-ban"]


def test_auto_ban_dry_run_applies_nothing(tmp_path):
    mon, sim, clock = pmon(tmp_path, maxretry=1, auto_ban=True)
    mon.dry_run = True
    mon.ingest(raw(dove("203.0.113.13", 5, 1)))
    assert sim.bans() == {} and mon.store.bans == {}
    assert any("dry run: would ban 203.0.113.13" in n for n in mon.store.notes)
    assert not (tmp_path / "state" / "audit.jsonl").exists()


def test_recidive_through_the_monitor(tmp_path):
    mon, sim, clock = pmon(tmp_path, maxretry=1, auto_ban=True, bantime=600, recidive_factor=3)
    mon.ingest(raw(dove("203.0.113.14", 1, 1)))
    assert mon.store.bans["203.0.113.14"].expires == clock.t + 600
    clock.t += 700
    mon.store.expire_bans()
    mon.ingest(raw(dove("203.0.113.14", 1, 2)))
    assert mon.store.bans["203.0.113.14"].expires == clock.t + 1800
    # a restart remembers: the history file feeds recidive
    mon2, sim2, _ = pmon(tmp_path, maxretry=1, auto_ban=True, bantime=600, recidive_factor=3)
    assert mon2.autoban.previous_bans("203.0.113.14", clock.t) == 2


def test_login_history_survives_a_restart_and_gives_grace(tmp_path):
    ok_line = ("2026-11-28T05:24:45.700289+00:00 srv dovecot: pop3-login: Login: user=<test>, "
               "method=LOGIN, rip=198.51.100.20, lip=192.0.2.1, mpid=10781, session=<wwULYU9h1NjLAHEK>")
    mon, sim, clock = pmon(tmp_path, maxretry=3, success_maxretry=20, auto_ban=True)
    mon.ingest(raw(ok_line))
    mon.flush()
    mon2, sim2, clock2 = pmon(tmp_path, maxretry=3, success_maxretry=20, auto_ban=True)
    mon2.ingest(raw(dove("198.51.100.20", 10, 1)))
    assert sim2.bans() == {}
    mon2.ingest(raw(dove("198.51.100.20", 10, 2)))
    assert "198.51.100.20" in sim2.bans()


def test_undo_walks_back_through_human_actions(tmp_path):
    mon, sim, clock = pmon(tmp_path)
    run_sync(mon.actions.ban("203.0.113.20", ttl=600, origin="key"))
    clock.t += 100
    run_sync(mon.actions.unban("203.0.113.20", origin="key"))
    new = PortLimit(110, "global", Rate.parse("2/second"), 3)
    run_sync(mon.actions.set_limit(new, origin="key"))
    r = run_sync(mon.actions.undo())                                       # the limit goes back to count
    assert "undid limit 110" in r.message and sim.limits()[110] == PortLimit(110)
    r = run_sync(mon.actions.undo())                                       # the unban: banned again, time left 500 s
    assert sim.bans() == {"203.0.113.20": 500} and mon.store.bans["203.0.113.20"].expires == clock.t + 500
    r = run_sync(mon.actions.undo())                                       # the ban: lifted
    assert sim.bans() == {} and "203.0.113.20" not in mon.store.bans
    with pytest.raises(Refused, match="nothing to undo"):
        run_sync(mon.actions.undo())
    audit = [json.loads(l) for l in (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]
    assert sum(1 for a in audit if a.get("undoes")) == 3


def test_undo_skips_auto_bans_unless_asked(tmp_path):
    mon, sim, clock = pmon(tmp_path, maxretry=1, auto_ban=True)
    run_sync(mon.actions.ban("203.0.113.21", ttl=600, origin="key"))
    mon.ingest(raw(dove("203.0.113.22", 1, 1)))
    assert set(sim.bans()) == {"203.0.113.21", "203.0.113.22"}
    run_sync(mon.actions.undo())
    assert set(sim.bans()) == {"203.0.113.22"}
    run_sync(mon.actions.undo(include_auto=True))
    assert sim.bans() == {}


async def test_async_undo_and_in_memory_log_without_state_dir():
    mon, sim, clock = pmon(None)
    await mon.actions.ban("203.0.113.23", ttl=60)
    r = await mon.actions.undo()
    assert r.ok and sim.bans() == {}
    mon.close()


def test_reconcile_restores_adopts_and_drops(tmp_path):
    d = tmp_path / "state"
    clock = Clock(1_795_000_000.0)
    Persist(d).save_bans([Ban("203.0.113.30", clock.t - 100, clock.t + 500, "a", "key"),    # restore
                          Ban("203.0.113.31", clock.t - 100, clock.t - 1, "b", "auto"),     # expired
                          Ban("203.0.113.32", clock.t - 100, None, "c", "cli"),             # in kernel
                          Ban("192.0.2.9", clock.t - 100, None, "d", "cli")])               # protected now
    sim = SimFirewall(clock=clock)
    sim.ban("203.0.113.32")
    sim.ban("203.0.113.33", 900)                      # a ban popwatch never recorded
    sim.ban("192.0.2.9")                              # protected now: lifted on start
    sim.ban("192.0.2.10")                             # protected, unrecorded: lifted too
    mon = Monitor(store=StateStore(clock=clock), parser=Parser(now=clock), firewall=sim,
                  protector=Protector(allow=["192.0.2.0/24"]), persist=Persist(d), mono=clock)
    msgs = mon.reconcile()
    assert msgs[0].startswith("bans on start: 1 restored, 2 already in the kernel, 1 expired")
    assert any("lifted the ban of 192.0.2.9" in m for m in msgs)
    assert any("lifted the ban of 192.0.2.10" in m for m in msgs)
    lifted = [json.loads(l) for l in (d / "audit.jsonl").read_text().splitlines()]
    assert sorted(a["target"] for a in lifted if a["action"] == "unban") == ["192.0.2.10", "192.0.2.9"]
    assert sim.bans() == {"203.0.113.30": 500, "203.0.113.32": None, "203.0.113.33": 900}
    assert sim.log.count("ban 203.0.113.32") == 1     # adopted, not added again
    assert set(mon.store.bans) == {"203.0.113.30", "203.0.113.32", "203.0.113.33"}
    assert mon.store.bans["203.0.113.33"].origin == "kernel"
    saved = {b.ip for b in Persist(d).load_bans()}
    assert saved == {"203.0.113.30", "203.0.113.32", "203.0.113.33"}


def test_kernel_sync_follows_cli_changes(tmp_path):
    mon, sim, clock = pmon(tmp_path)
    run_sync(mon.actions.ban("203.0.113.40", ttl=600, origin="cli"))
    # another process lifted it: `popwatch unban` writes its record ahead, then changes the kernel
    Persist(tmp_path / "state").audit("unban", "203.0.113.40", origin="cli", reason="by hand")
    sim.unban("203.0.113.40")
    sim.ban("203.0.113.41", 60)                       # and banned another
    clock.t += 1
    assert mon.reconciler.sync_from_kernel(sim.bans(), clock.t) == []
    assert set(mon.store.bans) == {"203.0.113.41"}


def test_kernel_sync_puts_back_bans_another_tool_deleted(tmp_path):
    mon, sim, clock = pmon(tmp_path)
    for ip in ("203.0.113.42", "2001:db8:5::7"):
        run_sync(mon.actions.ban(ip, ttl=600, origin="cli"))
    run_sync(mon.actions.ban("203.0.113.43", ttl=5, origin="cli"))
    clock.t += 10
    sim.unban("203.0.113.42")                         # `ipset flush` / `nft flush set`: no record
    sim.unban("2001:db8:5::7")
    sim.unban("203.0.113.43")                         # this one ran out: not put back
    lost = mon.reconciler.sync_from_kernel(sim.bans(), clock.t)
    assert sorted(b.ip for b in lost) == ["2001:db8:5::7", "203.0.113.42"]
    assert {"203.0.113.42", "2001:db8:5::7"} <= set(mon.store.bans)   # still banned in the store
    done, said = mon.reconciler.put_back(lost)
    assert done and "another tool removed 2 bans" in said and "popwatch unban" in said
    left = sim.bans()
    assert "203.0.113.42" in left and 580 < (left["203.0.113.42"] or 0) <= 590   # the time it had left
    assert any(k.startswith("2001:db8:5:") for k in left)
    heal = [r for r in Persist(tmp_path / "state").read_audit() if r["action"] == "heal"]
    assert heal and set(heal[-1]["targets"]) == {"203.0.113.42", "2001:db8:5::7"}
    # the next sync finds them in the kernel: nothing to do; a real unban is then followed
    assert mon.reconciler.sync_from_kernel(sim.bans(), clock.t + 1) == []
    run_sync(mon.actions.unban("203.0.113.42", origin="cli"))
    assert mon.reconciler.sync_from_kernel(sim.bans(), clock.t + 2) == []
    assert "203.0.113.42" not in mon.store.bans
    # what is protected by now (allow-listed since) is never put back: dropped, as before
    run_sync(mon.actions.ban("203.0.113.45", ttl=600, origin="cli"))
    clock.t += 1
    sim.unban("203.0.113.45")
    mon.protector.add_allow("203.0.113.45/32")
    assert mon.reconciler.sync_from_kernel(sim.bans(), clock.t + 3) == []
    assert "203.0.113.45" not in mon.store.bans
    # without a state dir nothing can tell a CLI unban from a flush: followed, as before
    mon2, sim2, clock2 = pmon(None)
    run_sync(mon2.actions.ban("203.0.113.44", ttl=600, origin="cli"))
    clock2.t += 1
    sim2.unban("203.0.113.44")
    assert mon2.reconciler.sync_from_kernel(sim2.bans(), clock2.t) == []
    assert "203.0.113.44" not in mon2.store.bans


def test_what_if_from_the_monitor_window():
    mon, sim, clock = pmon(None)
    mon.ingest(raw(*[dove("203.0.113.50", 2, i) for i in range(5)], *[dove("203.0.113.51", 1, i) for i in range(3)]))
    r = run_sync(mon.actions.what_if("maxretry=4,findtime=10m"))
    assert {b.ip for b in r.banned} == {"203.0.113.50"}
    r = run_sync(mon.actions.what_if("maxretry=3"))
    assert {b.ip for b in r.banned} == {"203.0.113.50", "203.0.113.51"}
    assert sim.bans() == {}                              # nothing applied
    r = run_sync(mon.actions.what_if("port=110,rate=1/minute,burst=1"))
    assert r.dropped
    with pytest.raises(ValueError):
        run_sync(mon.actions.what_if("maxretry=lots"))


async def test_on_action_hook_sees_auto_bans_with_their_reason(tmp_path):
    mon, sim, clock = pmon(tmp_path, maxretry=2, auto_ban=True)
    seen = []
    mon.on_action.append(lambda action, target, kw: seen.append((action, target, kw.get("origin"), kw.get("reason"))))
    mon.running = True
    mon.ingest(raw(dove("203.0.113.60", 2, 1)))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if "203.0.113.60" in mon.store.bans:
            break
    mon.close()  # waits for the audit writer
    assert [(a, t, o) for a, t, o, _ in seen] == [("ban", "203.0.113.60", "auto")]
    assert seen[0][3].startswith("auto: 2 failed attempts")
    audit = [json.loads(l) for l in (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]
    assert [(a["action"], a["origin"]) for a in audit] == [("ban", "auto")]


async def test_async_what_if_for_the_ui():
    mon, sim, clock = pmon(None)
    mon.ingest(raw(*[dove("203.0.113.70", 2, i) for i in range(5)]))
    r = await mon.actions.what_if("maxretry=4")
    assert [b.ip for b in r.banned] == ["203.0.113.70"] and r.banned[0].attempts == 4
    with pytest.raises(ValueError):
        await mon.actions.what_if("nonsense")
    mon.close()
