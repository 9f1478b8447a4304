"""Protected addresses: the admin's SSH client, loopback, own addresses, the allow-list."""

from __future__ import annotations

import ipaddress

from hypothesis import given, strategies as st

from popwatch.policy import Protector, ssh_clients


def test_ssh_client_from_environment_variables():
    assert ssh_clients({"SSH_CONNECTION": "198.51.100.7 50022 192.0.2.1 22"}) == {"198.51.100.7"}
    assert ssh_clients({"SSH_CLIENT": "::ffff:198.51.100.8 50022 22"}) == {"198.51.100.8"}
    assert ssh_clients({"SSH_CONNECTION": "garbage"}) == set()


def test_protected_forms():
    p = Protector(allow=["192.0.2.0/24"], ssh={"198.51.100.7"}, own={"203.0.113.1"})
    assert "SSH client" in p.why_protected("198.51.100.7")
    assert "SSH client" in p.why_protected("::ffff:198.51.100.7")
    assert "SSH client" in p.why_protected("::ffff:c633:6407")  # hex mapped form
    assert "loopback" in p.why_protected("127.0.0.53")
    assert "loopback" in p.why_protected("::1")
    assert "allow-list" in p.why_protected("192.0.2.77")
    assert "own" in p.why_protected("203.0.113.1")
    assert p.why_protected("203.0.113.2") is None
    # a network that would cover a protected address is refused too
    assert p.why_protected("198.51.100.0/24") is not None
    assert p.why_protected("203.0.113.128/25") is None
    # hostnames are not addresses
    assert "not an IP" in p.why_protected("attacker.example")


@given(st.ip_addresses(v=4))
def test_allow_listed_v4_protected_in_every_form(addr):
    net = ipaddress.ip_network(f"{addr}/28", strict=False)
    p = Protector(allow=[str(net)])
    for a in (addr, net.network_address, net.broadcast_address):
        assert p.why_protected(str(a)) is not None
        assert p.why_protected(f"::ffff:{a}") is not None
