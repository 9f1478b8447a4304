"""Who may never be banned or rate-limited, whatever the key or policy says.

One place, used by every path (TUI keys, CLI, auto-ban, mass ban): the Monitor asks
:meth:`Protector.why_protected` before any firewall change.

Protected: the SSH client of the current session (``SSH_CONNECTION``/``SSH_CLIENT``, and the
parent sshd session's environment when sudo dropped them), loopback, the host's own addresses,
and the configured allow-list. IPv4-mapped IPv6 forms are unwrapped before any check, and a
network target is refused when it *contains* a protected address.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .addr import IPAddress, IPNetwork, parse_target

_MAPPED = b"\0" * 10 + b"\xff\xff"
_MAPPED_NET = ipaddress.IPv6Network("::ffff:0:0/96")


class Refused(Exception):
    """An action refused by policy (CLI exit 4); the message says why."""


def _ssh_client_from(env: Mapping[str, str]) -> str | None:
    for var in ("SSH_CONNECTION", "SSH_CLIENT"):
        v = env.get(var)
        if v:
            first = v.split()[0] if v.split() else ""
            try:
                return str(parse_target(first))
            except ValueError:
                continue
    return None


def _environ_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for item in raw.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep:
            out[k.decode("utf-8", "replace")] = v.decode("utf-8", "replace")
    return out


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the comm field may contain spaces and parens: the ppid follows the last ')'
    rest = stat.rsplit(")", 1)[-1].split()
    try:
        return int(rest[1])
    except (IndexError, ValueError):
        return None


def ssh_clients(env: Mapping[str, str] | None = None, pid: int | None = None) -> set[str]:
    """The SSH client address(es) of this session: our environment, then our ancestors' (sudo
    drops SSH_CONNECTION, but the shell sudo was started from still has it)."""
    found: set[str] = set()
    ip = _ssh_client_from(os.environ if env is None else env)
    if ip:
        found.add(ip)
    if env is not None:  # explicit environment (tests): do not look at the real process tree
        return found
    p = _ppid(pid or os.getpid())
    for _ in range(16):
        if not p or p <= 1:
            break
        ip = _ssh_client_from(_environ_of(p))
        if ip:
            found.add(ip)
        p = _ppid(p)
    return found


def host_addresses() -> set[str]:
    """This host's own addresses (``ip -o addr``), best effort."""
    out: set[str] = set()
    try:
        text = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True,
                              timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    for line in text.splitlines():
        parts = line.split()
        for i, word in enumerate(parts):
            if word in ("inet", "inet6") and i + 1 < len(parts):
                addr = parts[i + 1].split("/")[0]
                try:
                    out.add(str(parse_target(addr)))
                except ValueError:
                    pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            try:
                out.add(str(parse_target(str(info[4][0]))))
            except ValueError:
                pass
    except OSError:
        pass
    return out


@dataclass
class Protector:
    """The protected set. Build with :meth:`from_env` in real use; tests pass explicit lists."""

    allow: list[str] = field(default_factory=list)
    ssh: set[str] = field(default_factory=set)
    own: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._nets: list[tuple[IPNetwork, str]] = []
        for cidr in self.allow:
            self._add(cidr, f"in the allow-list ({cidr})")
        for ip in self.ssh:
            self._add(ip, "the SSH client of this session (you)")
        for ip in self.own:
            self._add(ip, "one of this host's own addresses")
        self._add("127.0.0.0/8", "loopback")
        self._add("::1/128", "loopback")
        self._index()

    def _add(self, cidr: str, why: str, *, first: bool = False) -> None:
        """Add a protected net; its IPv4-mapped part (``::ffff:0:0/96``) is protected as IPv4
        too, because every path unwraps mapped addresses before it bans them."""
        net = ipaddress.ip_network(cidr, strict=False)
        nets: list[IPNetwork] = [net]
        if isinstance(net, ipaddress.IPv6Network) and net.overlaps(_MAPPED_NET):
            if net.prefixlen <= 96:
                nets.append(ipaddress.IPv4Network("0.0.0.0/0"))
            else:
                v4 = net.network_address.ipv4_mapped
                assert v4 is not None
                nets.append(ipaddress.ip_network(f"{v4}/{net.prefixlen - 96}", strict=False))
        for n in nets:
            if first:
                self._nets.insert(0, (n, why))
            else:
                self._nets.append((n, why))

    def _index(self) -> None:
        """Integer ranges of the protected nets, for :meth:`protected_ip` (the hot path)."""
        self._ranges: dict[int, list[tuple[int, int, IPNetwork, str]]] = {4: [], 6: []}
        for net, why in self._nets:
            self._ranges[net.version].append((int(net.network_address), int(net.broadcast_address), net, why))

    def protected_ip(self, ip: str) -> str | None:
        """:meth:`why_protected` for one address string, fast (auto-ban calls it for every new
        address of a flood): ``inet_pton`` and integer ranges instead of ``ipaddress``. Anything
        that is not a plain address goes the slow, general way."""
        try:
            if ":" in ip:
                b = socket.inet_pton(socket.AF_INET6, ip)
                if b[:12] == _MAPPED:
                    fam, n = 4, int.from_bytes(b[12:], "big")
                else:
                    fam, n = 6, int.from_bytes(b, "big")
            else:
                b = socket.inet_pton(socket.AF_INET, ip)
                fam, n = 4, int.from_bytes(b, "big")
        except (OSError, ValueError, TypeError):
            return self.why_protected(ip)
        if n == 0:
            return "the unspecified address"
        for lo, hi, _net, why in self._ranges[fam]:
            if lo <= n <= hi:
                return f"{ipaddress.ip_address(n) if fam == 4 else ipaddress.IPv6Address(n)} is {why}"
        return None

    def protected_net(self, text: str) -> str | None:
        """:meth:`why_protected` for a canonical ``addr/len`` set entry, fast (restoring many
        saved IPv6 bans checks each one's /64); anything else goes the general way."""
        addr, _, plen = text.partition("/")
        try:
            fam = 6 if ":" in addr else 4
            n = int.from_bytes(socket.inet_pton(socket.AF_INET6 if fam == 6 else socket.AF_INET, addr), "big")
            bits = 128 if fam == 6 else 32
            k = int(plen) if plen else bits
            if not 0 <= k <= bits or (fam == 6 and n >> 32 == 0xFFFF):
                raise ValueError
        except (OSError, ValueError):
            return self.why_protected(text)
        lo, hi = n, n | ((1 << (bits - k)) - 1)
        for rlo, rhi, net, why in self._ranges[fam]:
            if rlo <= hi and lo <= rhi:
                return f"{text} contains {net}, {why}"
        return None

    @classmethod
    def from_env(cls, allow: Iterable[str] = (), *, own: bool = True) -> Protector:
        return cls(list(allow), ssh_clients(), host_addresses() if own else set())

    def add_allow(self, cidr: str) -> None:
        net = ipaddress.ip_network(cidr, strict=False)
        self.allow.append(str(net))
        self._add(str(net), f"in the allow-list ({net})", first=True)
        self._index()

    def why_protected(self, target: str | IPAddress | IPNetwork) -> str | None:
        """None when ``target`` may be banned; otherwise the reason it may not."""
        if isinstance(target, str):
            try:
                target = parse_target(target, allow_net=True)
            except ValueError as e:
                return str(e)
        if isinstance(target, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            for net, why in self._nets:
                if net.version == target.version and (target.overlaps(net)):
                    return f"{target} contains {net}, {why}"
            return None
        if isinstance(target, ipaddress.IPv6Address) and target.ipv4_mapped is not None:
            target = target.ipv4_mapped
        if target.is_unspecified:
            return "the unspecified address"
        for net, why in self._nets:
            if net.version == target.version and target in net:
                return f"{target} is {why}"
        return None

    def check(self, target: str | IPAddress | IPNetwork) -> None:
        why = self.why_protected(target)
        if why:
            raise Refused(f"refused: {why}")
