"""Campaigns: distributed (many sources, one user) and slow (one source, long window) attacks,
the response (per-source, per-network, slow bans), known-good addresses, bounded memory."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from popwatch.campaigns import (
    CampaignConfig,
    CampaignTracker,
    LoginHistory,
    from_table,
    nets_of,
)
from popwatch.config import ConfigError, load
from popwatch.model import PortLimit
from popwatch.firewall.sim import SimFirewall
from popwatch.model import RawLine
from popwatch.monitor import Monitor
from popwatch.parse import Parser
from popwatch.persist import Persist
from popwatch.policy import Protector
from popwatch.store import StateStore
from tests.helpers import Clock, ev

T0 = 1_800_000_000.0


def tracker(**kw) -> CampaignTracker:
    prot = kw.pop("protected", lambda ip: None)
    return CampaignTracker(CampaignConfig(**kw), protected=prot, enabled=True)


def test_nets_of_both_families():
    assert nets_of("203.0.113.77") == ("203.0.113.0/24", "203.0.0.0/16")
    assert nets_of("2001:db8:7:1::5") == ("2001:db8:7:1::/64", "2001:db8:7::/48")


def test_distributed_attack_on_one_user_becomes_a_campaign_and_its_network_is_banned():
    tr = tracker(user_sources=5, net_sources=4)
    out = []
    # the owner: a typo, then a login, from a known address
    out += tr.feed([ev("198.51.100.7", T0, "pop3", user="test"),
                    ev("198.51.100.7", T0 + 1, "pop3", kind="success", user="test")])
    t = T0 + 10
    for i in range(60):
        out += tr.feed([ev(f"203.0.113.{i + 1}", t, "pop3", user="test")])
        t += 1
    starts = [r for w, r in tr.drain() if w == "start"]
    assert len(starts) == 1 and starts[0].target == "test@pop3"
    assert "addresses in" in starts[0].score and "guesses/min" in starts[0].score
    ips = [d.ip for d in out]
    # the 5 addresses that made it a campaign are the owner's typo (never banned) and 4 of one
    # /24: the /24 is banned at once, and then neither they nor any later source needs its own ban
    assert ips == ["203.0.113.0/24"]
    assert all(d.origin == "campaign" and d.reason.startswith("campaign: test@pop3: ") for d in out)
    # the owner failing again is still never banned by the campaign
    assert tr.feed([ev("198.51.100.7", t + 1, "pop3", user="test")]) == []


def test_ipv6_sources_in_different_48s_are_banned_one_by_one_after_the_start():
    tr = tracker(user_sources=5)
    out = []
    for i in range(40):
        out += tr.feed([ev(f"2001:db8:{i + 10:x}::5", T0 + i, "pop3", user="test")])
    assert [d.ip for d in out] == [f"2001:db8:{i + 10:x}::5" for i in range(40)]
    assert not any("/" in d.ip for d in out)
    # each source banned once only
    assert tr.feed([ev("2001:db8:a::5", T0 + 50, "pop3", user="test")]) == []


def test_network_holding_a_known_good_or_protected_address_is_never_banned():
    prot = lambda ip: "allow-list" if ip.startswith("203.0.113.200") else None
    tr = tracker(user_sources=3, net_sources=3, protected=prot)
    tr.feed([ev("198.51.100.9", T0, "imap", kind="success", user="bob")])
    out = []
    for i in range(10):
        out += tr.feed([ev(f"198.51.100.{i + 20}", T0 + 1 + i, "imap", user="test")])
    assert "198.51.100.0/24" not in [d.ip for d in out]
    row = tr.detail("user:test")
    assert row is not None and any("logged in successfully" in a[2] for a in row.alerts)
    assert len(out) == 10  # each source banned on its own instead
    tr2 = CampaignTracker(CampaignConfig(user_sources=3, net_sources=3),
                          protected=lambda ip: "protected" if ip == "203.0.113.0/24" else None, enabled=True)
    out = []
    for i in range(10):
        out += tr2.feed([ev(f"203.0.113.{i + 20}", T0 + 1 + i, "imap", user="test")])
    assert "203.0.113.0/24" not in [d.ip for d in out]


def test_campaign_detection_without_auto_ban_decides_nothing():
    tr = CampaignTracker(CampaignConfig(user_sources=3), enabled=False)
    out = []
    for i in range(10):
        out += tr.feed([ev(f"203.0.113.{i + 1}", T0 + i, "pop3", user="test")])
    assert out == [] and tr.active() == 1
    assert tr.rows()[0].sources == 10 and tr.rows()[0].state == "active"


def test_slow_attacker_banned_at_its_long_window_threshold():
    tr = tracker(slow_window=3600.0, slow_maxretry=7)
    out = []
    n = 0
    for i in range(10):
        d = tr.feed([ev("203.0.113.99", T0 + 30 * i, "pop3", user=f"u{i}")])
        n += 1
        if d:
            out += d
            break
    assert n == 7 and out[0].ip == "203.0.113.99" and out[0].detail["rule"] == "campaign_slow"
    assert "7 failed attempts within 1h (slow)" in out[0].reason


def test_slow_known_good_address_is_not_banned():
    tr = tracker(slow_window=3600.0, slow_maxretry=3)
    tr.feed([ev("203.0.113.50", T0, "pop3", kind="success", user="alice")])
    out = []
    for i in range(6):
        out += tr.feed([ev("203.0.113.50", T0 + 60 * i, "pop3", user="alice")])
    assert out == []


def test_campaign_ends_after_the_window_and_a_compromise_is_flagged():
    tr = tracker(user_sources=3, window=600.0)
    for i in range(5):
        tr.feed([ev(f"203.0.113.{i + 1}", T0 + i, "pop3", user="test")])
    tr.drain()
    tr.feed([ev("203.0.113.2", T0 + 10, "pop3", kind="success", user="test")])
    tr.feed([ev("192.0.2.77", T0 + 11, "pop3", kind="success", user="test")])
    alerts = [r for w, r in tr.drain() if w == "alert"]
    assert len(alerts) == 2
    assert "source of this campaign" in alerts[0].alerts[-1][2]
    assert "never seen before" in alerts[1].alerts[-1][2]
    tr.sweep(T0 + 700)
    ends = [r for w, r in tr.drain() if w == "end"]
    assert len(ends) == 1 and ends[0].state == "ended"


def test_memory_is_bounded_with_100k_distinct_addresses():
    tr = CampaignTracker(CampaignConfig(user_sources=5), enabled=False, max_targets=500,
                         max_entries=20_000, max_slow=30_000)
    for i in range(100_000):
        ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        tr.feed([ev(ip, T0 + i * 0.01, "pop3", user=f"user{i % 3000}")])
        assert len(tr.targets) <= 500 and tr.entries <= 20_001 and len(tr.slow) <= 30_000
    assert tr.entries == sum(len(t.sources) for t in tr.targets.values())
    # fewer user names than the cap: they are kept, and become campaigns
    for i in range(20_000):
        tr.feed([ev(f"10.200.{(i >> 8) & 255}.{i & 255}", T0 + 1000 + i * 0.01, "pop3", user=f"v{i % 100}")])
    assert len(tr.rows(k=1000)) >= 90 and tr.entries <= 20_001


def test_login_history_bounds_and_round_trip(tmp_path):
    h = LoginHistory(max_users=10, per_user=3)
    for u in range(20):
        for i in range(5):
            h.add(f"u{u}", f"192.0.2.{i}", T0 + u)
    assert len(h.by_user) <= 10 and all(len(d) <= 3 for d in h.by_user.values())
    assert sum(h.good.values()) == sum(len(d) for d in h.by_user.values())
    p = Persist(tmp_path / "st")
    p.save_logins(h.to_json())
    h2 = LoginHistory()
    h2.load(p.load_logins())
    assert h2.by_user == h.by_user
    (tmp_path / "st" / "logins.json").write_text("{garbage")
    assert p.load_logins() is None and any("corrupt" in x for x in p.problems)


def test_campaign_config_section(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[campaign]\nauto_ban = true\nwindow = "10m"\nuser_sources = 8\nslow_maxretry = 0\n')
    c = load(p, required=True).campaign
    assert (c.auto_ban, c.window, c.user_sources, c.slow_maxretry) == (True, 600.0, 8, 0)
    with pytest.raises(ConfigError, match="campaign.user_sources"):
        from_table({"user_sources": 1})
    with pytest.raises(ConfigError, match="unknown key campaign.'nope'"):
        from_table({"nope": 1})


def _ssh(t: float, ip: str, user: str, ok: bool = False) -> RawLine:
    import datetime as dt
    ts = dt.datetime.fromtimestamp(t, dt.UTC).isoformat()
    msg = (f"Accepted password for {user} from {ip} port 4711 ssh2" if ok
           else f"Failed password for {user} from {ip} port 4711 ssh2")
    return RawLine(f"{ts} mail1 sshd[{int(t) % 30000}]: {msg}", "auth.log")


def test_monitor_bans_through_its_one_path_with_origin_campaign(tmp_path):
    clock = Clock(T0)
    sim = SimFirewall(clock=clock)
    out = io.StringIO()
    mon = Monitor(store=StateStore(clock=clock), parser=Parser(now=clock), firewall=sim,
                  protector=Protector(allow=["192.0.2.0/24"]), persist=Persist(tmp_path / "state"),
                  mono=clock, events_out=out, campaign=CampaignConfig(auto_ban=True, user_sources=5))
    mon.start_firewall([PortLimit(22)])
    mon.ingest([_ssh(T0, "198.51.100.7", "test"), _ssh(T0 + 1, "198.51.100.7", "test", ok=True)])
    for i in range(12):
        clock.t = T0 + 10 + i
        mon.ingest([_ssh(clock.t, f"203.0.113.{i + 1}", "test")])
    bans = mon.store.bans
    assert "203.0.113.0/24" in bans and bans["203.0.113.0/24"].origin == "campaign"
    assert bans["203.0.113.0/24"].reason.startswith("campaign: test@ssh: ")
    mon.ingest([_ssh(clock.t + 1, "2001:db8:77::1", "test")])  # a new source elsewhere: its own ban
    assert bans["2001:db8:77::1"].origin == "campaign" and "never logged in as 'test'" in bans["2001:db8:77::1"].reason
    assert "198.51.100.7" not in bans
    assert sim.bans().keys() >= {"203.0.113.0/24", "2001:db8:77::1"}
    lines = [json.loads(l) for l in out.getvalue().splitlines()]
    camp = [l for l in lines if l.get("type") == "campaign"]
    assert camp and camp[0]["event"] == "start" and camp[0]["target"] == "test@ssh"
    mon.flush()
    saved = json.loads((tmp_path / "state" / "logins.json").read_text())
    assert saved["logins"]["test"].keys() == {"198.51.100.7"}
    # a restart knows the owner's address: it is known-good from the start
    mon2 = Monitor(store=StateStore(clock=clock), parser=Parser(now=clock), firewall=SimFirewall(clock=clock),
                   persist=Persist(tmp_path / "state"), mono=clock, campaign=CampaignConfig(auto_ban=True))
    assert mon2.campaigns.known_good("198.51.100.7")


def test_what_if_replays_the_campaign_response():
    from popwatch.config import PolicyConfig
    from popwatch.whatif import what_if

    evs = [ev("198.51.100.7", T0, "pop3", user="test"), ev("198.51.100.7", T0 + 1, "pop3", kind="success", user="test")]
    for rnd in range(2):
        for i in range(60):
            evs.append(ev(f"203.0.113.{i + 1}", T0 + 10 + rnd * 60 + i, "pop3", user="test"))
    pol = PolicyConfig()
    off = what_if(evs, pol, "maxretry=5", campaign=CampaignConfig(user_sources=5))
    assert not any(b.rule.startswith("campaign") for b in off.banned)
    on = what_if(evs, pol, "maxretry=5,campaign=on", campaign=CampaignConfig(user_sources=5))
    rules = {b.ip: b.rule for b in on.banned}
    assert rules.get("203.0.113.0/24") == "campaign_net" and "198.51.100.7" not in rules
    assert "campaign=on" in on.proposal and "116 failed attempts would not have reached" in on.note
    # the config's auto_ban turns it on without the proposal
    cfg_on = what_if(evs, pol, "maxretry=5", campaign=CampaignConfig(auto_ban=True, user_sources=5))
    assert {b.ip for b in cfg_on.banned} == set(rules)


def test_prometheus_and_crowdsec_see_campaigns():
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from popwatch.crowdsec import CrowdSecBridge, CrowdSecConfig
    from popwatch.metrics import Metrics

    clock = Clock(T0)
    mon = Monitor(store=StateStore(clock=clock), parser=Parser(now=clock), firewall=SimFirewall(clock=clock),
                  mono=clock, campaign=CampaignConfig(auto_ban=True, user_sources=3))
    mon.start_firewall([PortLimit(22)])
    bridge = CrowdSecBridge(CrowdSecConfig(machine_id="m", password="p"), mon, hostname="mail1")
    mon.on_action.append(bridge.on_action)
    m = Metrics(mon, process=False)
    for i in range(6):
        clock.t = T0 + i
        mon.ingest([_ssh(clock.t, f"203.0.113.{i + 1}", "test")])
    vals = {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(generate_latest(m.registry).decode()) for s in fam.samples}
    assert vals[("popwatch_campaigns_active", (("kind", "user"),))] == 1
    assert vals[("popwatch_campaign_events_total", (("event", "start"),))] == 1
    assert vals[("popwatch_bans_total", (("origin", "campaign"),))] >= 2
    queued = [q for q in bridge.outbox if q[0] == "ban"]
    assert queued and {q[4] for q in queued} == {"campaign"}
    net = [q for q in queued if q[1] == "203.0.113.0/24"]
    alert = bridge.alert(net[0][1], net[0][2], net[0][3], net[0][4])
    assert alert["scenario"] == "popwatch/campaign" and alert["decisions"][0]["scope"] == "Range"
    assert alert["message"].startswith("popwatch on mail1: campaign: test@ssh: ")


def test_scan_what_if_replays_a_log_under_the_campaign_policy(tmp_path):
    import subprocess
    import sys

    log = tmp_path / "auth.log"
    log.write_text("\n".join(_ssh(T0 + i, f"203.0.113.{10 + i}", "test").text for i in range(12)) + "\n")
    cfg = tmp_path / "pw.toml"
    cfg.write_text('[campaign]\nuser_sources = 5\n')
    r = subprocess.run([sys.executable, "-m", "popwatch", "--config", str(cfg), "scan", "--what-if",
                        "maxretry=5,campaign=on", str(log)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "campaign=on" in r.stdout.splitlines()[0]
    assert "203.0.113.0/24" in r.stdout and "[campaign_net]" in r.stdout
    assert "campaign response: 1 bans, 7 failed attempts would not have reached the daemon" in r.stdout
    off = subprocess.run([sys.executable, "-m", "popwatch", "--config", str(cfg), "scan", "--what-if",
                          "maxretry=5", str(log)], capture_output=True, text=True, timeout=60)
    assert "campaign" not in off.stdout and "0 of 12 addresses would have been banned" in off.stdout


def test_one_huge_campaign_keeps_its_newest_sources_within_the_entry_cap():
    tr = CampaignTracker(CampaignConfig(user_sources=5, window=86400.0), enabled=False, max_entries=4000)
    for i in range(10_000):
        tr.feed([ev(f"10.9.{i >> 8 & 255}.{i & 255}", T0 + i, "pop3", user="test")])
    t = tr.targets["test"]
    assert t.state == "active" and len(t.sources) == 1000 and tr.entries == 1000
    assert sum(t.narrow.values()) == 1000 and "10.9.39.0/24" in t.narrow and "10.9.0.0/24" not in t.narrow


def test_login_history_indexes_the_networks_of_known_good_addresses():
    h = LoginHistory(max_users=2, per_user=1)
    h.add("a", "203.0.113.5", T0)
    h.add("b", "2001:db8:1:2::3", T0)
    assert h.good_nets == {"203.0.113.0/24": 1, "203.0.0.0/16": 1, "2001:db8:1:2::/64": 1, "2001:db8:1::/48": 1}
    h.add("a", "203.0.113.6", T0 + 1)  # per_user 1: .5 is forgotten, .6 takes its place
    h.add("c", "198.51.100.1", T0 + 2)  # max_users 2: the oldest user goes
    assert sum(h.good_nets.get(k, 0) for k in ("203.0.113.0/24",)) == 1
    assert set(h.good) == set().union(*[set(d) for d in h.by_user.values()])
    assert all(v > 0 for v in h.good_nets.values())


def _summary(t: dt.datetime, user: str, ip: str, n: int) -> str:
    return (f"{t.isoformat()} mx dovecot: imap-login: Disconnected (auth failed, 1 attempts in 2 secs): "
            f"user=<{user}>, method=PLAIN, rip={ip}, lip=192.0.2.1, session=<s{n}>")


def test_a_restart_rebuilds_campaigns_from_the_logs_with_backfill(tmp_path: Path) -> None:
    """Campaigns are not saved; ``watch --backfill`` rebuilds them, each line at its own time."""
    now = dt.datetime.now(dt.timezone.utc)
    lines = []
    # three hours ago, outside the backfill: bob's campaign must not come back
    for i in range(1, 31):
        lines.append(_summary(now - dt.timedelta(hours=3) + dt.timedelta(seconds=20 * i), "bob",
                              f"203.0.113.{i}", i))
    # the last 50 minutes: alice tried from 30 addresses, 2 guesses each
    for i in range(60):
        lines.append(_summary(now - dt.timedelta(minutes=50) + dt.timedelta(seconds=20 * i), "alice",
                              f"198.51.100.{i // 2 + 1}", 100 + i))
    log = tmp_path / "mail.log"
    log.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    root = Path(__file__).resolve().parents[2]

    def watch(*extra: str) -> list[dict]:
        out = tmp_path / f"events{len(extra)}.jsonl"
        r = subprocess.run([sys.executable, "-m", "popwatch", "watch", "--no-tui", "--backend", "sim",
                            "--log", str(log), "--duration", "2", "--state-dir", str(tmp_path / "state"),
                            "--events", str(out), *extra], cwd=root, env=env, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        return [e for l in out.read_text().splitlines() if (e := json.loads(l)).get("type") == "campaign"]

    assert watch() == []  # a plain start reads from the end of the log: nothing to rebuild from
    camps = watch("--backfill", "1h")
    starts = [c for c in camps if c["event"] == "start"]
    assert [c["target"] for c in starts] == ["alice@imap"]
    assert starts[0]["sources"] >= 10
    first = dt.datetime.fromisoformat(starts[0]["first"])
    assert now - dt.timedelta(minutes=51) <= first <= now - dt.timedelta(minutes=49)
    assert not any("bob" in c["target"] for c in camps)
