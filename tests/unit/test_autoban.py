"""The auto-ban engine: attempts within findtime, jails, recidive, success grace, targeted users."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings, strategies as st

from popwatch.autoban import AutoBan, fmt_duration
from popwatch.config import PolicyConfig, ServicePolicy
from popwatch.model import AuthEvent

T0 = 1_795_000_000.0


def fail(ip: str, ts: float, n: int = 1, svc: str = "pop3", user: str | None = "root") -> AuthEvent:
    return AuthEvent(T0 + ts, svc, "auth_failed", ip, user, n)


def ok(ip: str, ts: float) -> AuthEvent:
    return AuthEvent(T0 + ts, "imap", "success", ip, "alice", 1)


def eng(**kw) -> AutoBan:
    return AutoBan(replace(PolicyConfig(), **kw), enabled=True)


def test_bans_on_the_maxretry_th_attempt_within_findtime():
    e = eng(maxretry=5, findtime=600)
    out = [e.feed([fail("203.0.113.1", i)]) for i in range(6)]
    assert [bool(o) for o in out] == [False, False, False, False, True, False]
    d = out[4][0]
    assert d.ip == "203.0.113.1" and d.bantime == 3600
    assert "5 failed attempts within 10m" in d.reason and "maxretry 5" in d.reason
    assert d.detail["rule"] == "maxretry" and d.detail["count"] == 5


def test_attempts_outside_findtime_do_not_count():
    e = eng(maxretry=3, findtime=60)
    assert not e.feed([fail("203.0.113.1", 0), fail("203.0.113.1", 50)])
    # at 111 s the first two are older than 60 s: 111, 112 make two, 113 the third
    assert not e.feed([fail("203.0.113.1", 111), fail("203.0.113.1", 112)])
    assert e.feed([fail("203.0.113.1", 113)])


def test_dovecot_attempts_count_not_lines():
    e = eng(maxretry=10)
    assert not e.feed([fail("203.0.113.2", 0, n=9)])
    [d] = e.feed([fail("203.0.113.2", 1, n=3)])
    assert d.detail["count"] == 12


def test_zero_attempt_twins_probes_and_no_ip_are_ignored():
    e = eng(maxretry=1)
    assert not e.feed([fail("203.0.113.3", 0, n=0), fail(None, 0),  # type: ignore[arg-type]
                       AuthEvent(T0, "ssh", "probe", "203.0.113.3", None, 1)])


def test_disabled_counts_but_never_decides_until_enabled():
    e = AutoBan(replace(PolicyConfig(), maxretry=2), enabled=False)
    assert not e.feed([fail("203.0.113.4", i) for i in range(5)])
    assert e.level("203.0.113.4", T0 + 5) >= 1
    e.set_enabled(True)
    assert e.feed([fail("203.0.113.4", 6)])


def test_per_service_override_has_its_own_window():
    e = eng(maxretry=5, services={"ssh": ServicePolicy(maxretry=2, bantime=86400)})
    assert not e.feed([fail("203.0.113.5", 0, svc="ssh")])
    [d] = e.feed([fail("203.0.113.5", 1, svc="ssh")])
    assert d.bantime == 86400 and "on ssh" in d.reason
    # pop3 attempts count in the default jail, unaffected by ssh's
    assert not e.feed([fail("203.0.113.6", i, svc="pop3") for i in range(4)])
    assert not e.feed([fail("203.0.113.6", 5, svc="ssh")])


def test_recidive_grows_bantime_up_to_the_max():
    e = eng(maxretry=1, bantime=3600, recidive_factor=2, recidive_max=4 * 3600, recidive_window=86400)
    times = [e.feed([fail("203.0.113.7", i * 100)])[0].bantime for i in range(5)]
    assert times == [3600, 7200, 14400, 14400, 14400]
    # bans older than the recidive window are forgotten
    e2 = eng(maxretry=1, recidive_window=600)
    e2.feed([fail("203.0.113.8", 0)])
    assert e2.feed([fail("203.0.113.8", 700)])[0].bantime == 3600


def test_success_grace_needs_the_higher_threshold():
    e = eng(maxretry=3, success_maxretry=10, success_grace=30 * 86400)
    e.feed([ok("198.51.100.5", 0)])
    assert not e.feed([fail("198.51.100.5", i) for i in range(1, 10)])
    [d] = e.feed([fail("198.51.100.5", 11)])
    assert d.detail["rule"] == "success_grace" and "logged in successfully" in d.reason
    # after the grace period the normal threshold applies again
    e = eng(maxretry=3, success_maxretry=10, success_grace=86400)
    e.feed([ok("198.51.100.6", 0)])
    assert e.feed([fail("198.51.100.6", 86400 + i) for i in range(3)])


def test_targeted_user_lowers_the_threshold():
    e = eng(maxretry=10, user_ips=3, user_maxretry=2, findtime=600)
    # 'info' tried by three addresses once each: now targeted
    assert not e.feed([fail(f"203.0.113.{20 + i}", i, user="info") for i in range(3)])
    assert e.targeted_users(T0 + 3) == [("info", 3)]
    [d] = e.feed([fail("203.0.113.20", 4, user="info")])
    assert d.ip == "203.0.113.20" and d.detail["rule"] == "targeted_user" and "'info'" in d.reason


def test_protected_and_already_banned_are_never_decided():
    p = replace(PolicyConfig(), maxretry=1)
    e = AutoBan(p, enabled=True, protected=lambda ip: "you" if ip == "198.51.100.9" else None,
                is_banned=lambda ip: ip == "203.0.113.9")
    assert not e.feed([fail("198.51.100.9", 0, n=100), fail("203.0.113.9", 0, n=100)])


def test_near_threshold_hook():
    e = eng(maxretry=6)

    class A:
        ip = "203.0.113.30"
    e.feed([fail(A.ip, 0, n=2)])
    assert not e.near(A, T0 + 1)
    e.feed([fail(A.ip, 1, n=1)])
    assert e.near(A, T0 + 2)
    assert not e.near(A, T0 + 2 + 600)   # the attempts left the window


def test_memory_is_bounded_and_sweep_drops_stale_windows():
    e = AutoBan(replace(PolicyConfig(), maxretry=1000), enabled=True, max_ips=100, max_users=50)
    for i in range(1000):
        e.feed([fail(f"10.0.{i // 250}.{i % 250}", i, user=f"u{i}")])
    assert len(e.windows) <= 100 and len(e.user_ips) <= 50
    assert e.sweep(T0 + 10_000) > 0 and not e.windows


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.floats(0, 3000), st.integers(1, 5)), max_size=60),
       st.integers(1, 12), st.integers(10, 900))
def test_decision_iff_window_sum_reaches_maxretry(evs, maxretry, findtime):
    """Against a brute-force model: ban exactly when the attempts in (t-findtime, t] since the
    last ban reach maxretry."""
    e = eng(maxretry=maxretry, findtime=float(findtime), recidive_factor=1)
    evs = sorted(evs, key=lambda x: x[1])
    hist: dict[int, list[tuple[float, int]]] = {}
    for who, ts, n in evs:
        ip = f"203.0.113.{who}"
        got = bool(e.feed([fail(ip, ts, n=n)]))
        h = hist.setdefault(who, [])
        h.append((ts, n))
        window = sum(k for t, k in h if t > ts - findtime)
        want = window >= maxretry
        assert got == want
        if want:  # a ban starts the count afresh
            h.clear()


def test_fmt_duration():
    assert [fmt_duration(x) for x in (600, 3600, 86400 * 2, 5430, 30, None)] == \
        ["10m", "1h", "2d", "1.5h", "30s", "permanently"]
