"""The firewall backend interface and its value types.

Backends (``sim``, ``legacy`` = python-iptables, ``nft`` = iptables-nft binaries, ``none``)
all implement :class:`Firewall`. Methods are synchronous and may block: the Monitor calls them
from its single firewall thread (python-iptables is not thread-safe), never from the UI loop.

Layout every kernel backend builds (DESIGN.md, "Firewall model"): chain ``POPWATCH`` jumped to
once from the top of ``INPUT`` (v4 and v6); in it the ban match (ipset ``popwatch4`` /
``popwatch6``), then per watched port the rate-limit pair for new TCP connections. popwatch never
ACCEPTs: packets are DROPped (banned, over limit) or RETURN to the admin's own rules.
"""

from __future__ import annotations

import re
import fcntl
import os
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator, Literal

from ..model import Ban, PortCounters

Mode = Literal["count", "global", "per-source"]
MODES: tuple[Mode, ...] = ("count", "global", "per-source")

_UNITS = {
    "s": 1, "sec": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
}
_CANON = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}
_RATE_RE = re.compile(r"^\s*(\d{1,6})\s*/\s*([a-z]+)\s*$", re.ASCII)
#: iptables' own bounds: limit/hashlimit reject rates above 10000/s, bursts above 10000
MAX_PER_SECOND = 10000
MAX_BURST = 10000


class FirewallError(RuntimeError):
    """A firewall operation failed; the message is for the admin."""


@contextmanager
def flock_wait(path: str, wait: float, busy: str, poll: float = 0.005) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if missing) for the block; wait at most
    ``wait`` seconds (at least 1) for it, then raise FirewallError(``busy``)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + max(wait, 1)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise FirewallError(busy) from None
                time.sleep(poll)
        yield
    finally:
        os.close(fd)


class NeedsRoot(FirewallError):
    """The operation needs root / CAP_NET_ADMIN (CLI exit 3)."""


@dataclass(frozen=True, slots=True, order=True)
class Rate:
    """A token-bucket refill rate in the iptables form ``N/unit``."""

    per_second: float
    count: int
    unit: int  # seconds per unit: 1, 60, 3600, 86400

    @classmethod
    def parse(cls, text: str) -> "Rate":
        """``1/second``, ``10/minute``, ``5/s``, ``3/hour``, ``2/day``. Raises ValueError."""
        m = _RATE_RE.match(str(text).lower())
        if not m:
            raise ValueError(f"bad rate {text!r}: expected N/second, N/minute, N/hour or N/day (e.g. 5/second)")
        n, u = int(m.group(1)), m.group(2)
        if u not in _UNITS:
            raise ValueError(f"bad rate {text!r}: unit must be second, minute, hour or day")
        if n < 1:
            raise ValueError(f"bad rate {text!r}: must be at least 1/{_CANON[_UNITS[u]]}")
        unit = _UNITS[u]
        r = cls(n / unit, n, unit)
        if r.per_second > MAX_PER_SECOND:
            raise ValueError(f"bad rate {text!r}: iptables allows at most {MAX_PER_SECOND}/second")
        return r

    @classmethod
    def of(cls, count: int, unit: int) -> "Rate":
        return cls(count / unit, count, unit)

    def __str__(self) -> str:
        return f"{self.count}/{_CANON[self.unit]}"

    def short(self) -> str:
        """Compact form for narrow screens: ``1/s``, ``5/min``, ``3/h``, ``2/d``."""
        return f"{self.count}/{ {1: 's', 60: 'min', 3600: 'h', 86400: 'd'}[self.unit]}"

    @property
    def per_day(self) -> float:
        return self.per_second * 86400

    def step(self, up: bool) -> "Rate":
        """The next rate up or down on a 1-2-5 ladder, moving across units as needed."""
        ladder = _LADDER
        ps = self.per_second
        if up:
            for r in ladder:
                if r.per_second > ps * 1.0001:
                    return r
            return self
        for r in reversed(ladder):
            if r.per_second < ps * 0.9999:
                return r
        return self


_LADDER = [Rate.of(n, u) for u, ns in ((3600, (1, 2, 5, 10, 20, 30)), (60, (1, 2, 5, 10, 20, 30)),
                                       (1, (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)))
           for n in ns]
_LADDER.sort()


def parse_burst(value: object) -> int:
    """A burst value from the CLI/config/UI. Raises ValueError with a clear message."""
    try:
        if not str(value).strip().isascii():
            raise ValueError
        b = int(str(value).strip())
    except ValueError:
        raise ValueError(f"bad burst {value!r}: expected a whole number from 1 to {MAX_BURST}") from None
    if not 1 <= b <= MAX_BURST:
        raise ValueError(f"bad burst {value!r}: expected a whole number from 1 to {MAX_BURST}")
    return b


@dataclass(frozen=True, slots=True)
class PortLimit:
    """The rule popwatch keeps for one watched TCP port.

    ``count``: no limit, only counts new connections (the default for a newly watched port).
    ``global``: ``-m limit`` (one bucket shared by every source: the 2009 rule).
    ``per-source``: ``-m hashlimit --hashlimit-mode srcip`` (one bucket per source; /64 for v6).
    """

    port: int
    mode: Mode = "count"
    rate: Rate = Rate.of(1, 1)
    burst: int = 5

    def __post_init__(self) -> None:
        if not 1 <= int(self.port) <= 65535:
            raise ValueError(f"bad port {self.port!r}: expected 1-65535")
        if self.mode not in MODES:
            raise ValueError(f"bad mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if not 1 <= self.burst <= MAX_BURST:
            raise ValueError(f"bad burst {self.burst!r}: expected 1-{MAX_BURST}")

    def with_(self, **kw: object) -> "PortLimit":
        return replace(self, **kw)  # type: ignore[arg-type]

    def describe(self) -> str:
        """Short form for the ports panel: ``global 1/second burst 1``."""
        if self.mode == "count":
            return "count only"
        return f"{self.mode} {self.rate.short()} burst {self.burst}"

    def meaning(self) -> str:
        """One plain-language line saying what the rule does."""
        per_day = self.rate.per_day
        if self.mode == "count":
            return "counting only: every new connection passes; press m to pick a limit"
        if self.mode == "global":
            return f"global: at most {per_day:,.0f} new connections a day for everyone together"
        return f"per-source: at most {per_day:,.0f} new connections a day from each address"

    def to_json(self) -> dict[str, object]:
        return {"port": self.port, "mode": self.mode, "rate": str(self.rate), "burst": self.burst}


class Firewall(ABC):
    """A firewall backend. All methods may block; call them from one thread."""

    #: backend name shown in the header and in ``status --json``
    name: str = "abstract"
    #: False for ``none`` and when popwatch lacks the rights to change anything
    can_write: bool = True
    #: why this backend is the one in use (set by ``detect.make_firewall``; ``status`` prints it)
    why: str = ""
    #: True when popwatch's rules live in nf_tables: its change events then wake the
    #: enforcement check at once (heal.py), not only the next poll
    nf_tables: bool = False

    @abstractmethod
    def install(self, limits: list[PortLimit]) -> None:
        """Create popwatch's chains/sets (idempotent) and the rules for these ports, adopting
        rules that already exist rather than duplicating them."""

    @abstractmethod
    def uninstall(self) -> None:
        """Remove exactly what popwatch added."""

    @abstractmethod
    def ban(self, ip: str, ttl: float | None = None) -> None:
        """Ban a validated, normalised address (or network string) for ``ttl`` seconds."""

    @abstractmethod
    def unban(self, ip: str) -> None:
        """Lift a ban; no error if it was not banned."""

    @abstractmethod
    def bans(self) -> dict[str, float | None]:
        """Active bans in the kernel: address -> seconds left (None = permanent)."""

    @abstractmethod
    def set_limit(self, limit: PortLimit) -> None:
        """Replace one port's rules atomically, carrying its counters over."""

    @abstractmethod
    def limits(self) -> dict[int, PortLimit]:
        """The rules currently in place, by port."""

    @abstractmethod
    def counters(self) -> dict[int, PortCounters]:
        """Cumulative passed/dropped packets per watched port (cheap; polled every second)."""

    def banned_dropped(self) -> int:
        """Packets dropped by the ban rule(s), cumulative; 0 when unknown."""
        return 0

    def warnings(self) -> list[str]:
        """Things the admin should know (both kernel backends in use, no ip_set, ...)."""
        return []

    def check_enforcement(self) -> list[str]:
        """What of popwatch's rules (chain, jump, ban/exempt matches, watched ports, sets) is
        missing or changed in the kernel, one short phrase each; [] when all is in place.
        Called after every :meth:`counters` read, so it must stay cheap: judge from that read
        plus what the kernel can answer without a full ruleset dump. Default (sim, none): []."""
        return []

    def repair(self, bans: dict[str, float | None], *, stop: Callable[[], bool] | None = None) -> list[str]:
        """Put back what :meth:`check_enforcement` found missing, touching nothing else; when
        the ban sets were lost too, refill them from ``bans`` (kernel entry -> seconds left,
        None = permanent). ``stop()`` is asked once the firewall lock is held: True (a
        ``popwatch uninstall`` is under way) means do nothing. Returns what was done."""
        return []

    def close_connections(self, ips: Iterable[str]) -> dict[str, int]:
        """Close the open TCP connections from these addresses/networks (best effort: nothing
        when the kernel or the backend cannot). Returns {address: connections closed}."""
        return {}

    def describe_ban(self, ip: str, ttl: float | None = None) -> list[str]:
        """The exact commands/changes a ban makes, for the confirm modal and --dry-run."""
        return [f"ban {ip}" + (f" for {int(ttl)}s" if ttl else "")]

    def close(self) -> None:
        """Release resources (not the rules)."""

    def check_setup(self) -> list[str]:
        """What of popwatch's setup in the kernel is missing or changed (chain or table, jumps,
        protected/ban matches, sets), one short phrase each; [] when all is in place: the
        semantics of ``check_enforcement``, but a full read, for ``popwatch doctor`` (not
        meant for every counter poll). Ban *entries* are not judged here: the caller compares
        :meth:`bans` with its saved state. Default (sim, none): []."""
        return []


class NoFirewall(Firewall):
    """``--backend none``: monitor only, every action refused."""

    name = "none"
    can_write = False

    def __init__(self, limits: list[PortLimit] | None = None, *, reason: str = "", short: str = "",
                 needs_root: bool = False) -> None:
        self._limits = {l.port: l for l in limits or []}
        #: why popwatch fell back to monitoring only ("" when --backend none was asked for),
        #: and a few words of it for the header
        self.reason = reason
        self.short_reason = short or reason[:40]
        #: standing in for a kernel backend popwatch may not use without root (not chosen)
        self.needs_root = needs_root

    def _refuse(self) -> None:
        raise FirewallError(f"read-only: {self.reason}" if self.reason else
                            "backend is 'none' (monitor only): no firewall changes are made")

    def install(self, limits: list[PortLimit]) -> None:
        self._limits = {l.port: l for l in limits}

    def uninstall(self) -> None:
        pass

    def ban(self, ip: str, ttl: float | None = None) -> None:
        self._refuse()

    def unban(self, ip: str) -> None:
        self._refuse()

    def bans(self) -> dict[str, float | None]:
        return {}

    def set_limit(self, limit: PortLimit) -> None:
        self._refuse()

    def limits(self) -> dict[int, PortLimit]:
        return dict(self._limits)

    def counters(self) -> dict[int, PortCounters]:
        return {}


def ban_from(ip: str, left: float | None, now: float, origin: str = "restore") -> Ban:
    return Ban(ip=ip, created=now, expires=None if left is None else now + left, origin=origin)
