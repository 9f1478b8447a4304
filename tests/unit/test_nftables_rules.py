"""The pure parts of the native nftables backend: rule comments, the JSON rules per mode, dry-run
descriptions (no kernel here; tests/netns/test_fw_nftables.py drives the real thing)."""

from __future__ import annotations

import json

import pytest

from popwatch.firewall import nftables as N
from popwatch.model import PortLimit, Rate


@pytest.mark.parametrize("lim", [PortLimit(110), PortLimit(143, "global", Rate.parse("5/second"), 10),
                                 PortLimit(22, "per-source", Rate.parse("3/hour"), 1)])
def test_comment_round_trip(lim: PortLimit) -> None:
    assert N.parse_comment(N.port_comment(lim, 7)) == (lim, 7)


@pytest.mark.parametrize("text", ["", "pw port 99999 count 1/second 5 1", "pw port 22 fast 1/second 5 1",
                                  "pw port 22 global 5/fortnight 5 1", "pw port 22 global 5/second 0 1",
                                  "pw exempt", "pw port 22 count 1/second 5 1; drop"])
def test_bad_comments_are_not_popwatch_ports(text: str) -> None:
    assert N.parse_comment(text) is None


def test_rules_per_mode_never_accept() -> None:
    count = N.port_rules(PortLimit(110), 1, 64)
    glob = N.port_rules(PortLimit(110, "global", Rate.parse("2/minute"), 4), 1, 64)
    per = N.port_rules(PortLimit(110, "per-source", Rate.parse("2/minute"), 4), 3, 56)
    assert [len(x) for x in (count, glob, per)] == [1, 2, 3]
    text = json.dumps([count, glob, per, N.head_rules("reject", 64), N.head_rules("drop", 64)])
    assert '"accept"' not in text
    assert {"limit": {"rate": 2, "per": "minute", "burst": 4}} in glob[0]["rule"]["expr"]
    sets = [e["set"]["set"] for r in per[:2] for e in r["rule"]["expr"] if "set" in e]
    assert sets == ["@ps4_110_3", "@ps6_110_3"]
    assert "ffff:ffff:ffff:ff00::" in json.dumps(per[1])          # /56 buckets for IPv6
    assert all(r["rule"]["expr"][-1] == {"drop": None} for r in (glob[1], per[2]))
    assert [d["set"]["name"] for d in N.ps_set_defs(PortLimit(110, "per-source"), 3)] == ["ps4_110_3", "ps6_110_3"]
    assert N.ps_set_defs(PortLimit(110, "global"), 3) == []


def test_head_rules_protected_first() -> None:
    head = N.head_rules("drop", 64)
    assert [r["rule"]["comment"] for r in head] == ["pw exempt"] * 2 + ["pw ban drop /64"] * 3
    assert len(N.head_rules("reject", 64)) == 2 + 6               # tcp reset + the rest, per set


def test_describe_elements_in_nft_syntax() -> None:
    cmds = [{"add": {"element": {"family": "inet", "table": "popwatch", "name": "ban4",
                                 "elem": [{"elem": {"val": "203.0.113.5", "timeout": 90}}, "198.51.100.9"]}}},
            {"delete": {"element": {"family": "inet", "table": "popwatch", "name": "ban6n",
                                    "elem": [{"prefix": {"addr": "2001:db8:40::", "len": 48}}]}}}]
    assert N.describe(cmds) == ["nft add element inet popwatch ban4 { 203.0.113.5 timeout 90s, 198.51.100.9 }",
                                "nft delete element inet popwatch ban6n { 2001:db8:40::/48 }"]


def test_mask6() -> None:
    assert N._mask6(64) == "ffff:ffff:ffff:ffff::"
    assert N._mask6(128) == "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"


def test_a_closed_context_is_an_error_not_a_crash() -> None:
    """libnftables dereferences the context it is given: after close() a call must raise
    (a Monitor closes its firewall; a NULL context would kill the process with SIGSEGV)."""
    from popwatch.firewall.base import FirewallError
    from popwatch.firewall.nftables import Libnftables

    lib = Libnftables()
    lib.close()
    with pytest.raises(FirewallError, match="closed"):
        lib.run([{"list": {"tables": None}}])
