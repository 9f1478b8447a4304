"""The kernel backends notice when the admin's tools removed popwatch's rules, and put them back
without touching the admin's own rules (``check_enforcement`` / ``repair``), in a lab namespace.

Each case is a real tool run inside the server namespace, then real traffic from the banned
client decides whether the ban is enforced again."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from popwatch.model import PortLimit, Rate

from .conftest import KERNEL_BACKENDS, ipt_cmd, make_fw, save_cmd
from .nslab import Lab

pytestmark = pytest.mark.netns

BANNED = "203.0.113.10"   # c0
ADMIN_RULE = ["-A", "INPUT", "-s", "198.51.100.77/32", "-p", "tcp", "--dport", "8080", "-j", "ACCEPT"]


@pytest.fixture(params=KERNEL_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def _admin_rules(lab: Lab, backend: str) -> list[str]:
    text = lab.run(lab.server, save_cmd(backend, 4)).stdout
    return [l for l in text.splitlines() if l.startswith("-A") and "POPWATCH" not in l]


def _setup(lab: Lab, backend: str, lock: str) -> Any:
    fw = make_fw(lab, backend, lock)
    fw.install([PortLimit(110), PortLimit(143, "global", Rate.parse("1/minute"), 50)])
    lab.run(lab.server, [ipt_cmd(backend, 4), "-w", "5", *ADMIN_RULE])
    fw.ban(BANNED, 600)
    lab.listen()
    assert lab.burst("c0", 110, 2).timeout == 2
    fw.counters()
    assert fw.check_enforcement() == []
    return fw


def _restore(lab: Lab, backend: str, text: str, family: int = 4) -> None:
    flavour = "legacy" if backend.startswith("legacy") else "nft"
    lab.run(lab.server, [f"{'ip6' if family == 6 else 'ip'}tables-{flavour}-restore", "-w", "5"], input=text)


SAVED = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" \
        "-A INPUT -s 198.51.100.77/32 -p tcp -m tcp --dport 8080 -j ACCEPT\nCOMMIT\n"


TOOLS = ("iptables -F", "iptables-restore", "delete jump", "ban rule changed")
#: ``nft flush ruleset`` only reaches the nf_tables flavour (the legacy tables are not nftables)
CASES = [(b, t) for b in KERNEL_BACKENDS for t in TOOLS] + [("nft", "nft flush ruleset")]


@pytest.mark.parametrize(("backend", "tool"), CASES)
def test_heal_after_tool(lab: Lab, backend: str, lock: str, tool: str) -> None:
    fw = _setup(lab, backend, lock)
    ipt = ipt_cmd(backend, 4)
    before = _admin_rules(lab, backend)
    if tool == "iptables -F":
        lab.run(lab.server, [ipt, "-w", "5", "-F"])
        lab.run(lab.server, [ipt, "-w", "5", *ADMIN_RULE])   # the admin's rules come back, ours not
    elif tool == "iptables-restore":
        _restore(lab, backend, SAVED)
    elif tool == "delete jump":
        lab.run(lab.server, [ipt, "-w", "5", "-D", "INPUT", "-j", "POPWATCH"])
    elif tool == "ban rule changed":
        lab.run(lab.server, [ipt, "-w", "5", "-R", "POPWATCH", "2", "-m", "set", "--match-set", "popwatch4",
                             "src", "-j", "RETURN"])
    else:
        lab.run(lab.server, ["nft", "flush", "ruleset"])
        lab.run(lab.server, [ipt, "-w", "5", *ADMIN_RULE])
    assert lab.burst("c0", 110, 1).ok == 1               # the tool really let the attacker back in
    fw.counters()
    problems = fw.check_enforcement()
    assert problems, "the removal went unnoticed"
    done = fw.repair({BANNED: 500.0})
    assert done
    fw.counters()
    assert fw.check_enforcement() == []
    assert lab.burst("c0", 110, 2).timeout == 2          # enforced again
    assert lab.burst("c1", 110, 1).ok == 1               # others still served
    assert _admin_rules(lab, backend) == before          # the admin's own rules untouched
    assert {p["port"]: p["mode"] for p in fw.limits().values()} == {110: "count", 143: "global"}


def test_lost_sets_are_refilled_from_state(lab: Lab, backend: str, lock: str) -> None:
    fw = _setup(lab, backend, lock)
    _restore(lab, backend, SAVED)                        # the rules go: the sets are unreferenced
    _restore(lab, backend, SAVED.replace("-A INPUT -s 198.51.100.77/32 -p tcp -m tcp --dport 8080 -j ACCEPT\n", ""), 6)
    for s in ("popwatch4", "popwatch6", "popwatchx4", "popwatchx6"):
        lab.run(lab.server, ["ipset", "destroy", s])
    fw.counters()
    assert fw.check_enforcement()
    done = fw.repair({BANNED: 500.0, "2001:db8:3::/64": None})
    assert any("restored 2 bans" in d for d in done), done
    assert set(fw.bans()) == {BANNED, "2001:db8:3::/64"}
    assert lab.burst("c0", 110, 2).timeout == 2


def test_no_problem_reported_when_in_place_and_repair_is_a_no_op(lab: Lab, backend: str, lock: str) -> None:
    fw = _setup(lab, backend, lock)
    for _ in range(3):
        fw.counters()
        assert fw.check_enforcement() == []
    assert fw.repair({BANNED: 500.0}) == []


HOLD = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], 110), timeout=5)
print("open", flush=True)
s.settimeout(float(sys.argv[2]))
try:
    data = s.recv(10)
    print("closed" if data == b"" else "data", flush=True)
except ConnectionResetError:
    print("reset", flush=True)
except OSError as e:
    print(f"error {e}", flush=True)
"""

SERVE = r"""
import socket, sys, time
l = socket.socket(socket.AF_INET6)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("::", 110)); l.listen()
print("ready", flush=True)
held = []
end = time.monotonic() + float(sys.argv[1])
l.settimeout(0.5)
while time.monotonic() < end:
    try:
        held.append(l.accept()[0])       # hold every connection open, like a daemon mid-session
    except TimeoutError:
        pass
"""


def test_ban_closes_the_open_connections(lab: Lab, backend: str, lock: str) -> None:
    fw = make_fw(lab, backend, lock)
    fw.install([PortLimit(110)])
    srv = lab.popen(lab.server, [sys.executable, "-c", SERVE, "60"], stdout=subprocess.PIPE)
    assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
    holders = {}
    for key in ("c0", "c0", "c1"):
        p = lab.popen(lab.hosts[key].ns, [sys.executable, "-c", HOLD, "192.0.2.1", "20"],
                      stdout=subprocess.PIPE)
        assert p.stdout is not None and p.stdout.readline().strip() == "open"
        holders.setdefault(key, []).append(p)
    fw.ban(BANNED, 600)
    assert fw.close_connections([BANNED, "198.51.100.0/24"]) == {BANNED: 2}
    for p in holders["c0"]:
        assert p.stdout is not None and p.stdout.readline().strip() == "reset"   # at once, not at 20 s
    assert fw.close_connections([BANNED]) == {}                                   # nothing left
    c1 = holders["c1"][0]
    assert c1.poll() is None                                                      # the other client's session lives
    lab.stop(c1)


EVENTS = r"""
import threading
from popwatch.heal import NftEvents
seen = threading.Event()
ev = NftEvents(seen.set)
print("ready", flush=True)
print("changed" if seen.wait(10) else "nothing", flush=True)
ev.close()
"""


def test_nf_tables_change_events_wake_the_healer(lab: Lab, lock: str) -> None:
    """On nf_tables hosts a removal is seen the moment it happens (the poll is the fallback)."""
    fw = make_fw(lab, "nft", lock)
    fw.install([PortLimit(110)])
    p = lab.popen(lab.server, [sys.executable, "-c", EVENTS], stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    lab.run(lab.server, ["iptables-nft", "-w", "5", "-F", "POPWATCH"])
    assert p.stdout.readline().strip() == "changed"
