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
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
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
            raise AddressError(f"{_show(t)} is a network; pass --net to ban a whole network")
        try:
            net = ipaddress.ip_network(t, strict=False)
        except ValueError:
            raise AddressError(f"{_show(t)} is not an IP network{_why_not(t.split('/', 1)[0])}") from None
        if isinstance(net, IPv6Network) and net.prefixlen >= 96:
            mapped = net.network_address.ipv4_mapped
            if mapped is not None:
                return ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}", strict=False)
        if net.num_addresses == 1:
            return _unwrap(net.network_address)
        return net
    ip = normalize_ip(t)
    if ip is None:
        raise AddressError(f"{_show(t)} is not an IP address{_why_not(t)}")
    return ipaddress.ip_address(ip)


def _show(t: str, cap: int = 60) -> str:
    """A user's input, echoed in an error: quoted and cut (never 5,000 characters)."""
    return repr(t[:cap]) + (f"…[+{len(t) - cap}]" if len(t) > cap else "")


def _why_not(t: str) -> str:
    """What ``t`` looks like, for the error: not every non-address is a hostname."""
    parts = t.split(".")
    if t.isascii() and len(parts) == 4 and all(p.isdigit() for p in parts):
        if any(len(p) > 1 and p.startswith("0") for p in parts):
            return (": a part with a leading zero is ambiguous (octal to some tools, decimal to "
                    "others); write it without leading zeros")
        return ": a part is larger than 255"
    if not t.isascii() and any(c.isdigit() for c in t):
        return ": only ASCII digits 0-9 are accepted"
    if any(c.isalpha() for c in t) and ":" not in t:
        return " (hostnames are refused)"
    return ""


#: NAT64 prefixes (RFC 6052 well-known, RFC 8215 local-use): one address there is one IPv4
#: client behind the translator, so a ban never widens to the usual /64
NAT64_NETS = (IPv6Network("64:ff9b::/96"), IPv6Network("64:ff9b:1::/48"))


def ban_prefix(addr: IPv6Address, default: int) -> int:
    """The prefix length an IPv6 ban of ``addr`` covers: ``default`` (/64), but /128 inside a
    NAT64 prefix (a /64 there would ban every IPv4 client reaching the server through NAT64)."""
    if any(addr in n for n in NAT64_NETS):
        return 128
    return default


def is_ipv4(text: str) -> bool:
    return ":" not in text


class NetIndex:
    """Networks (``a.b.c.0/24``, ``2001:db8::/48``) by family and prefix length, so that the
    ones holding an address or a narrower network are found with one lookup per prefix length
    in use, not a scan of every network."""

    __slots__ = ("_by",)

    def __init__(self) -> None:
        #: (version, prefixlen) -> {network address as int: its text}
        self._by: dict[tuple[int, int], dict[int, str]] = {}

    def __bool__(self) -> bool:
        return bool(self._by)

    def add(self, text: str) -> None:
        net = ipaddress.ip_network(text, strict=False)
        self._by.setdefault((net.version, net.prefixlen), {})[int(net.network_address)] = text

    def discard(self, text: str) -> None:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            return
        key = (net.version, net.prefixlen)
        d = self._by.get(key)
        if d is not None and d.get(int(net.network_address)) == text:
            del d[int(net.network_address)]
            if not d:
                del self._by[key]

    def holders(self, target: str) -> list[str]:
        """The indexed networks that hold ``target`` (an address or a network; itself too)."""
        if not self._by:
            return []
        try:
            t = ipaddress.ip_network(target, strict=False)
        except ValueError:
            return []
        bits = t.max_prefixlen
        value = int(t.network_address)
        out = []
        for (version, plen), d in self._by.items():
            if version == t.version and plen <= t.prefixlen:
                hit = d.get(value >> (bits - plen) << (bits - plen))
                if hit is not None:
                    out.append(hit)
        return out
