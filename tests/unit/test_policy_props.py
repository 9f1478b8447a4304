"""Property tests: a protected address is never banned, by any path (CLI, key, mass ban,
auto-ban, undo, reconcile), in any written form (plain, ::ffff: mapped, hex mapped, CIDR)."""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from popwatch.config import PolicyConfig
from popwatch.firewall.sim import SimFirewall
from popwatch.model import Ban, RawLine
from popwatch.monitor import Monitor
from popwatch.parse import Parser
from popwatch.persist import Persist
from popwatch.policy import Protector, Refused
from popwatch.store import StateStore
from popwatch.actions import run_sync

T0 = 1_795_000_000.0


class V6Sim(SimFirewall):
    """The sim with the kernel backends' IPv6 /64 ban entries."""

    def ban_key(self, ip: str, *, net: bool | None = None) -> str:
        a = ipaddress.ip_address(ip) if "/" not in ip else None
        if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is None:
            return str(ipaddress.ip_network(f"{a}/64", strict=False))
        return str(ipaddress.ip_network(ip, strict=False)) if "/" in ip else ip


def forms(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[str]:
    out = [str(addr)]
    if addr.version == 4:
        p = addr.packed
        out += [f"::ffff:{addr}", f"::ffff:{p[0] << 8 | p[1]:x}:{p[2] << 8 | p[3]:x}",
                f"::FFFF:{addr}", f"[::ffff:{addr}]"]
    else:
        out += [addr.exploded, f"[{addr}]"]
    return out


def monitor(prot: Protector, tmp=None) -> tuple[Monitor, V6Sim]:
    t = [T0]
    sim = V6Sim(clock=lambda: t[0])
    store = StateStore(clock=lambda: t[0])
    mon = Monitor(store=store, parser=Parser(now=lambda: t[0]), firewall=sim, protector=prot,
                  policy=replace(PolicyConfig(), maxretry=1, auto_ban=True),
                  persist=Persist(tmp) if tmp else None, mono=lambda: t[0])
    return mon, sim


addrs = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))


@st.composite
def protected_case(draw):
    """A protector and an address it protects (via allow CIDR, SSH client or own address)."""
    a = draw(addrs)
    how = draw(st.sampled_from(["allow", "ssh", "own"]))
    if how == "allow":
        plen = draw(st.integers(8 if a.version == 4 else 32, 32 if a.version == 4 else 128))
        net = ipaddress.ip_network(f"{a}/{plen}", strict=False)
        inside = draw(st.integers(0, net.num_addresses - 1))
        target = net.network_address + inside
        return Protector(allow=[str(net)]), target
    if a.version == 6 and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    return (Protector(ssh={str(a)}) if how == "ssh" else Protector(own={str(a)})), a


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(protected_case(), st.data())
def test_no_direct_path_bans_a_protected_address(case, data):
    prot, target = case
    mon, sim = monitor(prot)
    text = data.draw(st.sampled_from(forms(target)))
    with pytest.raises((Refused, ValueError)):
        run_sync(mon.actions.ban(text, ttl=60, origin="cli"))
    done, refused = run_sync(mon.actions.ban_many([text], ttl=60, origin="cli"))
    assert not done and text in refused
    with pytest.raises((Refused, ValueError)):
        asyncio.run(mon.actions.ban(text, ttl=60))
    # a network containing it
    plen = data.draw(st.integers(16 if target.version == 4 else 48, 32 if target.version == 4 else 128))
    net = ipaddress.ip_network(f"{target}/{plen}", strict=False)
    with pytest.raises((Refused, ValueError)):
        run_sync(mon.actions.ban(str(net), ttl=60, allow_net=True, origin="cli"))
    assert sim.bans() == {} and mon.store.bans == {}
    mon.close()


@SETTINGS
@given(protected_case(), st.data())
def test_auto_ban_never_bans_a_protected_address(case, data):
    prot, target = case
    mon, sim = monitor(prot)
    text = data.draw(st.sampled_from(forms(target)[:3]))
    rip = text.strip("[]")
    lines = [RawLine(f"2026-11-28T05:00:{i:02d}.000000+00:00 srv dovecot: pop3-login: Disconnected: "
                     f"Connection closed (auth failed, 50 attempts in 10 secs): user=<root>, "
                     f"method=PLAIN, rip={rip}, lip=192.0.2.1, session=<x{i}>", "mail.log", i)
             for i in range(5)]
    mon.ingest(lines)
    assert sim.bans() == {} and mon.store.bans == {}
    mon.close()


@given(st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None), st.integers(0, 2**64 - 1))
@SETTINGS
def test_ipv6_ban_covering_a_protected_address_in_its_64_is_refused(ssh, low):
    """Banning any address of the SSH client's /64 would cut the admin off (kernel bans /64)."""
    mon, sim = monitor(Protector(ssh={str(ssh)}))
    net = ipaddress.ip_network(f"{ssh}/64", strict=False)
    neighbour = net.network_address + low
    if neighbour.ipv4_mapped is not None:  # ::ffff:a.b.c.d is IPv4: banned as itself, not a /64
        return
    with pytest.raises(Refused):
        run_sync(mon.actions.ban(str(neighbour), ttl=60, origin="cli"))
    assert sim.bans() == {}
    mon.close()


def test_reconcile_and_undo_do_not_restore_a_ban_that_became_protected(tmp_path):
    d = tmp_path / "state"
    p = Persist(d)
    p.save_bans([Ban("203.0.113.5", T0 - 10, T0 + 3600, "old", "key")])
    # the admin has since allow-listed it
    mon, sim = monitor(Protector(allow=["203.0.113.0/28"]), d)
    msgs = mon.reconcile()
    assert sim.bans() == {} and "203.0.113.5" not in mon.store.bans
    assert any("not restoring" in m and "203.0.113.5" in m for m in msgs)
    # an unban recorded earlier cannot be undone into a ban of a protected address
    p.audit("unban", "203.0.113.6", origin="key", prev={"expires": None, "reason": "x", "origin": "key"})
    with pytest.raises(Refused):
        run_sync(mon.actions.undo())
    assert sim.bans() == {}
    mon.close()


def test_protector_basic_forms_unchanged():
    p = Protector(allow=["192.0.2.0/24"])
    assert p.why_protected("::ffff:c000:0205") is not None
    assert p.why_protected("0.0.0.0") is not None
    assert p.why_protected("192.0.1.255") is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(protected_case(), st.data())
def test_reconcile_and_undo_never_restore_a_protected_address(tmp_path_factory, case, data):
    """A state file or audit log written before the address became protected (or tampered
    with) never makes popwatch ban it on start or on undo."""
    prot, target = case
    d = tmp_path_factory.mktemp("state")
    text = data.draw(st.sampled_from(forms(target)[:3])).strip("[]")
    p = Persist(d)
    p.save_bans([Ban(str(target), T0 - 10, None, "old", "key")])
    p.audit("unban", text, origin="key", prev={"expires": None, "reason": "x", "origin": "key"})
    mon, sim = monitor(prot, d)
    mon.reconcile()
    with pytest.raises((Refused, ValueError)):
        run_sync(mon.actions.undo())
    assert sim.bans() == {} and mon.store.bans == {}
    mon.close()
