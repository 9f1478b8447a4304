"""Issue 17 in pure form: one ban per incident, merge-on-write under the state lock, write-ahead
audit with void records, NAT64, limits of numbers and durations, the output gate."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
from pathlib import Path

import pytest

from popwatch.addr import AddressError, parse_target
from popwatch.autoban import AutoBan
from popwatch.config import ConfigError, PolicyConfig, from_dict, parse_duration
from popwatch.model import Rate, parse_burst
from popwatch.firewall.rules import ban_entry
from popwatch.model import Ban
from popwatch.persist import Persist, StateDirError, atomic_write
from popwatch.sanitize import SafeStream, clean
from tests.helpers import ev


@pytest.mark.parametrize("maxretry", [1, 2, 3, 5, 7])
def test_one_batch_one_ban_at_any_maxretry(maxretry: int) -> None:
    pol = PolicyConfig()
    pol.maxretry, pol.auto_ban = maxretry, True
    eng = AutoBan(pol)
    batch = [ev("198.51.100.66", 100.0 + i * 0.001) for i in range(12)]
    batch += [ev("203.0.113.66", 100.0, service="imap", attempts=3) for _ in range(4)]
    ds = eng.feed(batch)
    assert sorted(d.ip for d in ds) == sorted({"198.51.100.66", "203.0.113.66"} if maxretry <= 12
                                              else {"203.0.113.66"})
    assert all("recidive" not in d.reason for d in ds)


def _ban_in_child(d: str, i: int) -> None:
    p = Persist(Path(d))
    p.merge_bans({f"198.51.100.{i}": Ban(f"198.51.100.{i}", 1.0, None, f"r{i}", "cli")}, set())


def test_merge_on_write_keeps_every_concurrent_writer(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_ban_in_child, args=(str(tmp_path), i)) for i in range(1, 21)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    bans = {b.ip: b for b in Persist(tmp_path).load_bans()}
    assert set(bans) == {f"198.51.100.{i}" for i in range(1, 21)}
    assert bans["198.51.100.7"].reason == "r7"


def test_a_failed_atomic_write_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "bans.json"
    os.mkdir(target)  # os.replace onto a directory fails after the temp file was written
    with pytest.raises(OSError):
        atomic_write(target, b"{}")
    assert [p.name for p in tmp_path.iterdir()] == ["bans.json"]


def test_state_dir_errors_are_one_line(tmp_path: Path) -> None:
    p = Persist(tmp_path)
    os.mkdir(p.bans_path)
    with pytest.raises(StateDirError) as e:
        p.save_bans([Ban("203.0.113.1", 1.0, None, "", "cli")])
    assert "\n" not in str(e.value) and "Errno" not in str(e.value) and "bans.json" in str(e.value)


def test_void_marks_a_written_ahead_record(tmp_path: Path) -> None:
    p = Persist(tmp_path)
    rec = p.audit("ban", "203.0.113.1", origin="cli")
    assert p.void(rec, "the firewall refused: x")
    recs = p.read_audit()
    assert recs[-1]["action"] == "void" and recs[-1]["voids"] == rec["id"]


def test_nat64_is_never_widened() -> None:
    assert ban_entry("64:ff9b::c633:6405").entry == "64:ff9b::c633:6405/128"
    assert ban_entry("64:ff9b:1::7").entry == "64:ff9b:1::7/128"
    assert ban_entry("2001:db8::7").entry == "2001:db8::/64"
    assert ban_entry("64:ff9b::c633:6400/120", allow_net=True).entry == "64:ff9b::c633:6400/120"


@pytest.mark.parametrize("text", ["\u0663m", "\u0661\u0660", "\uff15s"])
def test_unicode_digits_are_not_numbers(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text, "ttl")
    with pytest.raises(ValueError):
        parse_burst(text)
    with pytest.raises(ValueError):
        Rate.parse(f"{text}/second")


def test_address_errors_say_what_the_input_is() -> None:
    with pytest.raises(AddressError) as e:
        parse_target("010.0.0.1")
    assert "leading zero" in str(e.value) and "hostname" not in str(e.value)
    with pytest.raises(AddressError) as e:
        parse_target("a" * 5000)
    assert len(str(e.value)) < 200


@pytest.mark.parametrize("data, words", [
    ({"policy": {"findtime": 1e400}}, ["findtime"]),
    ({"policy": {"findtime": "99999999999w"}}, ["findtime"]),
    ({"policy": {"bantime": "30d"}}, ["bantime", "2147483"]),
    ({"policy": {"recidive_max": "4w"}}, ["recidive_max"]),
    ({"state_dir": ""}, ["state_dir"]),
    ({"state_dir": 5}, ["state_dir"]),
    ({"state_dir": "relative/dir"}, ["state_dir"]),
])
def test_config_limits(data: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        from_dict(data)
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value)


def test_numbers_as_strings_are_the_same_for_every_key() -> None:
    cfg = from_dict({"policy": {"maxretry": "4", "findtime": "600", "bantime": "3600", "user_ips": "3",
                                "recidive_factor": "2", "history_max": "500"},
                     "limits": {"110": {"mode": "global", "rate": "5/second", "burst": "7"}}})
    p = cfg.policy
    assert (p.maxretry, p.findtime, p.bantime, p.user_ips, p.recidive_factor, p.history_max) == \
        (4, 600, 3600, 3, 2.0, 500)
    assert cfg.limit_for(110).burst == 7


@pytest.mark.parametrize("ch", ["\u2028", "\u2029", "\u0085", "\u200e", "\u200f", "\u061c", "\u202e",
                                "\u2066", "\x1b", "\x9b", "\x7f"])
def test_separators_and_bidi_are_escaped(ch: str) -> None:
    assert ch not in clean(f"a{ch}b")
    buf = io.StringIO()
    SafeStream(buf, 0).write(f"reason a{ch}b\nnext\n")
    assert ch not in buf.getvalue() and buf.getvalue().count("\n") == 2


def test_safe_stream_caps_long_error_lines() -> None:
    buf = io.StringIO()
    SafeStream(buf, 100).write("popwatch: " + "x" * 5000 + "\n")
    assert len(buf.getvalue()) < 130


def test_watch_exempt_only_while_a_watch_holds_the_lock(tmp_path: Path) -> None:
    from popwatch.persist import watch_exempt

    p = Persist(tmp_path)
    p.lock()
    p.publish_exempt(["198.51.100.44"])
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    c = ctx.Process(target=lambda: q.put(watch_exempt(tmp_path)))
    c.start()
    c.join(10)
    assert q.get(timeout=5) == ["198.51.100.44"]
    p.unlock()
    assert watch_exempt(tmp_path) == []


def test_headless_watch_says_once_what_it_cannot_do(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-m", "popwatch", "--backend", "none", "--state-dir", str(tmp_path / "s"),
                        "watch", "--no-tui", "--auto-ban", "--log", str(tmp_path / "missing.log"), "--events", "-",
                        "--duration", "2.5"], capture_output=True, text=True, timeout=60, check=False,
                       env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})
    assert r.returncode == 0, r.stderr
    warn = [l for l in r.stderr.splitlines() if "warning:" in l]
    assert sum("missing.log" in l and "cannot read" in l for l in warn) == 1, r.stderr
    assert sum("auto-ban is on but cannot act" in l for l in warn) == 1, r.stderr
    events = [json.loads(l) for l in r.stdout.splitlines()]
    kinds = [e["message"] for e in events if e.get("kind") == "warning"]
    assert any("missing.log" in m for m in kinds) and any("auto-ban" in m for m in kinds)


def test_auto_ban_does_not_ban_a_banned_64_again(tmp_path: Path) -> None:
    import time as _time

    from popwatch.firewall.sim import SimFirewall
    from popwatch.model import RawLine
    from popwatch.monitor import Monitor
    from popwatch.parse import Parser
    from popwatch.store import StateStore

    class KeyedSim(SimFirewall):  # the kernel backends' mapping: an IPv6 ban is its /64
        def ban_key(self, ip: str, *, net: bool | None = None) -> str:
            return ban_entry(ip, allow_net=bool(net)).entry

    pol = PolicyConfig()
    pol.maxretry, pol.auto_ban = 1, True
    mon = Monitor(store=StateStore(clock=_time.time), parser=Parser(now=_time.time), firewall=KeyedSim(),
                  persist=Persist(tmp_path), policy=pol)
    line = "Dec  7 05:00:00 mail sshd[7]: Failed password for root from {} port 22 ssh2"
    mon.ingest([RawLine(line.format("2001:db8:5::1"), "t", 1), RawLine(line.format("2001:db8:5::2"), "t", 2)])
    mon.ingest([RawLine(line.format("2001:db8:5::3"), "t", 3)])
    bans = [r for r in mon.persist.read_audit() if r["action"] == "ban"]
    assert [r["target"] for r in bans] == ["2001:db8:5::1"]


def _keyed_sim():  # type: ignore[no-untyped-def]
    """The sim with the kernel backends' ban entries (an IPv6 address is banned as its /64)."""
    from popwatch.firewall.sim import SimFirewall

    class KeyedSim(SimFirewall):
        def ban_key(self, ip: str, *, net: bool | None = None) -> str:
            return ban_entry(ip, allow_net=bool(net)).entry
    return KeyedSim()


@pytest.mark.parametrize("net,inside", [("198.51.100.0/24", "198.51.100.7"),
                                        ("2001:db8:7::/48", "2001:db8:7:1::5")])
def test_auto_ban_does_not_ban_an_address_inside_a_banned_network(tmp_path: Path, net: str,
                                                                   inside: str) -> None:
    import time as _time

    from popwatch.actions import run_sync
    from popwatch.model import RawLine
    from popwatch.monitor import Monitor
    from popwatch.parse import Parser
    from popwatch.store import StateStore

    pol = PolicyConfig()
    pol.maxretry, pol.auto_ban = 1, True
    mon = Monitor(store=StateStore(clock=_time.time), parser=Parser(now=_time.time), firewall=_keyed_sim(),
                  persist=Persist(tmp_path), policy=pol)
    run_sync(mon.actions.ban(net, ttl=3600, origin="cli", allow_net=True))
    line = "Dec  7 05:00:00 mail sshd[7]: Failed password for root from {} port 22 ssh2"
    mon.ingest([RawLine(line.format(inside), "t", 1)])
    assert [r["target"] for r in mon.persist.read_audit() if r["action"] == "ban"] == [net]
    assert set(mon.store.bans) == {net}
    # the campaign path asks the same question; a narrower network inside it is covered too
    assert mon.actions.banned_or_pending(inside)
    if ":" not in net:
        assert mon.actions.banned_or_pending("198.51.100.0/25")
        assert not mon.actions.banned_or_pending("198.51.101.7")
        run_sync(mon.actions.unban(net, origin="cli"))
        assert not mon.actions.banned_or_pending(inside)


def test_auto_ban_skips_an_address_whose_network_ban_is_in_flight(tmp_path: Path) -> None:
    import asyncio
    import time as _time

    from popwatch.actions import run_sync
    from popwatch.autoban import Decision
    from popwatch.monitor import Monitor
    from popwatch.parse import Parser
    from popwatch.store import StateStore

    pol = PolicyConfig()
    pol.maxretry, pol.auto_ban = 1, True
    mon = Monitor(store=StateStore(clock=_time.time), parser=Parser(now=_time.time), firewall=_keyed_sim(),
                  persist=Persist(tmp_path), policy=pol)
    now = _time.time()

    async def in_flight() -> bool:  # a campaign's network ban handed to the firewall thread
        mon.actions.fire([Decision("203.0.113.0/24", 600, "campaign", {}, now, 0.0, origin="campaign")])
        held = mon.actions.banned_or_pending("203.0.113.9")
        while mon.actions.pending:
            await asyncio.sleep(0.01)
        return held
    assert asyncio.run(in_flight())
    assert mon.actions.banned_or_pending("203.0.113.9")
    run_sync(mon.actions.unban("203.0.113.0/24", origin="cli"))
    # one batch holding a network and an address inside it: the network only
    mon.actions.fire([Decision("203.0.113.9", 600, "auto", {}, now, 0.0, origin="auto"),
                      Decision("203.0.113.0/24", 600, "campaign", {}, now, 0.0, origin="campaign")])
    assert [r["target"] for r in mon.persist.read_audit() if r["action"] == "ban"] == ["203.0.113.0/24"] * 2


def _member_sim():  # type: ignore[no-untyped-def]
    """The sim keeping an IPv4 network ban as its addresses, like ipset's hash:ip and nftables' ban4."""
    import ipaddress

    sim = _keyed_sim()
    plain = sim.bans

    def bans() -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for k, left in plain().items():
            if "/" in k and ":" not in k:
                out |= {str(a): left for a in ipaddress.IPv4Network(k)}
            else:
                out[k] = left
        return out
    sim.bans = bans  # type: ignore[method-assign]
    return sim


def test_kernel_sync_keeps_an_ipv4_network_ban_one_ban(tmp_path: Path) -> None:
    """A network banned by the CLI while watch runs is adopted as that network, not as its 256
    addresses, and stays while the kernel holds its addresses; an unban in the kernel drops it."""
    import time as _time

    from popwatch.monitor import Monitor
    from popwatch.parse import Parser
    from popwatch.store import StateStore

    mon = Monitor(store=StateStore(clock=_time.time), parser=Parser(now=_time.time), firewall=_member_sim(),
                  persist=Persist(tmp_path), policy=PolicyConfig())
    mon.reconcile()
    net = "198.51.100.0/24"
    Persist(tmp_path).merge_bans({net: Ban(net, _time.time() - 5, _time.time() + 3600, "cli net", "cli")}, set())
    mon.firewall.ban(net, 3600)
    for _ in range(2):
        mon.reconciler.sync_from_kernel(mon.firewall.bans(), _time.time())
        assert set(mon.store.bans) == {net} and mon.store.bans[net].origin == "cli"
    mon.firewall.unban(net)
    mon.reconciler.sync_from_kernel(mon.firewall.bans(), _time.time())
    assert mon.store.bans == {}


def test_start_adopts_an_ipv4_network_ban_known_only_from_the_audit_log(tmp_path: Path) -> None:
    """Killed between the kernel change and bans.json: the audit record names the network."""
    import time as _time

    from popwatch.monitor import Monitor
    from popwatch.parse import Parser
    from popwatch.store import StateStore

    net = "203.0.113.0/24"
    Persist(tmp_path).audit("ban", net, origin="cli", reason="cli net", ttl=3600)
    sim = _member_sim()
    sim.ban(net, 3600)
    mon = Monitor(store=StateStore(clock=_time.time), parser=Parser(now=_time.time), firewall=sim,
                  persist=Persist(tmp_path), policy=PolicyConfig())
    mon.reconcile()
    assert set(mon.store.bans) == {net} and mon.store.bans[net].origin == "cli"
    assert {b.ip for b in Persist(tmp_path).load_bans()} == {net}


def test_mass_ban_writes_its_records_ahead_with_one_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The TUI's mass ban (B, x/X): every write-ahead record (a refusal's too) in one fsync, on
    disk before the first kernel change; a failed entry gets its void record (one more fsync)."""
    import time as _time

    from popwatch.actions import run_sync
    from popwatch.firewall.base import FirewallError
    from popwatch.monitor import Monitor
    from popwatch.parse import Parser
    from popwatch.store import StateStore

    sim = _keyed_sim()
    audit_path = tmp_path / "audit.jsonl"
    plain_ban = sim.ban

    def ban(ip: str, ttl: float | None = None, *, net: bool | None = None) -> None:
        on_disk = [json.loads(l)["target"] for l in audit_path.read_text().splitlines()]
        assert len(on_disk) >= 21 and ip in on_disk  # every record is there before any kernel change
        if ip == "198.51.100.13":
            raise FirewallError("set full")
        plain_ban(ip, ttl, net=net)
    sim.ban = ban  # type: ignore[method-assign]
    mon = Monitor(store=StateStore(clock=_time.time), parser=Parser(now=_time.time), firewall=sim,
                  persist=Persist(tmp_path), policy=PolicyConfig())
    audit_fsyncs = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("audit.jsonl"):
            audit_fsyncs.append(fd)
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    ips = [f"198.51.100.{i}" for i in range(1, 21)] + ["127.0.0.1", "not an address"]
    done, refused = run_sync(mon.actions.ban_many(ips, ttl=600, reason="mass", origin="key"))
    assert len(done) == 19 and set(refused) == {"198.51.100.13", "127.0.0.1", "not an address"}
    assert len(audit_fsyncs) == 2  # the records ahead, then the one void
    recs = mon.persist.read_audit()
    void = [r for r in recs if r["action"] == "void"]
    assert [r["target"] for r in void] == ["198.51.100.13"]
    assert next(r for r in recs if r["id"] == void[0]["voids"])["target"] == "198.51.100.13"
    assert any(r["target"] == "127.0.0.1" and r["ok"] is False for r in recs)
    assert set(mon.store.bans) == set(ips[:20]) - {"198.51.100.13"}
    assert {b.ip for b in mon.persist.load_bans()} == set(mon.store.bans)
    assert len(mon.persist.load_history()) == 19
