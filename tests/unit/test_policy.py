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


def test_mapped_ipv6_allow_entries_protect_the_ipv4_addresses():
    """An allow-list entry written as IPv4-mapped IPv6 protects those IPv4 addresses: every
    path unwraps ::ffff:a.b.c.d before banning it (found by the property tests)."""
    p = Protector(allow=["::ffff:0:0/96"])
    assert p.why_protected("::ffff:0:1") is not None and p.protected_ip("0.0.0.1") is not None
    p = Protector(allow=["::ffff:203.0.113.0/120"], ssh={"::ffff:198.51.100.7"})
    assert "allow-list" in p.why_protected("203.0.113.77")
    assert "SSH client" in p.protected_ip("198.51.100.7")
    assert p.why_protected("203.0.114.1") is None
    assert p.why_protected("203.0.113.0/24") is not None  # a network containing it


_nets = st.one_of(
    st.tuples(st.ip_addresses(v=4), st.integers(0, 32)),
    st.tuples(st.ip_addresses(v=6), st.integers(0, 128)),
).map(lambda t: ipaddress.ip_network(f"{t[0]}/{t[1]}", strict=False))


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.lists(_nets, max_size=4))
def test_fast_path_agrees_with_the_general_check(addr, nets):
    p = Protector(allow=[str(n) for n in nets])
    assert (p.protected_ip(str(addr)) is None) == (p.why_protected(str(addr)) is None)


def test_ssh_client_found_in_the_parent_when_sudo_dropped_the_variables():
    """sudo resets the environment: the SSH client is read from an ancestor's environ."""
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    child = ("import subprocess, sys; sys.exit(subprocess.run(['env', '-i', 'PYTHONPATH=' + sys.argv[1], "
             "sys.executable, '-c', 'from popwatch.policy import ssh_clients, Protector; "
             "print(sorted(ssh_clients())); print(Protector.from_env(own=False).why_protected(\"198.51.100.77\"))'"
             "]).returncode)")
    env = dict(os.environ, SSH_CONNECTION="198.51.100.77 50022 192.0.2.1 22")
    env.pop("SSH_CLIENT", None)
    out = subprocess.run([sys.executable, "-c", child, repo], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "198.51.100.77" in lines[0] and "SSH client" in lines[1]
