"""`popwatch demo --no-tui` runs anywhere, prints JSON events, exits 0; the scenario reacts to
bans and limits like a server would."""

from __future__ import annotations

import json
import subprocess
import sys

from popwatch.demo import DEMO_LIMITS
from popwatch.model import PortLimit, Rate
from popwatch.firewall.sim import SimFirewall
from popwatch.parse import Parser
from popwatch.model import RawLine
from popwatch.sources.replay import DemoClock, Scenario


def test_headless_demo_prints_json_events_and_exits_0():
    r = subprocess.run([sys.executable, "-m", "popwatch", "demo", "--no-tui", "--duration", "4", "--speed", "4"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(events) >= 5
    kinds = {e["kind"] for e in events}
    assert "success" in kinds and kinds & {"auth_failed", "invalid_user", "aborted"}
    # every failure and login names its address (scanner probes may not), and only
    # documentation addresses appear in the demo
    ips = [e["ip"] for e in events if e["kind"] != "probe"]
    assert all(ips)
    assert all(ip.startswith(("192.0.2.", "198.51.100.", "203.0.113.", "2001:db8:")) for ip in ips)


def scenario(limits=DEMO_LIMITS):
    clock = DemoClock(start=1_795_000_000.0, frozen=True)
    sim = SimFirewall(clock=clock)
    sim.install(list(limits))
    return Scenario(sim, clock, seed=7), sim, clock


def run(scen, clock, seconds):
    out = []
    for _ in range(seconds):
        clock.advance(1)
        out += scen.until(clock())
    return out


def test_demo_lines_are_real_daemon_lines_the_parser_understands():
    scen, sim, clock = scenario([PortLimit(p) for p in (22, 110, 143)])
    lines = run(scen, clock, 60)
    p = Parser(now=clock)
    events = [e for e in (p.parse(RawLine(l, "demo", i)) for i, l in enumerate(lines)) if e]
    assert {e.service for e in events} >= {"ssh", "pop3", "imap"}
    assert any("Aborted login: user=<root>" in e.line and e.ip == "203.0.113.104" for e in events)


def test_a_ban_silences_the_attacker_and_a_limit_drops_connections():
    scen, sim, clock = scenario()
    loud = next(a for a in scen.actors if a.ip == "203.0.113.66")
    run(scen, clock, 30)
    sim.ban("203.0.113.66")
    before = loud.accepted
    lines = run(scen, clock, 30)
    assert loud.accepted == before and not any("203.0.113.66" in l for l in lines)
    # the global 1/s rule on POP3 drops most of the flood; per-source lets the users through
    c0 = sim.counters()[110]
    users = [a for a in scen.actors if a.service == "pop3" and a.ip.startswith("192.0.2.")]
    ok0 = sum(a.accepted for a in users)
    att0 = sum(a.attempts for a in users)
    sim.unban("203.0.113.66")
    run(scen, clock, 300)
    glob_ok = (sum(a.accepted for a in users) - ok0) / max(1, sum(a.attempts for a in users) - att0)
    sim.set_limit(PortLimit(110, "per-source", Rate.parse("1/second"), 1))
    ok1, att1 = sum(a.accepted for a in users), sum(a.attempts for a in users)
    run(scen, clock, 300)
    per_ok = (sum(a.accepted for a in users) - ok1) / max(1, sum(a.attempts for a in users) - att1)
    assert sim.counters()[110].dropped > c0.dropped
    assert per_ok == 1.0 and glob_ok < 0.8
