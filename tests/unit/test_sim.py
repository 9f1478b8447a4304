"""The simulated firewall's token buckets (demo only; the kernel is tested in tests/netns)."""

from __future__ import annotations

from popwatch.model import PortLimit, Rate
from popwatch.firewall.sim import SimFirewall
from tests.helpers import Clock


def flood(sim, clock, srcs, port, seconds, per_second):
    got = {s: 0 for s in srcs}
    for i in range(int(seconds * per_second)):
        clock.t += 1 / per_second
        for s in srcs:
            got[s] += sim.connect(s, port)
    return got


def test_global_limit_is_one_bucket_for_everyone():
    c = Clock(0.0)
    sim = SimFirewall(clock=c)
    sim.install([PortLimit(110, "global", Rate.parse("1/second"), 1)])
    got = flood(sim, c, ["203.0.113.1", "203.0.113.2", "192.0.2.50"], 110, 60, 10)
    assert 58 <= sum(got.values()) <= 62  # ~1/s shared, however many sources
    cnt = sim.counters()[110]
    assert cnt.passed == sum(got.values()) and cnt.passed + cnt.dropped == 1800


def test_per_source_limit_gives_each_address_its_bucket():
    c = Clock(0.0)
    sim = SimFirewall(clock=c)
    sim.install([PortLimit(110, "per-source", Rate.parse("1/second"), 1)])
    got = flood(sim, c, ["203.0.113.1", "203.0.113.2", "192.0.2.50"], 110, 60, 10)
    assert all(58 <= n <= 62 for n in got.values())


def test_v6_per_source_is_per_64():
    c = Clock(0.0)
    sim = SimFirewall(clock=c)
    sim.install([PortLimit(143, "per-source", Rate.parse("1/second"), 1)])
    got = flood(sim, c, ["2001:db8::1", "2001:db8::2"], 143, 10, 10)
    assert 9 <= sum(got.values()) <= 11  # one /64, one bucket


def test_bans_expire_and_come_before_limits():
    c = Clock(0.0)
    sim = SimFirewall(clock=c)
    sim.install([PortLimit(22)])
    sim.ban("203.0.113.9", ttl=10)
    sim.ban("::ffff:198.51.100.4")  # mapped form bans the IPv4 address
    assert not sim.connect("203.0.113.9", 22) and not sim.connect("198.51.100.4", 22)
    assert sim.connect("203.0.113.10", 22)
    assert sim.banned_dropped() == 2 and sim.counters()[22].passed == 1
    c.t = 11
    assert sim.connect("203.0.113.9", 22)
    assert set(sim.bans()) == {"198.51.100.4"}


def test_retune_carries_counters_and_refills():
    c = Clock(0.0)
    sim = SimFirewall(clock=c)
    sim.install([PortLimit(110, "global", Rate.parse("1/minute"), 1)])
    assert sim.connect("203.0.113.1", 110) and not sim.connect("203.0.113.1", 110)
    sim.set_limit(PortLimit(110, "global", Rate.parse("1/minute"), 3))
    assert [sim.connect("203.0.113.1", 110) for _ in range(4)] == [True, True, True, False]
    cnt = sim.counters()[110]
    assert (cnt.passed, cnt.dropped) == (4, 2)
