"""Address handling: the only way a string becomes something popwatch may ban.

Log text never reaches iptables/ipset directly (both resolve hostnames and accept CIDRs):
it goes through :func:`normalize_ip` (parse time) or :func:`parse_target` (actions).
"""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


class AddressError(ValueError):
    """A string that is not an acceptable address; the message says why."""


def _unwrap(addr: IPAddress) -> IPAddress:
    if isinstance(addr, IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
    return addr


def normalize_ip(text: str | None) -> str | None:
    """A log's address field -> canonical address string, or None if it is not an address.

    ``::ffff:1.2.3.4`` and ``::ffff:102:304`` -> ``1.2.3.4``; ``[2001:db8::1]`` -> ``2001:db8::1``;
    ``fe80::1%eth0`` -> ``fe80::1``. Hostnames and garbage -> None.
    """
    if not text:
        return None
    t = text.strip()
    if len(t) > 64:
        return None
    if t.startswith("[") and t.endswith("]"):
        t = t[1:-1]
    if "%" in t:
        t = t.split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(t)
    except ValueError:
        return None
    return str(_unwrap(addr))


def parse_target(text: str, *, allow_net: bool = False) -> IPAddress | IPNetwork:
    """A user-supplied ban target -> address (or network when ``allow_net``).

    Raises :class:`AddressError` for hostnames, garbage, and networks without ``allow_net``.
    """
    t = (text or "").strip()
    if not t:
        raise AddressError("empty address")
    if "/" in t:
        if not allow_net:
            raise AddressError(f"{t!r} is a network; pass --net to ban a whole network")
        try:
            net = ipaddress.ip_network(t, strict=False)
        except ValueError:
            raise AddressError(f"{t!r} is not an IP network") from None
        if isinstance(net, IPv6Network) and net.prefixlen >= 96:
            mapped = net.network_address.ipv4_mapped
            if mapped is not None:
                return ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}", strict=False)
        if net.num_addresses == 1:
            return _unwrap(net.network_address)
        return net
    ip = normalize_ip(t)
    if ip is None:
        raise AddressError(f"{t!r} is not an IP address (hostnames are refused)")
    return ipaddress.ip_address(ip)


def is_ipv4(text: str) -> bool:
    return ":" not in text
