"""The store's incremental views behind the screen: rate top-K, filtered top-K, /24 and /64
roll-up, per-service shares, ban history. Each is checked against a brute-force answer."""

from __future__ import annotations

import random

from hypothesis import given, settings, strategies as st

from popwatch.model import Ban, CounterSample, PortCounters
from popwatch.store import SCAN_SLICE, StateStore, make_filter
from tests.helpers import Clock, ev


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 80), st.integers(1, 9), st.integers(0, 40)), min_size=1,
                max_size=250), st.integers(1, 12))
def test_incremental_rate_top_k_equals_brute_force_as_time_passes(steps, k):
    c = Clock()
    s = StateStore(clock=c)
    rng = random.Random(len(steps))
    for ip_n, attempts, dt in steps:
        c.t += dt  # time moves: rates decay, windows roll over
        s.add_events([ev(f"198.51.100.{ip_n}", c.t, attempts=attempts)])
        if rng.random() < 0.4:
            got = [round(r.rate, 6) for r in s.snapshot(k=k, sort="rate").rows]
            want = sorted((round(a.rate(c.t), 6) for a in s.attackers.values()), reverse=True)[:k]
            assert got == want


def test_rate_view_does_not_rescan_every_tick_and_catches_up_within_a_scan_round():
    c = Clock()
    s = StateStore(clock=c)
    n = 20_000
    # half the addresses failed in the previous minute, half in this one: they decay differently
    s.add_events([ev(f"10.0.{i // 256}.{i % 256}", c.t - 60 * (i % 2), attempts=1 + i % 7) for i in range(n)])
    s.snapshot(k=50, sort="rate")
    for i in range(40):
        c.t += 0.5
        s.add_events([ev(f"10.0.{j // 256}.{j % 256}", c.t) for j in range(i * 100, i * 100 + 100)])
        snap = s.snapshot(k=50, sort="rate")
    assert snap.full_passes == 1  # only the first
    for _ in range(n // SCAN_SLICE + 1):  # one scan round with no new events
        snap = s.snapshot(k=50, sort="rate")
    want = sorted((round(a.rate(c.t), 6) for a in s.attackers.values()), reverse=True)[:50]
    assert [round(r.rate, 6) for r in snap.rows] == want


def test_filtered_view_counts_and_ranks_like_a_full_scan():
    c = Clock()
    s = StateStore(clock=c)
    rng = random.Random(7)
    for _ in range(30):
        c.t += 1
        batch = [ev(f"203.0.113.{rng.randrange(60)}", c.t, rng.choice(["ssh", "pop3"]),
                    user=rng.choice(["info", "root", "sales"]), attempts=rng.randint(1, 4)) for _ in range(20)]
        s.add_events(batch)
        snap = s.snapshot(k=5, flt="pop3")
        pred = make_filter("pop3")
        match = [a for a in s.attackers.values() if pred(a)]
        assert snap.shown_of == len(match)
        assert [r.failures for r in snap.rows] == sorted((a.failures for a in match), reverse=True)[:5]


def test_rollup_groups_a_spread_out_attack_by_24_and_64():
    c = Clock()
    s = StateStore(clock=c)
    s.add_events([ev(f"198.51.100.{i}", c.t, "imap", user="info") for i in range(1, 41)])
    s.add_events([ev("203.0.113.66", c.t, "pop3", attempts=30)])
    s.add_events([ev(f"2001:db8:bad::{i:x}", c.t, "imap") for i in range(1, 6)])
    s.set_ban(Ban("198.51.100.7", c.t))
    snap = s.snapshot(rollup=True)
    rows = {r.ip: r for r in snap.rows}
    assert snap.rollup and snap.shown_of == 3
    assert rows["198.51.100.0/24"].nips == 40 and rows["198.51.100.0/24"].failures == 40
    assert rows["198.51.100.0/24"].banned_ips == 1 and rows["198.51.100.0/24"].users == ("info",)
    assert rows["2001:db8:bad::/64"].nips == 5
    assert snap.rows[0].ip == "198.51.100.0/24"  # the spread-out attack outranks the loud single IP
    assert [r.ip for r in s.snapshot(rollup=True, flt="203.0.113.0/24").rows] == ["203.0.113.0/24"]


def test_share_of_the_top_attacker_per_service():
    c = Clock(1_800_000_000.0)
    s = StateStore(clock=c)
    s.add_events([ev("203.0.113.66", c.t + i * 0.1, "pop3") for i in range(90)])
    s.add_events([ev("198.51.100.9", c.t + i, "pop3") for i in range(10)])
    s.add_events([ev("198.51.100.23", c.t + i, "ssh") for i in range(5)])
    c.t += 30
    shares = {svc: (ip, share) for svc, ip, share, _ in s.snapshot().shares}
    assert shares["pop3"][0] == "203.0.113.66" and abs(shares["pop3"][1] - 0.9) < 1e-9
    assert shares["ssh"] == ("198.51.100.23", 1.0)


def test_ban_history_and_ban_drop_rate():
    c = Clock()
    s = StateStore(clock=c)
    s.set_ban(Ban("203.0.113.66", c.t, c.t + 60, "manual", "key"))
    c.t += 61
    s.expire_bans()
    s.set_ban(Ban("203.0.113.66", c.t, None, "again", "key"))
    s.remove_ban("203.0.113.66")
    assert [e.action for e in s.ban_history("203.0.113.66")] == ["ban", "expire", "ban", "unban"]
    s.add_counters(CounterSample(10.0, {110: PortCounters(110, 0, 0)}, banned_dropped=100))
    s.add_counters(CounterSample(12.0, {110: PortCounters(110, 0, 0)}, banned_dropped=140))
    assert s.snapshot().ban_dropped_s == 20.0


def test_top_users_incremental_matches_full_sort():
    c = Clock()
    s = StateStore(clock=c)
    rng = random.Random(3)
    for _ in range(50):
        s.add_events([ev("203.0.113.1", c.t, user=f"u{rng.randrange(200)}", attempts=rng.randint(1, 5))
                      for _ in range(30)])
        got = [u.failures for u in s.snapshot(users=8).users]
        assert got == sorted((st_.failures for st_ in s.users.values()), reverse=True)[:8]
