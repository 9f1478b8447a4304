"""popwatch's sets over netlink (pyroute2), with no ``ipset`` binary.

* In a lab namespace, popwatch's process creates, fills, tests, flushes, swaps and destroys its
  sets; the host's ``ipset`` binary (what an admin would run) sees exactly that: types, family,
  timeouts, maxelem, members, ``-exist`` semantics.
* The fast LIST walker agrees with pyroute2's own decoder on the same dump.
* ``popwatch ban`` and ``watch --no-tui`` run in a private mount namespace where ``ipset`` is a
  tripwire (bind-mounted over /usr/sbin/ipset: it records any call and fails) and not on PATH:
  they work, the attacker's connections are refused, and the tripwire never fired.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import need_tools

from .nslab import REPO, Lab, cleanup_stale
from popwatch.firewall.ipset import MAXELEM
from .test_policy_netns import ATTACKER, CONFIG, SSH_ADMIN, Watch, dove, wait_for

pytestmark = pytest.mark.netns

SCRIPT = textwrap.dedent("""
    import json, socket, sys
    from popwatch.firewall.ipset import Ipset, _walk_list
    from pyroute2 import IPSet
    calls = []
    ips = Ipset(lambda a, s: calls.append(a), lambda a, s: calls.append(a))
    op, args = sys.argv[1], json.loads(sys.stdin.read())
    out = None
    if op == "ensure":
        ips.ensure()
    elif op == "add":
        for s, e, t in args:
            ips.add(s, e, t)
    elif op == "delete":
        for s, e in args:
            ips.delete(s, e)
    elif op == "test":
        out = [ips.test(s, e) for s, e in args]
    elif op == "restore":
        out = ips.restore([tuple(a) for a in args])
    elif op == "entries":
        out = ips.entries()
    elif op == "exempt":
        ips.set_exempt(args["nets"], replace=args["replace"])
        out = ips.exempt()
    elif op == "flush":
        ips.flush(args)
    elif op == "destroy":
        out = ips.destroy()
    elif op == "in-loop":   # from a thread whose asyncio loop runs (the TUI's): pyroute2 can't nest loops
        import asyncio
        async def main():
            ips.ensure()
            ips.add("popwatch4", "203.0.113.9", 60)
            return sorted(ips.names()), ips.entries(), ips.destroy()
        out = asyncio.run(main())
    elif op == "pyroute2-decoded":   # the same members through pyroute2's own decoder
        res = {}
        with IPSet() as p:
            for name in args:
                for m in p.list(name):
                    fam = m.get_attr("IPSET_ATTR_FAMILY")
                    for d in m.get_attr("IPSET_ATTR_ADT").get_attrs("IPSET_ATTR_DATA"):
                        ipf = d.get_attr("IPSET_ATTR_IP_FROM")
                        a = ipf.get_attr("IPSET_ATTR_IPADDR_IPV4") or ipf.get_attr("IPSET_ATTR_IPADDR_IPV6")
                        c = d.get_attr("IPSET_ATTR_CIDR")
                        full = 32 if fam == socket.AF_INET else 128
                        res[a if c in (None, full) else f"{a}/{c}"] = d.get_attr("IPSET_ATTR_TIMEOUT") or 0
        out = res
    print(json.dumps({"out": out, "calls": calls}))
""")


@pytest.fixture(scope="module", autouse=True)
def _stale() -> None:
    if os.geteuid() == 0:
        cleanup_stale("pwset-")


@pytest.fixture
def lab() -> Iterator[Lab]:
    need_tools("ip", "iptables-nft", "ipset", "unshare", "mount")
    with Lab(prefix="pwset", clients=2) as lab:
        yield lab


def sets(lab: Lab, op: str, args: object = None, *, ok: bool = True) -> subprocess.CompletedProcess[str]:
    cp = lab.run(lab.server, ["env", f"PYTHONPATH={REPO}", sys.executable, "-c", SCRIPT, op],
                 input=json.dumps(args), check=False)
    if ok:
        assert cp.returncode == 0, cp.stderr
        assert json.loads(cp.stdout)["calls"] == []  # nothing was run or recorded as a command
    return cp


def out(cp: subprocess.CompletedProcess[str]) -> object:
    return json.loads(cp.stdout)["out"]


def ipset_list(lab: Lab, name: str) -> tuple[str, dict[str, int]]:
    """(header text, members -> timeout) as the ``ipset`` binary shows them."""
    text = lab.run(lab.server, ["ipset", "list", name]).stdout
    head, _, body = text.partition("Members:")
    members = {}
    for line in body.splitlines():
        p = line.split()
        if p:
            members[p[0]] = int(p[2]) if len(p) > 2 and p[1] == "timeout" else 0
    return head, members


def test_sets_over_netlink_seen_by_the_ipset_binary(lab: Lab) -> None:
    sets(lab, "ensure")
    assert sorted(lab.run(lab.server, ["ipset", "list", "-n"]).stdout.split()) == \
        ["popwatch4", "popwatch6", "popwatchx4", "popwatchx6"]
    h4, _ = ipset_list(lab, "popwatch4")
    assert "Type: hash:ip" in h4 and "family inet " in h4 and "timeout 0" in h4 and f"maxelem {MAXELEM}" in h4
    h6, _ = ipset_list(lab, "popwatch6")
    assert "Type: hash:net" in h6 and "family inet6 " in h6 and "timeout 0" in h6
    hx, _ = ipset_list(lab, "popwatchx6")
    assert "Type: hash:net" in hx and "family inet6" in hx and "timeout" not in hx
    sets(lab, "ensure")  # again: existing sets are adopted, no error
    sets(lab, "add", [["popwatch4", "203.0.113.5", 90], ["popwatch4", "203.0.113.6", 0],
                      ["popwatch6", "2001:db8:5::/64", 600]])
    _, m4 = ipset_list(lab, "popwatch4")
    assert set(m4) == {"203.0.113.5", "203.0.113.6"} and 85 <= m4["203.0.113.5"] <= 90 and m4["203.0.113.6"] == 0
    _, m6 = ipset_list(lab, "popwatch6")
    assert list(m6) == ["2001:db8:5::/64"] and 590 <= m6["2001:db8:5::/64"] <= 600
    # -exist: adding again refreshes the timeout instead of failing
    sets(lab, "add", [["popwatch4", "203.0.113.5", 5000]])
    assert 4990 <= ipset_list(lab, "popwatch4")[1]["203.0.113.5"] <= 5000
    assert out(sets(lab, "test", [["popwatch4", "203.0.113.5"], ["popwatch4", "203.0.113.7"],
                                  ["popwatch6", "2001:db8:5::99"]])) == [True, False, True]
    # delete: twice is fine (-exist); the binary sees it gone
    sets(lab, "delete", [["popwatch4", "203.0.113.6"], ["popwatch4", "203.0.113.6"]])
    assert set(ipset_list(lab, "popwatch4")[1]) == {"203.0.113.5"}
    # an entry added by the admin with the binary is read back with its timeout
    lab.run(lab.server, ["ipset", "add", "popwatch4", "198.51.100.9", "timeout", "700"])
    e = out(sets(lab, "entries"))
    assert set(e) == {"203.0.113.5", "198.51.100.9", "2001:db8:5::/64"} and 690 <= e["198.51.100.9"] <= 700
    # wrong family into a set: a clear error, not a traceback
    cp = sets(lab, "add", [["popwatch6", "203.0.113.8", 5]], ok=False)
    assert cp.returncode != 0 and "popwatch6" in cp.stderr
    sets(lab, "flush", "popwatch4")
    assert ipset_list(lab, "popwatch4")[1] == {}
    assert out(sets(lab, "destroy")) == []
    assert lab.run(lab.server, ["ipset", "list", "-n"]).stdout.split() == []
    # entries() of missing sets is empty, not an error
    assert out(sets(lab, "entries")) == {}
    names, entries, warns = out(sets(lab, "in-loop"))
    assert names == ["popwatch4", "popwatch6", "popwatchx4", "popwatchx6"]
    assert list(entries) == ["203.0.113.9"] and warns == []


def test_bulk_restore_exempt_swap_and_walker(lab: Lab) -> None:
    sets(lab, "ensure")
    items = [["popwatch4", f"198.51.100.{i}", 3600] for i in range(256)] + \
            [["popwatch6", f"2001:db8:{i:x}::/64", 0 if i % 2 else 1200] for i in range(3000)]
    assert out(sets(lab, "restore", items)) == len(items)
    _, m4 = ipset_list(lab, "popwatch4")
    _, m6 = ipset_list(lab, "popwatch6")
    assert len(m4) == 256 and len(m6) == 3000 and m6["2001:db8:1::/64"] == 0 and m6["2001:db8:2::/64"] > 1100
    # -exist in bulk too: restoring the same entries again refreshes, no error
    assert out(sets(lab, "restore", items[:10])) == 10
    mine = out(sets(lab, "entries"))
    theirs = out(sets(lab, "pyroute2-decoded", ["popwatch4", "popwatch6"]))
    assert set(mine) == set(theirs) == set(m4) | set(m6)
    assert all(abs(mine[k] - theirs[k]) <= 1 for k in mine)
    # a refused entry is reported (with the count of others), not silently dropped
    cp = sets(lab, "restore", [["popwatch6", "2001:db8:ffff::/64", 5], ["popwatch6", "203.0.113.8", 5]], ok=False)
    assert cp.returncode != 0 and "203.0.113.8" in cp.stderr and "Traceback" not in cp.stderr.splitlines()[-1]
    # protected sources: replace atomically (swap), or only add
    nets = ["127.0.0.0/8", "::1", "192.0.2.1", "2001:db8::1"]
    assert sorted(out(sets(lab, "exempt", {"nets": nets, "replace": True}))) == sorted(nets)
    after = out(sets(lab, "exempt", {"nets": ["198.51.100.0/24"], "replace": False}))
    assert sorted(after) == sorted(nets + ["198.51.100.0/24"])
    assert sorted(out(sets(lab, "exempt", {"nets": ["127.0.0.0/8", "::1"], "replace": True}))) == ["127.0.0.0/8", "::1"]
    assert sorted(ipset_list(lab, "popwatchx4")[1]) == ["127.0.0.0/8"]
    assert "popwatchx4-new" not in lab.run(lab.server, ["ipset", "list", "-n"]).stdout


TRIPWIRE = "#!/bin/sh\necho \"$0 $*\" >> {marker}\nexit 127\n"


class NoIpsetWatch(Watch):
    """``popwatch`` in a private mount namespace whose ``ipset`` is a tripwire, off PATH."""

    def __init__(self, lab: Lab, d: Path, config: str) -> None:
        super().__init__(lab, d, config)
        self.marker = d / "ipset-called"
        self.trip = d / "ipset-tripwire"
        self.trip.write_text(TRIPWIRE.format(marker=self.marker))
        self.trip.chmod(0o755)

    def hidden(self) -> list[str]:
        """Prefix: a private mount namespace with the tripwire over /usr/sbin/ipset (= /sbin)."""
        hide = f"mount --bind {self.trip} /usr/sbin/ipset && exec \"$@\""
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", hide, "sh"]

    def argv(self, *args: str) -> list[str]:
        return [*self.hidden(), *super().argv(*args)]


def test_ban_and_watch_without_the_ipset_binary(lab: Lab, tmp_path: Path) -> None:
    w = NoIpsetWatch(lab, tmp_path, CONFIG.replace("[policy]", "[policy]\nauto_ban = true"))
    try:
        # the tripwire really is what popwatch's namespace would run as `ipset`
        probe = lab.run(lab.server, [*w.hidden(), "ipset", "list"], check=False)
        assert probe.returncode == 127 and w.marker.read_text().strip()
        w.marker.unlink()
        w.start()
        lab.listen(ports=(110,))
        assert lab.burst("c0", 110, 2).ok == 2
        w.write(dove(ATTACKER, 5))
        wait_for(lambda: ATTACKER in w.members(), what="auto-ban without the ipset binary")
        r = lab.burst("c0", 110, 3)
        assert r.ok == 0 and r.timeout == 3            # the kernel drops the attacker's SYNs
        assert lab.burst("c1", 110, 2).ok == 2           # others still get through
        # the CLI too: ban, bans, unban
        cp = lab.run(lab.server, ["env", f"SSH_CONNECTION={SSH_ADMIN} 50022 192.0.2.1 22",
                                  "env", f"PYTHONPATH={REPO}", *w.argv("ban", "203.0.113.11")], check=False)
        assert cp.returncode == 0, cp.stderr
        wait_for(lambda: "203.0.113.11" in w.members(), what="CLI ban")
        assert lab.burst("c1", 110, 2).ok == 0
        assert "203.0.113.11" in w.cli("bans").stdout
        assert w.cli("unban", "203.0.113.11").returncode == 0
        assert "203.0.113.11" not in w.members()
        assert not w.marker.exists(), w.marker.read_text()  # `ipset` was never run
    finally:
        w.stop()
