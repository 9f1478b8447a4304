"""StateStore: aggregation per IP across services, attempts, rates, top-K, bounded memory."""

from __future__ import annotations

import random

from hypothesis import given, settings, strategies as st

from popwatch.model import PortLimit
from popwatch.model import Ban, CounterSample, PortCounters
from popwatch.store import USERS_PER_IP, StateStore
from tests.helpers import Clock, ev


def test_one_row_per_ip_across_services_counting_attempts():
    c = Clock()
    s = StateStore(clock=c)
    s.add_events([
        ev("203.0.113.5", c.t, "ssh", user="root"),
        ev("203.0.113.5", c.t + 1, "pop3", user="admin", attempts=11),
        ev("203.0.113.5", c.t + 2, "imap", kind="invalid_user", user="test"),
        ev("198.51.100.7", c.t + 2, "pop3"),
    ])
    c.t += 3
    snap = s.snapshot()
    assert snap.total_ips == 2
    top = snap.rows[0]
    assert top.ip == "203.0.113.5"
    assert top.failures == 13  # 1 + 11 (dovecot's N attempts) + 1
    assert set(top.services) == {"ssh", "pop3", "imap"}
    assert top.users == ("root", "admin", "test") and top.nusers == 3
    assert snap.failures_total == 14


def test_success_only_ips_are_not_attackers_but_are_remembered():
    c = Clock()
    s = StateStore(clock=c)
    s.add_events([ev("192.0.2.50", c.t, "imap", kind="success", user="alice")])
    assert s.snapshot().total_ips == 0
    s.add_events([ev("192.0.2.50", c.t + 5, "imap", user="alice")])
    row = s.snapshot().rows[0]
    assert row.ip == "192.0.2.50" and row.successes == 1 and row.failures == 1


def test_zero_attempt_events_do_not_count_twice():
    c = Clock()
    s = StateStore(clock=c)
    s.add_events([ev("203.0.113.5", c.t, attempts=0), ev("203.0.113.5", c.t, attempts=1)])
    assert s.snapshot().rows[0].failures == 1
    # twins alone (attempts=0) from other addresses do not make attackers
    s.add_events([ev(f"198.51.100.{i % 3}", c.t, attempts=0) for i in range(9)])
    assert s.n_attackers == 1 and s.snapshot().total_ips == 1


def test_rate_per_minute_slides():
    c = Clock(1_800_000_000.0)  # a minute boundary
    s = StateStore(clock=c)
    s.add_events([ev("203.0.113.5", c.t + i) for i in range(30)])
    c.t += 30
    assert s.snapshot(sort="rate").rows[0].rate == 30
    c.t += 60  # next window, half-way: the old 30 count half
    assert abs(s.snapshot(sort="rate").rows[0].rate - 15) < 1e-6
    c.t += 120
    assert s.snapshot(sort="rate").rows[0].rate == 0


def test_users_per_ip_capped_but_counted():
    c = Clock()
    s = StateStore(clock=c)
    s.add_events([ev("203.0.113.5", c.t, user=f"u{i}") for i in range(100)])
    row = s.snapshot().rows[0]
    assert len(row.users) == USERS_PER_IP and row.nusers == 100
    assert row.users[-1] == "u99"  # most recent last


def test_memory_is_bounded_least_recent_evicted_banned_kept():
    c = Clock()
    s = StateStore(clock=c, max_ips=1000, ring=50, max_users=100)
    s.set_ban(Ban("10.9.9.9", c.t))
    s.add_events([ev("10.9.9.9", c.t - 1000)])  # oldest of all, but banned
    for i in range(5000):
        s.add_events([ev(f"10.0.{i // 256}.{i % 256}", c.t + i, user=f"user{i}")])
    assert len(s.attackers) <= 1000
    assert "10.9.9.9" in s.attackers
    assert "10.0.19.135" in s.attackers  # the newest survive
    assert "10.0.0.0" not in s.attackers
    assert len(s.events) == 50 and len(s.users) <= 100
    assert s.n_attackers == len(s.attackers)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(1, 20)), min_size=1, max_size=300),
       st.integers(1, 15))
def test_incremental_top_k_equals_full_sort(batches, k):
    c = Clock()
    s = StateStore(clock=c)
    rng = random.Random(len(batches))
    for ip_n, attempts in batches:
        s.add_events([ev(f"198.51.100.{ip_n}", c.t, attempts=attempts)])
        if rng.random() < 0.3:
            got = [r.failures for r in s.snapshot(k=k).rows]
            want = sorted((a.failures for a in s.attackers.values()), reverse=True)[:k]
            assert got == want


def test_counter_rates_use_measured_interval_and_detect_reset():
    c = Clock()
    s = StateStore(clock=c)
    s.set_limit(PortLimit(110))
    s.add_counters(CounterSample(100.0, {110: PortCounters(110, 10, 0)}))
    s.add_counters(CounterSample(102.0, {110: PortCounters(110, 30, 8)}))  # 2 s, not the nominal 1
    p = s.snapshot().ports[0]
    assert (p.passed_s, p.dropped_s) == (10.0, 4.0)
    s.add_counters(CounterSample(103.0, {110: PortCounters(110, 5, 1)}))  # went down: reset
    p = s.snapshot().ports[0]
    assert (p.passed_s, p.dropped_s) == (5.0, 1.0)
    assert p.passed_hist == (10.0, 5.0)


def test_states_banned_protected_near():
    c = Clock()
    s = StateStore(clock=c, protected=lambda ip: "allow-list" if ip.startswith("192.0.2.") else None,
                   near_threshold=lambda a, now: a.failures >= 3)
    s.add_events([ev("192.0.2.9", c.t), ev("203.0.113.1", c.t, attempts=3), ev("203.0.113.2", c.t),
                  ev("203.0.113.3", c.t)])
    s.set_ban(Ban("203.0.113.3", c.t, c.t + 600))
    states = {r.ip: (r.state, r.ban_left) for r in s.snapshot().rows}
    assert states == {"192.0.2.9": ("protected", None), "203.0.113.1": ("near", None),
                      "203.0.113.2": ("watching", None), "203.0.113.3": ("banned", 600.0)}
    c.t += 601
    assert s.expire_bans()[0].ip == "203.0.113.3"
    assert {r.ip: r.state for r in s.snapshot().rows}["203.0.113.3"] == "watching"


def test_filter_by_prefix_user_service():
    c = Clock()
    s = StateStore(clock=c)
    s.add_events([ev("203.0.113.5", c.t, "pop3", user="info"), ev("198.51.100.7", c.t, "ssh", user="root"),
                  ev("2001:db8::5", c.t, "imap", user="sales")])
    assert [r.ip for r in s.snapshot(flt="203.0.113.0/24").rows] == ["203.0.113.5"]
    assert [r.ip for r in s.snapshot(flt="2001:db8::/64").rows] == ["2001:db8::5"]
    assert [r.ip for r in s.snapshot(flt="ssh").rows] == ["198.51.100.7"]
    assert [r.ip for r in s.snapshot(flt="SAL").rows] == ["2001:db8::5"]
    assert s.snapshot(flt="198.51").shown_of == 1
