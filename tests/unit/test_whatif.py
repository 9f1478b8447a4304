"""What-if replays: proposed maxretry/findtime and per-port limits over recent events."""

from __future__ import annotations

from importlib import resources

import pytest

from popwatch.config import PolicyConfig
from popwatch.model import PortLimit, Rate
from popwatch.model import AuthEvent, RawLine
from popwatch.parse import Parser
from popwatch.whatif import EventWindow, parse_proposal, what_if, what_if_limit, what_if_policy

T0 = 1_795_000_000.0
SAMPLES = resources.files("popwatch") / "data" / "samples"


def fail(ip, ts, n=1, svc="pop3", user="root"):
    return AuthEvent(T0 + ts, svc, "auth_failed", ip, user, n)


def ok(ip, ts, svc="pop3"):
    return AuthEvent(T0 + ts, svc, "success", ip, "alice", 1)


EVENTS = ([fail("203.0.113.1", i) for i in range(10)]            # fast attacker: 10 in 10 s
          + [fail("203.0.113.2", i * 120) for i in range(6)]     # slow one: every 2 minutes
          # a user with a stale password on his phone: logged in before, fails now
          + [ok("198.51.100.7", -100), fail("198.51.100.7", 0), fail("198.51.100.7", 5), fail("198.51.100.7", 9)]
          # a user who mistyped three times, then got in
          + [fail("198.51.100.8", 0), fail("198.51.100.8", 1), fail("198.51.100.8", 2), ok("198.51.100.8", 3)])


def test_policy_replay_says_who_after_how_many_and_logged_in_hits():
    r = what_if_policy(EVENTS, PolicyConfig(), maxretry=3, findtime=600, success_maxretry=50)
    got = {b.ip: b for b in r.banned}
    # 198.51.100.7 had logged in before: higher threshold; 198.51.100.8 only logged in after
    assert set(got) == {"203.0.113.1", "203.0.113.2", "198.51.100.8"}
    assert got["203.0.113.1"].attempts == 3 and got["203.0.113.1"].total == 10
    assert got["203.0.113.1"].at == T0 + 2
    assert r.ips == 4 and r.success_ips == 2 and r.success_hit == ["198.51.100.8"]
    # the stale-password user is only spared by the grace; a lower grace threshold hits it
    r = what_if_policy(EVENTS, PolicyConfig(), maxretry=3, findtime=600, success_maxretry=3)
    assert r.success_hit == ["198.51.100.7", "198.51.100.8"]
    assert any("LOGGED IN" in line for line in r.lines())


def test_shorter_findtime_spares_the_slow_attacker():
    r = what_if(EVENTS, PolicyConfig(), "maxretry=3,findtime=2m")
    assert {b.ip for b in r.banned} == {"203.0.113.1", "198.51.100.8"}
    assert r.proposal == "maxretry=3,findtime=2m"


def test_banned_ip_attempts_after_the_ban_do_not_rebans():
    r = what_if_policy([fail("203.0.113.1", i) for i in range(100)], PolicyConfig(), maxretry=5,
                       findtime=600, bantime=3600)
    assert len(r.banned) == 1 and r.banned[0].total == 100


def test_protected_addresses_are_not_reported_banned():
    r = what_if_policy(EVENTS, PolicyConfig(), maxretry=1,
                       protected=lambda ip: "allow" if ip.startswith("203.0.113.") else None)
    assert r.banned and not any(b.ip.startswith("203.") for b in r.banned)


def test_limit_replay_global_vs_per_source():
    evs = [fail("203.0.113.1", i * 0.1) for i in range(50)] + [ok("198.51.100.7", 2.05)]
    g = what_if_limit(evs, PortLimit(110, "global", Rate.parse("1/second"), 2))
    assert g.dropped["203.0.113.1"] > 40 and "198.51.100.7" in g.success_hit
    p = what_if_limit(evs, PortLimit(110, "per-source", Rate.parse("1/second"), 2))
    assert p.dropped["203.0.113.1"] > 40 and p.success_hit == [] and "198.51.100.7" not in p.dropped
    assert "approximation" in p.note


def test_parse_proposal_forms_and_errors():
    assert parse_proposal("maxretry=5,findtime=10m") == {"maxretry": 5, "findtime": 600.0}
    assert parse_proposal("port=110 rate=5/s burst=3 mode=per-source")["burst"] == 3
    for bad in ("", "maxretry", "maxretry=x", "color=red", "findtime=soon", "rate=1/s", "port=70000",
                "maxretry=0", "rate=0/s,port=110"):
        with pytest.raises(ValueError):
            parse_proposal(bad)


def test_window_is_bounded_in_time_and_count():
    w = EventWindow(window=900, max_events=100)
    w.add([fail("203.0.113.1", i) for i in range(50)])
    w.add([fail("203.0.113.1", 2000 + i) for i in range(80)])
    assert len(w) == 80   # the first 50 fell out of the 15-minute window
    w.add([fail("203.0.113.2", 2100 + i) for i in range(500)])
    assert len(w) == 100


def test_real_hydra_capture_replay():
    lines = (SAMPLES / "debian12-rsyslog-hydra-full" / "mail.log").read_text().splitlines()
    p = Parser(now=lambda: T0)
    evs = [e for e in (p.parse(RawLine(l, "mail.log", i)) for i, l in enumerate(lines, 1)) if e]
    r = what_if(evs, PolicyConfig(), "maxretry=5,findtime=10m")
    by = {b.ip: b for b in r.banned}
    assert "203.0.113.10" in by and by["203.0.113.10"].attempts >= 5
    # 203.0.113.10 also logged in as test at the end of the hydra run (found the password)
    assert by["203.0.113.10"].logged_in
