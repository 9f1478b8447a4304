"""Conformance of the native ``nftables`` backend (popwatch's own ``table inet popwatch``),
in throwaway namespaces: the cases of test_fw_conformance.py that read iptables/ipset output,
asserted on ``nft -j`` output instead; plus: no iptables or ipset object is ever created, and
``uninstall`` leaves ``nft list ruleset`` exactly as it was (the admin's nft table and an
iptables-nft ``ip filter`` table included). Real traffic: test_fw_traffic.py runs for it too."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from popwatch.model import PortLimit, Rate

from .conftest import make_fw
from .fwdriver import RemoteError
from .nslab import Lab

pytestmark = pytest.mark.netns

LIMITS = [PortLimit(110), PortLimit(143, "global", Rate.parse("5/second"), 10),
          PortLimit(22, "per-source", Rate.parse("1/second"), 3)]
HOSTILE = ["example.com", "1.2.3.4; rm -rf /", "203.0.113.5 timeout 0", "", "999.1.1.1",
           "203.0.113.0/24", "2001:db8::/64", "203.0.113.5\n198.51.100.5", "$(reboot)", "0x7f.1"]


@pytest.fixture
def fw(lab: Lab, lock: str) -> Any:
    return make_fw(lab, "nftables", lock)


def nft(lab: Lab, *args: str, check: bool = True) -> str:
    return lab.run(lab.server, ["nft", *args], check=check).stdout


def ruleset(lab: Lab) -> str:
    """``nft list ruleset`` with counter values zeroed (traffic may change them)."""
    return re.sub(r"packets \d+ bytes \d+", "packets 0 bytes 0", nft(lab, "list", "ruleset"))


def chain_rules(lab: Lab) -> list[dict[str, Any]]:
    out = json.loads(nft(lab, "-j", "list", "chain", "inet", "popwatch", "input"))["nftables"]
    return [o["rule"] for o in out if "rule" in o]


def chain_text(lab: Lab) -> list[str]:
    text = nft(lab, "list", "chain", "inet", "popwatch", "input")
    return [l.strip() for l in text.splitlines() if "comment" in l]


def members(lab: Lab, name: str) -> set[str]:
    out = json.loads(nft(lab, "-j", "list", "set", "inet", "popwatch", name))["nftables"]
    elems = next(o["set"] for o in out if "set" in o).get("elem", [])
    got = set()
    for e in elems:
        v = e["elem"]["val"] if isinstance(e, dict) and "elem" in e else e
        got.add(f"{v['prefix']['addr']}/{v['prefix']['len']}" if isinstance(v, dict) else v)
    return got


def no_iptables_objects(lab: Lab) -> None:
    for binary in ("iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"):
        assert "POPWATCH" not in lab.run(lab.server, [binary], check=False).stdout
    assert lab.run(lab.server, ["ipset", "list", "-n"]).stdout.split() == []


def seed_admin(lab: Lab) -> None:
    """An admin's own nft table and an iptables-nft ``ip filter`` table, before popwatch."""
    lab.run(lab.server, ["nft", "-f", "-"], input=(
        "table inet admin {\n set friends { type ipv4_addr; elements = { 198.51.100.7 } }\n"
        " chain in { type filter hook input priority filter; policy accept;\n"
        "  ip saddr @friends tcp dport 25 accept\n  ip saddr 198.51.100.66 counter drop\n }\n}\n"))
    lab.run(lab.server, ["iptables-nft", "-w", "10", "-A", "INPUT", "-s", "198.51.100.8", "-j", "DROP"])
    lab.run(lab.server, ["ip6tables-nft", "-w", "10", "-A", "INPUT", "-s", "2001:db8:99::8", "-j", "DROP"])


def test_install_layout_idempotent_and_no_iptables_objects(lab: Lab, fw: Any) -> None:
    seed_admin(lab)
    fw.install(LIMITS)
    chain = json.loads(nft(lab, "-j", "list", "chain", "inet", "popwatch", "input"))["nftables"]
    base = next(o["chain"] for o in chain if "chain" in o)
    assert (base["hook"], base["prio"], base["policy"]) == ("input", -10, "accept")  # before filter (0)
    rules = chain_rules(lab)
    verdicts = [k for r in rules for e in r["expr"] for k in e if k in ("accept", "drop", "return", "reject")]
    assert "accept" not in verdicts                      # popwatch never accepts
    assert [r["comment"] for r in rules[:2]] == ["pw exempt", "pw exempt"]  # protected first
    text = "\n".join(chain_text(lab))
    assert 'limit rate 5/second burst 10 packets counter name "pass_143" return' in text
    assert "update @ps6_22_1 { ip6 saddr & ffff:ffff:ffff:ffff:: limit rate 1/second burst 3 packets }" in text
    assert {p: l["mode"] for p, l in fw.limits().items()} == {"110": "count", "143": "global", "22": "per-source"}
    first = ruleset(lab)
    fw.install(LIMITS)                                   # twice: nothing changes
    assert ruleset(lab) == first
    no_iptables_objects(lab)


def test_ban_v4_mapped_v6_unban_bulk(lab: Lab, fw: Any) -> None:
    fw.install(LIMITS)
    fw.ban("203.0.113.50", 3600)
    fw.ban("::ffff:198.51.100.9")
    fw.ban("2001:db8:5::3", 600)
    assert members(lab, "ban4") == {"203.0.113.50", "198.51.100.9"}
    assert members(lab, "ban6") == {"2001:db8:5::"}       # keyed on the /64
    bans = fw.bans()
    assert bans["198.51.100.9"] is None
    assert 3500 < bans["203.0.113.50"] <= 3600
    assert "2001:db8:5::/64" in bans and fw.ban_key("2001:db8:5::3") == "2001:db8:5::/64"
    fw.ban("203.0.113.50", 60)                            # a re-ban sets the new timeout
    assert fw.bans()["203.0.113.50"] <= 60
    fw.unban("203.0.113.50")
    fw.unban("203.0.113.50")                              # not banned: no error
    fw.unban("2001:db8:5::77")                            # same /64
    assert set(fw.bans()) == {"198.51.100.9"}
    items = [[f"10.{i >> 8}.{i & 255}.1", 600] for i in range(10000)] + [["2001:db8:7::1", None]]
    assert fw.ban_many(items) == 10001
    assert len(fw.bans()) == 10002
    for text in HOSTILE:
        with pytest.raises(RemoteError):
            fw.ban(text, 60, net=False)
    fw.ban("203.0.113.0/30", 60, net=True)
    fw.ban("2001:db8:40::/48", 60, net=True)
    assert {f"203.0.113.{i}" for i in range(4)} <= members(lab, "ban4")
    assert members(lab, "ban6n") == {"2001:db8:40::/48"}
    with pytest.raises(RemoteError):
        fw.ban("198.51.100.0/16", 60, net=True)
    no_iptables_objects(lab)


def test_ban_expires_in_kernel(lab: Lab, fw: Any) -> None:
    fw.install(LIMITS)
    fw.ban("203.0.113.60", 1)
    assert "203.0.113.60" in fw.bans()
    deadline = time.monotonic() + 6
    while "203.0.113.60" in fw.bans() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "203.0.113.60" not in fw.bans()


def test_retune_keeps_counters_place_and_other_ports(lab: Lab, fw: Any) -> None:
    fw.install(LIMITS)
    lab.listen()
    assert lab.burst("c0", 22, 3).ok == 3
    before = fw.counters()["22"]
    assert before["passed"] == 3
    other = [l for l in chain_text(lab) if "dport 143" in l]
    handles_143 = [r["handle"] for r in chain_rules(lab) if "port 143" in r["comment"]]
    fw.set_limit(PortLimit(22, "per-source", Rate.parse("7/minute"), 4))
    assert fw.counters()["22"] == before                  # named counters survive the retune
    text = "\n".join(chain_text(lab))
    assert "@ps4_22_2 { ip saddr limit rate 7/minute burst 4 packets }" in text and "ps4_22_1" not in text
    assert "ps4_22_1" not in nft(lab, "list", "table", "inet", "popwatch")   # old buckets deleted
    assert [l for l in chain_text(lab) if "dport 143" in l] == other
    assert [r["handle"] for r in chain_rules(lab) if "port 143" in r["comment"]] == handles_143
    for mode in ("global", "count", "per-source"):
        fw.set_limit(PortLimit(110, mode, Rate.parse("2/second"), 6))
        assert fw.limits()["110"]["mode"] == mode
        n = len([l for l in chain_text(lab) if "dport 110" in l])
        assert n == {"count": 1, "global": 2, "per-source": 3}[mode]
    ports = [int(re.search(r"dport (\d+)", l).group(1)) for l in chain_text(lab) if "dport" in l]
    assert [p for i, p in enumerate(ports) if i == 0 or ports[i - 1] != p] == [110, 143, 22]


def test_poll_follows_changes_made_by_another_process(lab: Lab, fw: Any, lock: str) -> None:
    fw.install(LIMITS)
    lab.listen()
    assert lab.burst("c0", 110, 3).ok == 3
    assert fw.counters()["110"] == {"port": 110, "passed": 3, "dropped": 0}
    make_fw(lab, "nftables", lock).set_limit(PortLimit(110, "global", Rate.parse("1/minute"), 1))
    r = lab.burst("c0", 110, 3)
    assert (r.ok, r.timeout) == (1, 2)
    assert fw.counters()["110"] == {"port": 110, "passed": 4, "dropped": 2}
    assert fw.limits()["110"]["mode"] == "global"


def test_uninstall_restores_exact_ruleset(lab: Lab, fw: Any) -> None:
    seed_admin(lab)
    before = ruleset(lab)
    assert "table ip filter" in before and "table inet admin" in before
    fw.install(LIMITS)
    fw.ban("203.0.113.9", 60)
    fw.ban("2001:db8:5::1", 60)
    fw.set_limit(PortLimit(143, "per-source", Rate.parse("1/second"), 2))
    lab.listen()
    lab.burst("c0", 110, 2)
    assert ruleset(lab) != before
    fw.uninstall()
    assert ruleset(lab) == before
    fw.uninstall()                                        # twice is fine
    no_iptables_objects(lab)


def test_uninstall_on_clean_host(lab: Lab, fw: Any) -> None:
    fw.install(LIMITS)
    fw.uninstall()
    assert nft(lab, "list", "ruleset").strip() == ""


def test_dry_run_changes_nothing(lab: Lab, lock: str) -> None:
    dry = make_fw(lab, "nftables", lock, dry_run=True)
    plan = dry.describe_install(LIMITS)
    assert any('"name": "popwatch"' in l for l in plan)
    dry.install(LIMITS)
    dry.ban("203.0.113.5", 60)
    assert nft(lab, "list", "ruleset").strip() == ""
    real = make_fw(lab, "nftables", lock)
    real.install(LIMITS)
    assert real.describe_ban("203.0.113.5", 90) == ["nft add element inet popwatch ban4 { 203.0.113.5 timeout 90s }"]
    assert real.describe_ban("2001:db8:5::1") == ["nft add element inet popwatch ban6 { 2001:db8:5:: }"]
    plan = real.describe_limit(PortLimit(110, "global", Rate.parse("3/second"), 4))
    assert any('"rate": 3, "per": "second", "burst": 4' in l for l in plan)
    assert members(lab, "ban4") == set()
    assert not [l for l in chain_text(lab) if "3/second" in l]


def test_self_heal_after_flush_ruleset(lab: Lab, fw: Any) -> None:
    fw.install(LIMITS)
    fw.set_limit(PortLimit(110, "global", Rate.parse("3/minute"), 2))   # a live retune
    fw.table_touched()                                            # subscribes
    fw.ban("203.0.113.5", 60)
    assert fw.present() is True and fw.table_touched() is False   # adding is no alarm
    assert fw.check_enforcement() == []
    nft(lab, "add", "table", "ip", "other")
    nft(lab, "delete", "table", "ip", "other")                    # another table: no alarm
    assert fw.table_touched() is False
    # a rule deleted by hand: found, and put back without touching the bans
    h = next(r["handle"] for r in chain_rules(lab) if r["comment"].startswith("pw port 143"))
    nft(lab, "delete", "rule", "inet", "popwatch", "input", "handle", str(h))
    assert fw.check_enforcement() == ["rules of port 143 changed"]
    assert fw.repair({"203.0.113.5": 60}) == ["put back rules of port 143 changed"]
    assert fw.check_enforcement() == [] and members(lab, "ban4") == {"203.0.113.5"}
    fw.table_touched()
    nft(lab, "flush", "ruleset")
    deadline = time.monotonic() + 5
    seen = False
    while not seen and time.monotonic() < deadline:               # events are asynchronous
        seen = fw.table_touched()
        time.sleep(0.05)
    assert seen
    assert fw.present() is False
    assert fw.counters() == {}                            # the poll sees no table, no error
    assert fw.check_enforcement() == ["table inet popwatch (or its input chain) gone"]
    done = fw.repair({"203.0.113.5": 50, "2001:db8:5::/64": None})
    assert done[1] == "restored 2 bans from popwatch's state"
    assert fw.present() is True and fw.check_enforcement() == []
    assert members(lab, "ban4") == {"203.0.113.5"} and members(lab, "ban6") == {"2001:db8:5::"}
    assert {p: l["mode"] for p, l in fw.limits().items()} == {"110": "global", "143": "global", "22": "per-source"}
    assert fw.limits()["110"]["rate"] == "3/minute"
    assert fw.repair({}, stop=None) == []                 # nothing missing: nothing done


def test_auto_choice_and_moving_from_iptables_nft_keeps_bans(lab: Lab, tmp_path: Any) -> None:
    """auto keeps iptables-nft where popwatch's rules already are (and says how to move);
    the documented move loses no ban: the state dir holds them, the new backend restores them."""
    from .test_fw_cli import cli

    state, log = tmp_path / "state", tmp_path / "auth.log"
    log.write_text("")
    assert cli(lab, state, "ban", "203.0.113.5", "--ttl", "1h", backend="nft").returncode == 0
    assert cli(lab, state, "ban", "2001:db8:5::1", "--ttl", "forever", backend="nft").returncode == 0
    st = json.loads(cli(lab, state, "status", "--json", backend="auto").stdout)
    assert st["backend"] == "nft" and any("--backend nftables" in w for w in st["warnings"])
    r = cli(lab, state, "uninstall", backend="nft")
    assert r.returncode == 0, r.stderr
    st = json.loads(cli(lab, state, "status", "--json", backend="auto").stdout)
    assert st["backend"] == "nftables" and "no iptables rules" in st["backend_why"]
    r = cli(lab, state, "watch", "--no-tui", "--log", str(log), "--duration", "2", backend="auto")
    assert r.returncode == 0, r.stderr
    bans = {b["ip"]: b for b in json.loads(cli(lab, state, "bans", "--json", backend="auto").stdout)}
    assert set(bans) == {"203.0.113.5", "2001:db8:5::1"} and bans["2001:db8:5::1"]["expires"] is None
    assert members(lab, "ban4") == {"203.0.113.5"} and members(lab, "ban6") == {"2001:db8:5::"}
    no_iptables_objects(lab)
    assert cli(lab, state, "status", backend="auto").stdout.startswith("backend: nftables (auto: ")
    r = cli(lab, state, "uninstall", backend="nftables")
    assert r.returncode == 0 and nft(lab, "list", "ruleset").strip() == ""


def test_ipv6_prefix_change_keeps_v6_bans(lab: Lab, fw: Any, lock: str) -> None:
    """ban6 is keyed on the configured prefix; a new prefix moves its bans to ban6n (same time left)."""
    fw.install(LIMITS)
    fw.ban("2001:db8:5::3", 600)
    fw.ban("2001:db8:6::3")
    other = make_fw(lab, "nftables", lock, ipv6_prefix=56)
    other.install(LIMITS)
    assert members(lab, "ban6") == set()
    assert members(lab, "ban6n") == {"2001:db8:5::/64", "2001:db8:6::/64"}
    bans = other.bans()
    assert 590 < bans["2001:db8:5::/64"] <= 600 and bans["2001:db8:6::/64"] is None
    assert any("ip6 saddr & ffff:ffff:ffff:ff00:: == @ban6" in l for l in chain_text(lab))
    other.ban("2001:db8:7::1", 60)
    assert "2001:db8:7::/56" in other.bans()


_WRITER = r"""
import subprocess, sys
n = int(sys.argv[1])
for i in range(n):
    subprocess.run(["nft", "add", "rule", "inet", "admin", "in", "ip", "saddr", f"198.51.100.{i + 1}", "drop"],
                   check=True)
print("done")
"""


def test_concurrent_nft_writer_loses_nothing(lab: Lab, fw: Any) -> None:
    import subprocess
    import sys

    seed_admin(lab)
    fw.install(LIMITS)
    n = 60
    writer = lab.popen(lab.server, [sys.executable, "-c", _WRITER, str(n)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    modes = ["global", "per-source", "count"]
    k = 0
    while writer.poll() is None and k < 60:                   # bounded
        fw.set_limit(PortLimit(143, modes[k % 3], Rate.parse(f"{k % 9 + 1}/second"), 3))
        fw.ban(f"203.0.113.{k + 1}", 600)
        k += 1
    _, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    assert k >= 3                                             # changes really interleaved
    admin = [l.strip() for l in nft(lab, "list", "chain", "inet", "admin", "in").splitlines()
             if l.strip().startswith("ip saddr 198.51.100.") and l.strip().endswith(" drop")]
    assert admin[1:] == [f"ip saddr 198.51.100.{i + 1} drop" for i in range(n)]   # after the seeded one
    assert fw.limits()["143"]["mode"] == modes[(k - 1) % 3]
    assert len(members(lab, "ban4")) == k
    assert fw.check_enforcement() == []
