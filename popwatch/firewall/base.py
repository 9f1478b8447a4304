"""The firewall backend interface (the complete contract every backend implements).

Backends (``sim``, ``legacy`` = python-iptables, ``nft`` = iptables-nft binaries, ``none``)
all implement :class:`Firewall`. Methods are synchronous and may block: the Monitor calls them
from its single firewall thread (python-iptables is not thread-safe), never from the UI loop.

Layout every kernel backend builds (DESIGN.md, "Firewall model"): chain ``POPWATCH`` jumped to
once from the top of ``INPUT`` (v4 and v6); in it the ban match (ipset ``popwatch4`` /
``popwatch6``), then per watched port the rate-limit pair for new TCP connections. popwatch never
ACCEPTs: packets are DROPped (banned, over limit) or RETURN to the admin's own rules.
"""

from __future__ import annotations

import fcntl
import functools
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from ..model import Ban, PortCounters, PortLimit


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


#: operations a timing hook sees (metrics: ``popwatch_firewall_op_seconds``)
TIMED_OPS = ("ban", "unban", "set_limit", "bans", "counters", "install")
#: operations that describe a change by running the timed ones in recording mode: what runs
#: inside them is not timed
DESCRIBE_OPS = ("describe_ban", "describe_unban", "describe_limit")
_timing = threading.local()
_TIMED_FUNCS: set[Callable[..., object]] = set()


def _timed(op: str, fn: Callable[..., object]) -> Callable[..., object]:
    """``fn`` reporting its duration to the instance's timers; only the outermost timed call
    counts (a backend's ban calling its base class's, describe_ban running ban)."""
    @functools.wraps(fn)
    def call(self: Firewall, *a: object, **kw: object) -> object:
        timers = self.timers
        if not timers:
            return fn(self, *a, **kw)
        depth = getattr(_timing, "depth", 0)
        _timing.depth = depth + 1
        t0 = time.perf_counter()
        try:
            return fn(self, *a, **kw)
        finally:
            _timing.depth = depth
            if depth == 0 and op in TIMED_OPS:
                dt = time.perf_counter() - t0
                for hook in timers:
                    hook(op, dt)
    _TIMED_FUNCS.add(call)
    return call


class Firewall(ABC):
    """A firewall backend. All methods may block; call them from one thread."""

    def __init_subclass__(cls, **kw: object) -> None:
        super().__init_subclass__(**kw)
        for op in TIMED_OPS + DESCRIBE_OPS:
            fn = cls.__dict__.get(op)
            if callable(fn) and fn not in _TIMED_FUNCS:
                setattr(cls, op, _timed(op, fn))

    #: timing hooks: hook(op, seconds) after each outermost :data:`TIMED_OPS` call
    timers: tuple[Callable[[str, float], None], ...] = ()

    def add_timer(self, hook: Callable[[str, float], None]) -> None:
        """Report the duration of every firewall operation to ``hook`` (the metrics exporter)."""
        if hook not in self.timers:
            self.timers = (*self.timers, hook)

    #: backend name shown in the header and in ``status --json``
    name: str = "abstract"
    #: False for ``none`` and when popwatch lacks the rights to change anything
    can_write: bool = True
    #: why this backend is the one in use (set by ``detect.make_firewall``; ``status`` prints it)
    why: str = ""
    #: True when popwatch's rules live in nf_tables: its change events then wake the
    #: enforcement check at once (heal.py), not only the next poll
    nf_tables: bool = False
    #: why popwatch only monitors ("" unless it fell back to ``none``), a few words of it for the
    #: header, and whether a kernel backend is being stood in for for lack of root (NoFirewall)
    reason: str = ""
    short_reason: str = ""
    needs_root: bool = False

    @abstractmethod
    def install(self, limits: list[PortLimit]) -> None:
        """Create popwatch's chains/sets (idempotent) and the rules for these ports, adopting
        rules that already exist rather than duplicating them."""

    @abstractmethod
    def uninstall(self) -> None:
        """Remove exactly what popwatch added."""

    @abstractmethod
    def ban(self, ip: str, ttl: float | None = None, *, net: bool | None = None) -> None:
        """Ban a validated, normalised address (or network string) for ``ttl`` seconds.
        ``net``: True bans the network itself; None lets the backend decide (IPv6: its /64)."""

    @abstractmethod
    def unban(self, ip: str, *, net: bool | None = None) -> None:
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

    # -- optional abilities: defaults fit a backend without kernel state (sim, none) --------
    def ban_many(self, items: Iterable[tuple[str, float | None]], *, net: bool | None = None) -> int:
        """Ban many (address, seconds or None) at once (start-up restore); returns how many.
        Kernel backends do it in one batch; the default bans one by one."""
        n = 0
        for ip, ttl in items:
            self.ban(ip, ttl, net=net)
            n += 1
        return n

    def ban_key(self, ip: str, *, net: bool | None = None) -> str:
        """The kernel entry a ban of ``ip`` becomes (IPv6 addresses: their /64 on the kernel
        backends); two targets with one key are one entry. Default: the address itself."""
        return ip

    def ensure_base(self) -> None:  # noqa: B027 - an optional ability: the default does nothing
        """Sets, chain, ban rule and jump, never the ports' rules (``popwatch ban``/``limit``
        outside a running watch). Default: nothing to set up."""

    @contextmanager
    def recording(self) -> Iterator[list[str]]:
        """Dry run: within the block, changes are described into the yielded list instead of
        being made. Default: nothing is ever made outside :meth:`install`."""
        yield []

    def exempted(self) -> list[str]:
        """The protected addresses/networks the kernel exempts from popwatch's rules."""
        return []

    def set_exempt(self, targets: Iterable[str]) -> None:  # noqa: B027 - an optional ability: the default does nothing
        """Exempt exactly these addresses/networks from popwatch's rules. Default: nothing."""

    def describe_ban(self, ip: str, ttl: float | None = None, *, net: bool | None = None) -> list[str]:
        """The exact commands/changes a ban makes, for the confirm modal and --dry-run."""
        return [f"ban {ip}" + (f" for {int(ttl)}s" if ttl else "")]

    def describe_unban(self, ip: str, *, net: bool | None = None) -> list[str]:
        """The exact commands/changes an unban makes."""
        return [f"unban {ip}"]

    def describe_limit(self, limit: PortLimit) -> list[str]:
        """The exact commands/changes a port's new limit makes."""
        return [limit.describe()]

    def describe_install(self, limits: list[PortLimit]) -> list[str]:
        """The exact commands/changes :meth:`install` would make. Default: none known."""
        return []

    def describe_uninstall(self) -> list[str]:
        """The exact commands/changes :meth:`uninstall` would make."""
        return ["uninstall"]

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
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

    def ban(self, ip: str, ttl: float | None = None, *, net: bool | None = None) -> None:
        self._refuse()

    def unban(self, ip: str, *, net: bool | None = None) -> None:
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


class GuardedWrites:
    """What both kernel firewalls (iptables+ipset, native nftables) share: refusing writes
    (``refuse_writes``: popwatch's rules found in both kernel backends), describing instead of
    writing while recording, and the popwatch firewall lock around every change.

    The class using it sets ``_recording``, ``_writes_refused``, ``_warnings``, ``can_write``,
    ``lock_path`` and ``wait``."""

    _recording: bool
    _writes_refused: str | None
    _warnings: list[str]
    can_write: bool
    lock_path: str | None
    wait: int

    def _check_first(self) -> None:
        """Refuse a change before reading anything (unless only describing it)."""
        if not self._recording:
            self._check_writable()

    def _check_writable(self) -> None:
        if self._writes_refused:
            raise FirewallError(self._writes_refused)

    def refuse_writes(self, why: str) -> None:
        """Make every change fail with ``why``."""
        self._writes_refused = why
        self.can_write = False
        self._warnings.append(why)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        if self._recording or not self.lock_path:
            yield
            return
        with flock_wait(self.lock_path, self.wait, f"another popwatch holds {self.lock_path}; try again",
                        poll=0.01):
            yield
