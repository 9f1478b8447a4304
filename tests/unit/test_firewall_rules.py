"""Pure tests of the chain/rule model: rendering, reading back, planning, addresses."""

from __future__ import annotations

import pytest

from popwatch.firewall import rules as R
from popwatch.firewall.base import FirewallError
from popwatch.model import PortLimit, Rate

LIMITS = [PortLimit(110), PortLimit(143, "global", Rate.parse("5/second"), 10),
          PortLimit(22, "per-source", Rate.parse("1/minute"), 3)]

# what `iptables -S POPWATCH -v` (1.8.9) printed for LIMITS, captured in a namespace
S_OUTPUT = """-N POPWATCH
-A POPWATCH -m set --match-set popwatchx4 src -c 40 2400 -j RETURN
-A POPWATCH -m set --match-set popwatch4 src -c 12 720 -j DROP
-A POPWATCH -p tcp -m tcp --dport 110 --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -c 7 420 -j RETURN
-A POPWATCH -p tcp -m tcp --dport 143 --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -m limit --limit 5/sec --limit-burst 10 -c 3 180 -j RETURN
-A POPWATCH -p tcp -m tcp --dport 143 --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -c 5 300 -j DROP
-A POPWATCH -p tcp -m tcp --dport 22 --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -m hashlimit --hashlimit-upto 1/min --hashlimit-burst 3 --hashlimit-mode srcip --hashlimit-name pw22_4 --hashlimit-htable-expire 181000 -c 2 120 -j RETURN
-A POPWATCH -p tcp -m tcp --dport 22 --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -c 9 540 -j DROP
"""


def state() -> R.ChainState:
    return R.ChainState(exists=True, rules=R.parse_chain(S_OUTPUT), jumps=1, jump_first=True)


def test_render_matches_what_iptables_prints() -> None:
    got = [" ".join(s.args) for s in R.chain_rules(LIMITS, 4, gens={22: 4})]
    printed = [" ".join(r.args) for r in R.parse_chain(S_OUTPUT)]
    assert got == printed


def test_never_accept_and_v6_variants() -> None:
    for fam in (4, 6):
        for action in ("drop", "reject"):
            text = " ".join(" ".join(s.args) for s in R.chain_rules(LIMITS, fam, ban_action=action))  # type: ignore[arg-type]
            assert "ACCEPT" not in text
    v6 = [" ".join(s.args) for s in R.chain_rules(LIMITS, 6, ipv6_prefix=56)]
    assert "--match-set popwatch6 src" in v6[1]
    assert "--hashlimit-srcmask 56" in v6[-2]
    reject = R.ban_rules(6, "reject")
    assert reject[0].args[-2:] == ("--reject-with", "tcp-reset") and reject[0].args[:2] == ("-p", "tcp")
    assert reject[1].args[-1] == "icmp6-port-unreachable"
    with pytest.raises(FirewallError):
        R.ban_rules(4, "accept")


def test_parse_roles_counters_limits() -> None:
    st = state()
    assert [r.role for r in st.rules] == ["exempt", "ban", "pass", "pass", "drop", "pass", "drop"]
    assert st.limits() == {110: PortLimit(110), 143: LIMITS[1], 22: LIMITS[2]}
    assert st.gens() == {22: 4}
    ports, banned = R.counters_by_port(st.rules)
    assert ports == {110: (7, 0), 143: (3, 5), 22: (2, 9)} and banned == 12


def test_parse_rate_spellings() -> None:
    for text, rate in (("5/sec", "5/second"), ("1/min", "1/minute"), ("3/hour", "3/hour"), ("2/day", "2/day")):
        assert str(R.parse_rate(text)) == rate
        assert R.rate_arg(Rate.parse(rate)) == text


def test_count_jumps() -> None:
    assert R.count_jumps("-P INPUT ACCEPT\n-A INPUT -j POPWATCH\n-A INPUT -s 1.2.3.4/32 -j DROP\n") == (1, True)
    assert R.count_jumps("-P INPUT ACCEPT\n-A INPUT -i lo -j ACCEPT\n-A INPUT -j POPWATCH\n"
                         "-A INPUT -c 1 2 -j POPWATCH\n") == (2, False)
    assert R.count_jumps("-A INPUT -p tcp -j POPWATCH\n") == (0, False)


def test_plan_fresh_install() -> None:
    work = R.plan_base(R.ChainState(), 4)
    R.plan_ports(work, LIMITS, 4, gens={}, only=True)
    text = R.render_restore(work.ops)
    assert text.startswith("*filter\n:POPWATCH - [0:0]\n") and text.endswith("COMMIT\n")
    assert "-I INPUT 1 -j POPWATCH" in text
    assert text.count("-A POPWATCH") == 7 and "-D " not in text
    assert "-A POPWATCH -m set --match-set popwatchx4 src -j RETURN\n[0:0] -A POPWATCH -m set --match-set popwatch4" in text


def test_plan_adopts_identical_rules() -> None:
    work = R.plan_base(state(), 4)
    R.plan_ports(work, LIMITS, 4, gens={22: 5}, only=True)
    assert work.ops == []  # nothing to do: buckets and counters stay as they are


def test_plan_retune_one_port_carries_counters() -> None:
    work = R.Work(state())
    new = PortLimit(143, "per-source", Rate.parse("2/second"), 4)
    R.plan_ports(work, [new], 4, gens={143: 1})
    kinds = [(op.kind, op.index) for op in work.ops]
    assert kinds == [("delete", 5), ("delete", 4), ("insert", 4), ("insert", 5)]
    ins = [op for op in work.ops if op.kind == "insert"]
    assert ins[0].counters == (3, 180) and ins[1].counters == (5, 300)
    assert "--hashlimit-name pw143_1" in ins[0].restore_line()
    assert ins[0].restore_line().startswith("[3:180] -I POPWATCH 4 ")
    # the other ports' rules are not touched
    assert [R.sem_key(r.args) for r in work.rules][5:] == [R.sem_key(r.args) for r in state().rules][5:]


def test_plan_mode_switch_to_count_and_back() -> None:
    work = R.Work(state())
    R.plan_ports(work, [PortLimit(22)], 4, gens={})
    assert [op.kind for op in work.ops] == ["delete", "delete", "append"]  # 22 is the last block
    assert work.rules[-1].role == "pass" and work.rules[-1].pkts == 2


def test_plan_removes_stale_ports_on_install_only() -> None:
    work = R.Work(state())
    R.plan_ports(work, [PortLimit(110)], 4, gens={}, only=False)
    assert work.ops == []
    work = R.plan_base(state(), 4)
    R.plan_ports(work, [PortLimit(110)], 4, gens={}, only=True)
    assert {r.port for r in work.rules} == {None, 110}


def test_plan_base_fixes_jumps_and_ban_action() -> None:
    st = state()
    st.jumps = 3
    work = R.plan_base(st, 4, "reject")
    kinds = [op.kind for op in work.ops]
    assert kinds.count("jump_delete") == 3 and kinds.count("jump_insert") == 1
    assert [r.role for r in work.rules[:3]] == ["exempt", "ban", "ban"]
    assert work.rules[1].pkts == 12 and work.rules[0].pkts == 40  # counters carried by role


def test_uninstall_plan() -> None:
    st = state()
    st.jumps = 2
    assert R.render_restore(R.plan_uninstall(st)) == \
        "*filter\n-D INPUT -j POPWATCH\n-D INPUT -j POPWATCH\n-F POPWATCH\n-X POPWATCH\nCOMMIT\n"
    assert R.plan_uninstall(R.ChainState()) == []


def test_op_commands_for_dry_run() -> None:
    op = R.Op("insert", 2, R.port_rules(PortLimit(110), 4)[0], (5, 300))
    assert op.command("iptables-legacy")[:5] == ["iptables-legacy", "-w", "-I", "POPWATCH", "2"]
    assert op.command("iptables-legacy")[-3:] == ["-c", "5", "300"]


@pytest.mark.parametrize("text,set_name,entry", [
    ("203.0.113.5", "popwatch4", "203.0.113.5"),
    ("::ffff:198.51.100.9", "popwatch4", "198.51.100.9"),
    ("::ffff:c633:6409", "popwatch4", "198.51.100.9"),
    ("2001:db8:5::3", "popwatch6", "2001:db8:5::/64"),
    ("[2001:db8:5::3]", "popwatch6", "2001:db8:5::/64"),
    (" 203.0.113.5 ", "popwatch4", "203.0.113.5"),
])
def test_ban_entry(text: str, set_name: str, entry: str) -> None:
    e = R.ban_entry(text)
    assert (e.set_name, e.entry) == (set_name, entry)


@pytest.mark.parametrize("text", ["example.com", "localhost", "1.2.3.4; rm -rf /", "", "-exist",
                                  "203.0.113.0/24", "999.1.1.1", "1.2.3.4 timeout 0", "0x7f.1",
                                  "203.0.113.5\n198.51.100.5", "$(reboot)"])
def test_ban_entry_refuses(text: str) -> None:
    with pytest.raises(FirewallError):
        R.ban_entry(text)


def test_ban_entry_networks() -> None:
    assert R.ban_entry("203.0.113.0/30", allow_net=True).entry == "203.0.113.0/30"
    assert R.ban_entry("2001:db8:40::/48", allow_net=True).entry == "2001:db8:40::/48"
    assert R.ban_entry("2001:db8:40::1/120", allow_net=True).entry == "2001:db8:40::/64"
    assert R.ban_entry("2001:db8:5::3", ipv6_prefix=128).entry == "2001:db8:5::3/128"
    with pytest.raises(FirewallError, match="too large"):
        R.ban_entry("198.51.100.0/16", allow_net=True)


def test_ttl_seconds() -> None:
    assert R.ttl_seconds(None) == 0 and R.ttl_seconds(0) == 0
    assert R.ttl_seconds(0.2) == 1 and R.ttl_seconds(3600) == 3600
    assert R.ttl_seconds(10**12) == R.MAX_TIMEOUT


def test_hashlimit_expiry_covers_refill() -> None:
    assert R.hashlimit_expire_ms(PortLimit(22, "per-source", Rate.parse("5/second"), 10)) == 10_000
    assert R.hashlimit_expire_ms(PortLimit(22, "per-source", Rate.parse("1/minute"), 3)) == 181_000
    assert R.parse_hashlimit_name("pw110_12") == (110, 12) and R.parse_hashlimit_name("other") is None


def test_plan_base_adds_exempt_rule_to_an_older_chain() -> None:
    old = R.ChainState(exists=True, rules=[r for r in R.parse_chain(S_OUTPUT) if r.role != "exempt"], jumps=1,
                       jump_first=True)
    work = R.plan_base(old, 4)
    assert [r.role for r in work.rules[:2]] == ["exempt", "ban"]
    assert work.rules[1].pkts == 12  # the ban rule's counter survives
    assert all(op.kind in ("delete", "insert") for op in work.ops)


def test_exempt_entries() -> None:
    got = R.exempt_entries(["192.0.2.1", "::ffff:203.0.113.77", "2001:db8::5", "junk", "fe80::1%eth0",
                            "198.51.100.0/24", "192.0.2.1"])
    assert got == ["127.0.0.0/8", "::1/128", "192.0.2.1", "203.0.113.77", "2001:db8::5/128", "fe80::1/128",
                   "198.51.100.0/24"]
    rules = R.chain_rules([], 6)
    assert rules[0].args == ("-m", "set", "--match-set", "popwatchx6", "src", "-j", "RETURN")
