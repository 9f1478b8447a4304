"""One conformance suite for the kernel backends (``legacy`` = python-iptables, ``nft`` =
iptables-nft binaries), run in throwaway network namespaces; the ``sim`` backend runs the
cases that apply to it in-process (skipped until popwatch/firewall/sim.py exists)."""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
import time
from typing import Any

import pytest

from popwatch.firewall import rules as R
from popwatch.model import PortLimit, Rate

from .conftest import KERNEL_BACKENDS, ipt_cmd, make_fw, save_cmd
from .fwdriver import RemoteError
from .nslab import Lab

pytestmark = pytest.mark.netns

HOSTILE = ["example.com", "localhost", "1.2.3.4; rm -rf /", "203.0.113.5 timeout 0",
           "-exist", "", "   ", "999.1.1.1", "203.0.113.0/24", "2001:db8::/64",
           "203.0.113.5\n198.51.100.5", "$(reboot)", "0x7f.1", "1e100.net"]


def norm_save(text: str) -> str:
    """iptables-save without its comment lines and with policy counters zeroed."""
    lines = [l for l in text.splitlines() if not l.startswith("#")]
    return "\n".join(re.sub(r"^(:\S+ \S+) \[\d+:\d+\]$", r"\1 [0:0]", l) for l in lines)


def save(lab: Lab, backend: str, family: int) -> str:
    return norm_save(lab.run(lab.server, save_cmd(backend, family)).stdout)


def ipt(lab: Lab, backend: str, family: int, *args: str, check: bool = True) -> str:
    return lab.run(lab.server, [ipt_cmd(backend, family), "-w", "10", *args], check=check).stdout


def seed_admin(lab: Lab, backend: str) -> None:
    """Admin rules installed before popwatch: a custom chain, ACCEPT/DROP rules, a policy."""
    for fam, src, other in ((4, "198.51.100.7", "198.51.100.0/24"), (6, "2001:db8:99::7", "2001:db8:99::/48")):
        ipt(lab, backend, fam, "-N", "ADMIN")
        ipt(lab, backend, fam, "-A", "ADMIN", "-s", other, "-p", "tcp", "--dport", "25", "-j", "ACCEPT")
        ipt(lab, backend, fam, "-A", "INPUT", "-i", "lo", "-j", "ACCEPT")
        ipt(lab, backend, fam, "-A", "INPUT", "-s", src, "-j", "DROP")
        ipt(lab, backend, fam, "-A", "INPUT", "-j", "ADMIN")
        ipt(lab, backend, fam, "-P", "FORWARD", "DROP")


def chain(lab: Lab, backend: str, family: int) -> list[str]:
    return [l for l in ipt(lab, backend, family, "-S", R.CHAIN).splitlines() if l.startswith("-A")]


def ipset_members(lab: Lab, name: str) -> set[str]:
    out = lab.run(lab.server, ["ipset", "list", name]).stdout
    members = out.split("Members:", 1)[1] if "Members:" in out else ""
    return {l.split()[0] for l in members.splitlines() if l.strip()}


LIMITS = [PortLimit(110), PortLimit(143, "global", Rate.parse("5/second"), 10),
          PortLimit(22, "per-source", Rate.parse("1/second"), 3)]


@pytest.fixture(params=KERNEL_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def fw(lab: Lab, backend: str, lock: str) -> Any:
    return make_fw(lab, backend, lock)


# ---------------------------------------------------------------------------------- install

def test_install_layout_and_idempotent(lab: Lab, backend: str, fw: Any) -> None:
    seed_admin(lab, backend)
    fw.install(LIMITS)
    for fam in (4, 6):
        inp = [l for l in ipt(lab, backend, fam, "-S", "INPUT").splitlines() if l.startswith("-A")]
        assert inp[0] == "-A INPUT -j POPWATCH"
        assert sum(l == "-A INPUT -j POPWATCH" for l in inp) == 1
        want = R.chain_rules(LIMITS, fam)  # type: ignore[arg-type]
        got = chain(lab, backend, fam)
        assert [R.sem_key(R.parse_rule_line(l).args) for l in got] == [R.sem_key(s.args) for s in want]
        assert "ACCEPT" not in " ".join(got)
    assert {p: l["mode"] for p, l in fw.limits().items()} == {"110": "count", "143": "global", "22": "per-source"}
    first = [save(lab, backend, f) for f in (4, 6)]
    fw.install(LIMITS)  # twice: nothing changes, nothing duplicated
    assert [save(lab, backend, f) for f in (4, 6)] == first


def test_install_adopts_existing_and_fixes_duplicate_jumps(lab: Lab, backend: str, fw: Any, lock: str) -> None:
    seed_admin(lab, backend)
    fw.install(LIMITS)
    names_before = [l for l in chain(lab, backend, 4) if "hashlimit-name" in l]
    ipt(lab, backend, 4, "-A", "INPUT", "-j", "POPWATCH")  # a second jump, e.g. a restored dump
    fresh = make_fw(lab, backend, lock)                      # a new process adopts the rules
    fresh.install(LIMITS)
    inp = [l for l in ipt(lab, backend, 4, "-S", "INPUT").splitlines() if l.startswith("-A")]
    assert inp.count("-A INPUT -j POPWATCH") == 1 and inp[0] == "-A INPUT -j POPWATCH"
    assert [l for l in chain(lab, backend, 4) if "hashlimit-name" in l] == names_before


# ---------------------------------------------------------------------------------- bans

def test_ban_v4_mapped_v6_unban(lab: Lab, backend: str, fw: Any) -> None:
    fw.install(LIMITS)
    fw.ban("203.0.113.50", 3600)
    fw.ban("::ffff:198.51.100.9")
    fw.ban("2001:db8:5::3", 600)
    assert ipset_members(lab, "popwatch4") == {"203.0.113.50", "198.51.100.9"}
    assert ipset_members(lab, "popwatch6") == {"2001:db8:5::/64"}
    bans = fw.bans()
    assert bans["198.51.100.9"] is None                   # permanent
    assert 3500 < bans["203.0.113.50"] <= 3600
    assert "2001:db8:5::/64" in bans
    assert fw.ban_key("2001:db8:5::3") == "2001:db8:5::/64"
    fw.unban("203.0.113.50")
    fw.unban("203.0.113.50")                              # not banned: no error
    fw.unban("2001:db8:5::77")                            # same /64: lifts that ban
    assert set(fw.bans()) == {"198.51.100.9"}


def test_ban_expires_in_kernel(lab: Lab, backend: str, fw: Any) -> None:
    fw.install(LIMITS)
    fw.ban("203.0.113.60", 1)
    assert "203.0.113.60" in fw.bans()
    deadline = time.monotonic() + 6
    while "203.0.113.60" in fw.bans() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "203.0.113.60" not in fw.bans()


def test_bulk_ban(lab: Lab, backend: str, fw: Any) -> None:
    fw.install(LIMITS)
    items = [[f"203.0.113.{i}", 600] for i in range(1, 201)] + [["2001:db8:7::1", None]]
    assert fw.ban_many(items) == 201
    assert len(ipset_members(lab, "popwatch4")) == 200
    assert ipset_members(lab, "popwatch6") == {"2001:db8:7::/64"}


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_address_strings_refused(lab: Lab, backend: str, fw: Any, text: str) -> None:
    fw.install(LIMITS)
    with pytest.raises(RemoteError) as ei:
        fw.ban(text, 60, net=False)
    assert ei.value.type == "FirewallError"
    assert ipset_members(lab, "popwatch4") == set() and ipset_members(lab, "popwatch6") == set()


def test_networks_only_when_allowed(lab: Lab, backend: str, fw: Any) -> None:
    fw.install(LIMITS)
    with pytest.raises(RemoteError):
        fw.ban("203.0.113.0/30", 60, net=False)
    fw.ban("203.0.113.0/30", 60, net=True)
    assert ipset_members(lab, "popwatch4") == {f"203.0.113.{i}" for i in range(4)}
    with pytest.raises(RemoteError):
        fw.ban("198.51.100.0/16", 60, net=True)            # too large for hash:ip
    fw.ban("2001:db8:40::/48", 60, net=True)
    assert "2001:db8:40::/48" in ipset_members(lab, "popwatch6")


# ---------------------------------------------------------------------------------- limits

def test_limit_change_carries_counters_and_renames_hashlimit(lab: Lab, backend: str, fw: Any) -> None:
    fw.install(LIMITS)
    lab.listen()
    r = lab.burst("c0", 22, 3)
    assert r.ok == 3
    before = fw.counters()["22"]
    assert before["passed"] == 3
    name0 = re.search(r"--hashlimit-name (\S+)", "\n".join(chain(lab, backend, 4))).group(1)
    other = [l for l in chain(lab, backend, 4) if "--dport 143" in l]
    fw.set_limit(PortLimit(22, "per-source", Rate.parse("7/minute"), 4))
    after = fw.counters()["22"]
    assert after == before                                  # carried over (-c / iptc counters)
    text = "\n".join(chain(lab, backend, 4))
    name1 = re.search(r"--hashlimit-name (\S+)", text).group(1)
    assert name1 != name0 and "--hashlimit-upto 7/min --hashlimit-burst 4" in text
    assert fw.limits()["22"] == {"port": 22, "mode": "per-source", "rate": "7/minute", "burst": 4}
    # other ports untouched (their buckets are not refilled)
    assert [l for l in chain(lab, backend, 4) if "--dport 143" in l] == other


def test_mode_switch(lab: Lab, backend: str, fw: Any) -> None:
    fw.install(LIMITS)
    lab.listen()
    assert lab.burst("c0", 110, 2).ok == 2
    for mode in ("global", "per-source", "count", "per-source"):
        fw.set_limit(PortLimit(110, mode, Rate.parse("2/second"), 6))
        lim = fw.limits()["110"]
        assert lim["mode"] == mode
        for fam in (4, 6):
            rules = [l for l in chain(lab, backend, fam) if "--dport 110 " in l]
            assert len(rules) == (1 if mode == "count" else 2)
            assert ("-m limit" in rules[0]) == (mode == "global")
            assert ("-m hashlimit" in rules[0]) == (mode == "per-source")
            if mode == "per-source":
                assert ("--hashlimit-srcmask 64" in rules[0]) == (fam == 6)
        assert fw.counters()["110"]["passed"] == 2          # carried through every switch
    # the order of the ports' rule blocks is kept
    ports = [int(re.search(r"--dport (\d+)", l).group(1)) for l in chain(lab, backend, 4) if "--dport" in l]
    assert [p for i, p in enumerate(ports) if i == 0 or ports[i - 1] != p] == [110, 143, 22]


# ---------------------------------------------------------------------------------- uninstall

def test_uninstall_restores_exact_ruleset(lab: Lab, backend: str, fw: Any) -> None:
    seed_admin(lab, backend)
    before = [save(lab, backend, f) for f in (4, 6)]
    fw.install(LIMITS)
    fw.ban("203.0.113.9", 60)
    fw.ban("2001:db8:5::1", 60)
    fw.set_limit(PortLimit(143, "per-source", Rate.parse("1/second"), 2))
    assert save(lab, backend, 4) != before[0]
    fw.uninstall()
    assert [save(lab, backend, f) for f in (4, 6)] == before
    assert lab.run(lab.server, ["ipset", "list", "-n"]).stdout.split() == []
    fw.uninstall()  # twice is fine


def test_uninstall_on_clean_host_nft(lab: Lab, lock: str) -> None:
    """nft: a namespace with no ruleset at all gets back to no ruleset at all."""
    fw = make_fw(lab, "nft", lock)
    before = [save(lab, "nft", f) for f in (4, 6)]
    fw.install(LIMITS)
    fw.uninstall()
    assert [save(lab, "nft", f) for f in (4, 6)] == before
    assert lab.run(lab.server, ["nft", "list", "ruleset"]).stdout.strip() == ""


# ---------------------------------------------------------------------------------- concurrency

_WRITER = r"""
import subprocess, sys
binary, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    subprocess.run([binary, "-w", "10", "-A", "INPUT", "-s", f"198.51.100.{i + 1}", "-j", "DROP"], check=True)
print("done")
"""


def test_concurrent_iptables_writer_loses_nothing(lab: Lab, backend: str, fw: Any) -> None:
    seed_admin(lab, backend)
    fw.install(LIMITS)
    n = 60
    writer = lab.popen(lab.server, [sys.executable, "-c", _WRITER, ipt_cmd(backend, 4), str(n)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    modes = ["global", "per-source", "count"]
    k = 0
    while writer.poll() is None and k < 60:                  # bounded
        fw.set_limit(PortLimit(143, modes[k % 3], Rate.parse(f"{k % 9 + 1}/second"), 3))
        fw.ban(f"203.0.113.{k + 1}", 600)
        k += 1
    out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    assert k >= 3                                             # changes really interleaved
    inp = [l for l in ipt(lab, backend, 4, "-S", "INPUT").splitlines() if l.startswith("-A")]
    admin = [l for l in inp if l.startswith("-A INPUT -s 198.51.100.") and l.endswith("-j DROP")]
    assert admin[1:] == [f"-A INPUT -s 198.51.100.{i + 1}/32 -j DROP" for i in range(n)]
    assert inp[0] == "-A INPUT -j POPWATCH" and inp.count("-A INPUT -j POPWATCH") == 1
    assert fw.limits()["143"]["mode"] == modes[(k - 1) % 3]
    assert len(ipset_members(lab, "popwatch4")) == k


# ---------------------------------------------------------------------------------- dry run

def test_dry_run_changes_nothing(lab: Lab, backend: str, lock: str) -> None:
    seed_admin(lab, backend)
    before = [save(lab, backend, f) for f in (4, 6)]
    dry = make_fw(lab, backend, lock, dry_run=True)
    plan = dry.describe_install(LIMITS)
    assert any("ipset create popwatch4 hash:ip" in l for l in plan)
    assert any("POPWATCH" in l for l in plan)
    dry.install(LIMITS)
    dry.ban("203.0.113.5", 60)
    assert [save(lab, backend, f) for f in (4, 6)] == before
    assert lab.run(lab.server, ["ipset", "list", "-n"]).stdout.split() == []
    real = make_fw(lab, backend, lock)
    real.install(LIMITS)
    assert real.describe_ban("203.0.113.5", 90) == ["ipset -exist add popwatch4 203.0.113.5 timeout 90"]
    assert real.describe_ban("2001:db8:5::1") == ["ipset -exist add popwatch6 2001:db8:5::/64 timeout 0"]
    plan = real.describe_limit(PortLimit(110, "global", Rate.parse("3/second"), 4))
    assert any("--limit 3/sec --limit-burst 4" in l for l in plan)
    assert ipset_members(lab, "popwatch4") == set()
    assert not [l for l in chain(lab, backend, 4) if "--limit 3/sec" in l]


# ---------------------------------------------------------------------------------- sim

def _sim() -> Any:
    from popwatch.firewall.sim import SimFirewall

    now = [1000.0]
    fw = SimFirewall(clock=lambda: now[0])
    return fw, now


def _covered(bans: dict[str, Any], ip: str) -> bool:
    a = ipaddress.ip_address(ip)
    return any(a in ipaddress.ip_network(k, strict=False) for k in bans)


@pytest.mark.parametrize("case", ["install", "bans", "expiry", "limits", "hostile"])
def test_sim_conformance(case: str) -> None:
    """The cases of this suite that apply to the simulated backend (no kernel)."""
    fw, now = _sim()
    fw.install(LIMITS)
    if case == "install":
        fw.install(LIMITS)
        assert {p: l.mode for p, l in fw.limits().items()} == {110: "count", 143: "global", 22: "per-source"}
    elif case == "bans":
        fw.ban("203.0.113.50", 3600)
        fw.ban("::ffff:198.51.100.9")
        fw.ban("2001:db8:5::3", 600)
        b = fw.bans()
        assert "198.51.100.9" in b and b["198.51.100.9"] is None
        assert _covered(b, "2001:db8:5::3")
        fw.unban("203.0.113.50")
        fw.unban("203.0.113.50")
        assert "203.0.113.50" not in fw.bans()
    elif case == "expiry":
        fw.ban("203.0.113.60", 1)
        now[0] += 2
        assert "203.0.113.60" not in fw.bans()
    elif case == "limits":
        for mode in ("global", "per-source", "count"):
            fw.set_limit(PortLimit(110, mode, Rate.parse("2/second"), 6))
            assert fw.limits()[110].mode == mode
    elif case == "hostile":
        for text in ["example.com", "1.2.3.4; rm -rf /", "", "999.1.1.1", "$(reboot)"]:
            with pytest.raises((ValueError, RuntimeError)):
                fw.ban(text, 60)
        assert fw.bans() == {}


def test_poll_follows_changes_made_by_another_process(lab: Lab, backend: str, fw: Any, lock: str) -> None:
    """Polls cache what each rule means (by nf_tables handle / libiptc entry bytes); a retune
    by another popwatch process (`popwatch limit` while the TUI runs) must be picked up."""
    fw.install(LIMITS)
    lab.listen()
    assert lab.burst("c0", 110, 3).ok == 3
    assert fw.counters()["110"] == {"port": 110, "passed": 3, "dropped": 0}
    other = make_fw(lab, backend, lock)
    other.set_limit(PortLimit(110, "global", Rate.parse("1/minute"), 1))
    r = lab.burst("c0", 110, 3)
    assert (r.ok, r.timeout) == (1, 2)
    assert fw.counters()["110"] == {"port": 110, "passed": 4, "dropped": 2}
    assert fw.limits()["110"]["mode"] == "global"
