"""The simulated firewall (``--backend sim``): for the demo and pure unit tests only.

It models what the kernel rules do, closely enough that the ports panel reacts like the real
thing when the limit or burst changes: the ban set (with timeouts) is checked first, then the
watched port's rule for a new connection:

* ``count``: every connection passes (counted);
* ``global``: one token bucket for everyone (``-m limit``), refilled at ``rate``, holding at
  most ``burst`` tokens;
* ``per-source``: one bucket per source address (``-m hashlimit --hashlimit-mode srcip``,
  /64 for IPv6).

Replacing a rule refills its bucket(s) and carries its counters over, as the real backends do.
It is never the proof that a firewall feature works: the netns suites are.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable

from ..addr import parse_target
from ..model import PortCounters, PortLimit
from .base import Firewall

_MAX_SOURCES = 100_000


class TokenBucket:
    """One ``-m limit`` / hashlimit bucket: refills at ``rate`` per second, holds ``burst`` tokens.
    Also used by the what-if replay of a proposed limit."""

    __slots__ = ("last", "tokens")

    def __init__(self, burst: int, now: float) -> None:
        self.tokens = float(burst)
        self.last = now

    def take(self, rate: float, burst: int, now: float) -> bool:
        if now > self.last:
            self.tokens = min(float(burst), self.tokens + (now - self.last) * rate)
            self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class SimFirewall(Firewall):
    """In-memory model of popwatch's chain. ``clock`` is seconds (monotonic or demo time)."""

    name = "sim"
    can_write = True

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, ipv6_prefix: int = 64,
                 latency: float = 0.0) -> None:
        self.clock = clock
        self.ipv6_prefix = ipv6_prefix
        self.latency = latency  # seconds per change, to feel like a real backend in the demo
        self._limits: dict[int, PortLimit] = {}
        self._bans: dict[str, float | None] = {}  # ip/net -> expiry on self.clock, None = forever
        self._ban_nets: dict[str, ipaddress.IPv4Network | ipaddress.IPv6Network] = {}
        self._passed: dict[int, int] = {}
        self._dropped: dict[int, int] = {}
        self._banned_dropped = 0
        self._global: dict[int, TokenBucket] = {}
        self._per_src: dict[int, dict[str, TokenBucket]] = {}
        self.log: list[str] = []  # every change, like an audit of commands

    # ------------------------------------------------------------ the interface
    def install(self, limits: list[PortLimit]) -> None:
        for lim in limits:
            if lim.port not in self._limits:
                self._apply(lim)

    def uninstall(self) -> None:
        self._limits.clear()
        self._bans.clear()
        self._ban_nets.clear()
        self._global.clear()
        self._per_src.clear()
        self.log.append("uninstall")

    def _key(self, ip: str) -> str:
        return str(parse_target(ip, allow_net=True))

    def ban(self, ip: str, ttl: float | None = None, *, net: bool | None = None) -> None:
        self._delay()
        key = self._key(ip)
        self._bans[key] = None if ttl is None else self.clock() + ttl
        if "/" in key:
            self._ban_nets[key] = ipaddress.ip_network(key)
        self.log.append(f"ban {key}" + (f" timeout {int(ttl)}" if ttl else ""))

    def unban(self, ip: str, *, net: bool | None = None) -> None:
        self._delay()
        key = self._key(ip)
        self._bans.pop(key, None)
        self._ban_nets.pop(key, None)
        self.log.append(f"unban {key}")

    def bans(self) -> dict[str, float | None]:
        now = self.clock()
        self._expire(now)
        return {ip: (None if exp is None else exp - now) for ip, exp in self._bans.items()}

    def set_limit(self, limit: PortLimit) -> None:
        self._delay()
        self._apply(limit)

    def limits(self) -> dict[int, PortLimit]:
        return dict(self._limits)

    def counters(self) -> dict[int, PortCounters]:
        return {p: PortCounters(p, self._passed.get(p, 0), self._dropped.get(p, 0)) for p in self._limits}

    def banned_dropped(self) -> int:
        return self._banned_dropped

    def describe_ban(self, ip: str, ttl: float | None = None, *, net: bool | None = None) -> list[str]:
        key = self._key(ip)
        fam = "popwatch6" if ":" in key else "popwatch4"
        return [f"ipset add {fam} {key}" + (f" timeout {int(ttl)}" if ttl else "") + " -exist  (simulated)"]

    # ----------------------------------------------------------- the traffic
    def connect(self, src: str, port: int) -> bool:
        """One new TCP connection (SYN) from ``src`` to ``port``: True if it gets through."""
        now = self.clock()
        if self._is_banned(src, now):
            self._banned_dropped += 1
            return False
        lim = self._limits.get(port)
        if lim is None:
            return True
        if lim.mode == "count":
            ok = True
        elif lim.mode == "global":
            b = self._global.get(port)
            if b is None:
                b = self._global[port] = TokenBucket(lim.burst, now)
            ok = b.take(lim.rate.per_second, lim.burst, now)
        else:
            buckets = self._per_src.setdefault(port, {})
            k = self._src_key(src)
            b = buckets.get(k)
            if b is None:
                if len(buckets) >= _MAX_SOURCES:
                    buckets.clear()  # hashlimit's table is bounded too (--hashlimit-htable-max)
                b = buckets[k] = TokenBucket(lim.burst, now)
            ok = b.take(lim.rate.per_second, lim.burst, now)
        if ok:
            self._passed[port] = self._passed.get(port, 0) + 1
        else:
            self._dropped[port] = self._dropped.get(port, 0) + 1
        return ok

    # -------------------------------------------------------------- helpers
    def _apply(self, lim: PortLimit) -> None:
        self._limits[lim.port] = lim
        # a replaced rule starts with a full bucket (the kernel does the same); counters carry
        self._global.pop(lim.port, None)
        self._per_src.pop(lim.port, None)
        self._passed.setdefault(lim.port, 0)
        self._dropped.setdefault(lim.port, 0)
        self.log.append(f"limit {lim.port} {lim.describe()}")

    def _src_key(self, src: str) -> str:
        if ":" in src:
            return str(ipaddress.ip_network(f"{src}/{self.ipv6_prefix}", strict=False))
        return src

    def _expire(self, now: float) -> None:
        gone = [ip for ip, exp in self._bans.items() if exp is not None and exp <= now]
        for ip in gone:
            del self._bans[ip]
            self._ban_nets.pop(ip, None)

    def _is_banned(self, src: str, now: float) -> bool:
        exp = self._bans.get(src, 0.0)
        if exp != 0.0:
            if exp is None or exp > now:
                return True
            del self._bans[src]
            return False
        if self._ban_nets:
            addr = ipaddress.ip_address(src)
            for key, net in list(self._ban_nets.items()):
                if addr.version == net.version and addr in net:
                    exp = self._bans.get(key)
                    if exp is None or exp > now:
                        return True
        return False

    def _delay(self) -> None:
        if self.latency:
            time.sleep(self.latency)
