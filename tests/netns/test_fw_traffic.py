"""Real traffic through popwatch's rules: a server namespace listening on 110/143/22, client
namespaces connecting in bounded bursts (0.5 s connect timeout: one SYN per attempt).

Limits use per-minute rates so that what passes is decided by the burst size alone, not by
timing: the assertions are exact counts, never durations."""

from __future__ import annotations

import time
from typing import Any

import pytest

from popwatch.model import PortLimit, Rate

from .conftest import ALL_KERNEL_BACKENDS, make_fw
from .nslab import Lab

pytestmark = pytest.mark.netns

SLOW = Rate.parse("1/minute")  # no refill during a test


@pytest.fixture(params=ALL_KERNEL_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def served(lab: Lab, backend: str, lock: str) -> Any:
    fw = make_fw(lab, backend, lock)
    fw.install([PortLimit(110), PortLimit(143), PortLimit(22)])
    lab.listen()
    return fw


def test_counters_match_connections(lab: Lab, served: Any) -> None:
    fw = served
    assert lab.burst("c0", 110, 7).ok == 7
    assert lab.burst("c1", 110, 4, family=6).ok == 4
    assert lab.burst("c2", 22, 3).ok == 3
    c = fw.counters()
    assert c["110"] == {"port": 110, "passed": 11, "dropped": 0}
    assert c["22"] == {"port": 22, "passed": 3, "dropped": 0}
    assert c["143"]["passed"] == 0


def test_global_limit_counts_passed_and_dropped(lab: Lab, served: Any) -> None:
    fw = served
    fw.set_limit(PortLimit(143, "global", SLOW, 3))
    r = lab.burst("c0", 143, 8)
    assert (r.ok, r.timeout) == (3, 5)
    assert fw.counters()["143"] == {"port": 143, "passed": 3, "dropped": 5}


def test_banned_client_cannot_connect_others_can(lab: Lab, served: Any) -> None:
    fw = served
    fw.ban("203.0.113.10", 600)                       # c0
    fw.ban(lab.hosts["c2"].v6, 600)                    # c2 over IPv6 (its /64)
    r0, r1 = lab.burst("c0", 110, 3), lab.burst("c1", 110, 3)
    assert (r0.ok, r0.timeout) == (0, 3)
    assert r1.ok == 3
    assert lab.burst("c2", 143, 2, family=6).timeout == 2
    assert lab.burst("c2", 143, 2).ok == 2             # its IPv4 address is not banned
    # the v6 SYNs wait for neighbour discovery, whose solicitations the ban drops too: those
    # drops may still be arriving, so poll (bounded) for the count to reach the 5 SYNs
    deadline = time.monotonic() + 5
    while True:
        fw.counters()
        if fw.banned_dropped() >= 5 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert fw.banned_dropped() >= 5
    fw.unban("203.0.113.10")
    assert lab.burst("c0", 110, 2).ok == 2


def test_ban_action_reject_resets_at_once(lab: Lab, backend: str, lock: str) -> None:
    fw = make_fw(lab, backend, lock, ban_action="reject")
    fw.install([PortLimit(110)])
    lab.listen()
    fw.ban("203.0.113.10", 600)
    r = lab.burst("c0", 110, 3)
    assert (r.ok, r.refused) == (0, 3)                 # RST: the attack tool gives up at once


def test_per_source_keeps_legitimate_client_served_global_starves_it(lab: Lab, served: Any) -> None:
    fw = served
    # global: one bucket for everyone. The attacker (c0) empties it; the user (c1) gets nothing.
    fw.set_limit(PortLimit(110, "global", SLOW, 3))
    attack = lab.burst("c0", 110, 6)
    assert (attack.ok, attack.timeout) == (3, 3)
    user = lab.burst("c1", 110, 3)
    assert user.ok == 0 and user.timeout == 3
    # per-source: a bucket per address; the same flood leaves the user fully served.
    fw.set_limit(PortLimit(110, "per-source", SLOW, 3))
    attack = lab.burst("c0", 110, 6)
    assert (attack.ok, attack.timeout) == (3, 3)
    user = lab.burst("c1", 110, 3)
    assert user.ok == 3
    # IPv6 (one bucket per /64): c0's flood does not touch c1 either
    assert lab.burst("c0", 110, 5, family=6).ok == 3
    assert lab.burst("c1", 110, 3, family=6).ok == 3
    c = fw.counters()["110"]
    assert c == {"port": 110, "passed": 3 + 0 + 3 + 3 + 3 + 3, "dropped": 3 + 3 + 3 + 2}


def test_per_source_under_concurrent_flood(lab: Lab, served: Any) -> None:
    """Two attackers flood in parallel while the user connects: per-source keeps it served."""
    fw = served
    fw.set_limit(PortLimit(143, "per-source", Rate.parse("2/second"), 4))
    floods = [lab.start_burst(c, 143, 16, max_seconds=20) for c in ("c0", "c2")]
    user = lab.burst("c1", 143, 4, interval=0.6)
    results = [f.result() for f in floods]
    assert user.ok == 4
    assert all(r.timeout > 0 for r in results)          # the attackers were limited


def test_retune_takes_effect_at_once(lab: Lab, served: Any) -> None:
    """A new hashlimit name per retune: the new burst applies immediately (re-using the old
    name would silently keep the old bucket and parameters)."""
    fw = served
    fw.set_limit(PortLimit(22, "per-source", SLOW, 2))
    assert lab.burst("c0", 22, 4).ok == 2
    fw.set_limit(PortLimit(22, "per-source", SLOW, 6))
    assert lab.burst("c0", 22, 8).ok == 6
    c = fw.counters()["22"]
    assert c == {"port": 22, "passed": 8, "dropped": 4}


def test_protected_sources_are_never_limited_or_banned(lab: Lab, backend: str, lock: str) -> None:
    """Sources in popwatchx4/x6 (the admin's SSH client, the allow-list, the host itself)
    RETURN before the ban match and the limits."""
    c1 = lab.hosts["c1"]
    fw = make_fw(lab, backend, lock, exempt=[c1.v4, c1.v6])
    fw.install([PortLimit(22, "global", SLOW, 1)])
    lab.listen()
    assert sorted(fw.exempted()) == sorted(["127.0.0.0/8", "::1", c1.v4, c1.v6])  # as ipset prints them
    assert lab.burst("c0", 22, 4).ok == 1                # limited
    assert lab.burst("c1", 22, 4).ok == 4                # protected: not limited
    assert lab.burst("c1", 22, 3, family=6).ok == 3
    fw.ban(c1.v4, 600)                                     # even a ban (policy refuses this anyway)
    assert lab.burst("c1", 22, 2).ok == 2
    cli_side = make_fw(lab, backend, lock, exempt=["198.51.100.50"])
    cli_side.ensure_base()  # a CLI call sets exactly its own protected set (plus a running watch's)
    assert sorted(fw.exempted()) == sorted(["127.0.0.0/8", "::1", "198.51.100.50"])
    assert lab.burst("c1", 22, 2).timeout == 2             # c1 is no longer protected: banned
    fw.set_exempt([c1.v4, c1.v6])
    fw.set_exempt([])                                      # only loopback now
    assert lab.burst("c1", 22, 2).timeout == 2
