"""StateStore: everything popwatch knows, in one place, with bounded memory.

Written only from the Monitor (one asyncio loop); read by the UI and exporters through
immutable :class:`Snapshot` objects built on a timer, never per event.

Memory: one :class:`Attacker` per IP with a handful of slots (no per-event lists), at most
``max_ips`` of them (least recently seen evicted first, banned ones kept), a bounded event ring
and bounded per-user stats. The top-K view is maintained incrementally: a snapshot merges the
previous top-K with the IPs that changed since, so a tick costs O(changed + K), not O(IPs).
"""

from __future__ import annotations

import heapq
import ipaddress
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .firewall.base import PortLimit
from .model import FAILURE_KINDS, AuthEvent, Ban, CounterSample, Kind, PortCounters, SourceHealth, Service

_SERVICES = [s.value for s in Service]
_SVC_BIT = {s: 1 << i for i, s in enumerate(_SERVICES)}
_FAILS = frozenset(str(k) for k in FAILURE_KINDS)
_SUCCESS = str(Kind.SUCCESS)
_PROBE = str(Kind.PROBE)

USERS_PER_IP = 16
RATE_WINDOW = 60.0
SORT_KEYS = ("failures", "rate", "last")


class Attacker:
    """Per-IP aggregate. Few slots, no containers but a small capped user dict."""

    __slots__ = ("ip", "failures", "first", "last", "users", "nusers", "services", "successes",
                 "last_success", "win", "cur", "prev", "probes")

    def __init__(self, ip: str, ts: float) -> None:
        self.ip = ip
        self.failures = 0
        self.first = ts
        self.last = ts
        self.users: dict[str, None] = {}
        self.nusers = 0
        self.services = 0
        self.successes = 0
        self.last_success = 0.0
        self.win = int(ts // RATE_WINDOW)
        self.cur = 0
        self.prev = 0
        self.probes = 0

    def add_failures(self, n: int, ts: float) -> None:
        w = int(ts // RATE_WINDOW)
        if w != self.win:
            if w > self.win:
                self.prev = self.cur if w == self.win + 1 else 0
                self.cur = 0
                self.win = w
            else:  # an older line (backfill, late dovecot summary): count it in the past window
                if w == self.win - 1:
                    self.prev += n
                self.failures += n
                return
        self.cur += n
        self.failures += n

    def rate(self, now: float) -> float:
        """Failures per minute over a sliding 60 s window (two-bucket approximation)."""
        w = int(now // RATE_WINDOW)
        if w == self.win:
            frac = (now - w * RATE_WINDOW) / RATE_WINDOW
            return self.cur + self.prev * (1.0 - frac)
        if w == self.win + 1:
            frac = (now - w * RATE_WINDOW) / RATE_WINDOW
            return self.cur * (1.0 - frac)
        return 0.0

    def add_user(self, user: str) -> None:
        users = self.users
        if user in users:
            del users[user]  # move to the end: most recent last
        else:
            self.nusers += 1
            if len(users) >= USERS_PER_IP:
                del users[next(iter(users))]
        users[user] = None


@dataclass(frozen=True, slots=True)
class AttackerRow:
    ip: str
    failures: int
    rate: float
    users: tuple[str, ...]       # most recent last, at most USERS_PER_IP
    nusers: int
    services: tuple[str, ...]
    first: float
    last: float
    state: str                   # watching | near | banned | protected
    ban_left: float | None       # seconds, None = permanent (only when banned)
    successes: int
    probes: int


@dataclass(frozen=True, slots=True)
class PortRow:
    port: int
    limit: PortLimit
    passed_s: float
    dropped_s: float
    passed_hist: tuple[float, ...]
    dropped_hist: tuple[float, ...]
    passed_total: int
    dropped_total: int


@dataclass(frozen=True, slots=True)
class UserRow:
    user: str
    failures: int
    nips: int
    last: float


@dataclass(frozen=True)
class Snapshot:
    version: int
    now: float
    rows: tuple[AttackerRow, ...]
    total_ips: int
    shown_of: int                # rows matching the filter (rows may be the top-K of them)
    ports: tuple[PortRow, ...]
    events: tuple[AuthEvent, ...]
    bans: tuple[Ban, ...]
    sources: tuple[SourceHealth, ...]
    users: tuple[UserRow, ...]
    events_per_s: float
    failures_total: int
    events_total: int
    sort: str = "failures"
    filter: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)


class _UserStat:
    __slots__ = ("failures", "ips", "last")

    def __init__(self) -> None:
        self.failures = 0
        self.ips: set[str] = set()
        self.last = 0.0


class StateStore:
    """All state. ``clock`` returns wall-clock epoch seconds (injected for demo/tests)."""

    def __init__(self, *, clock: Callable[[], float], max_ips: int = 200_000, ring: int = 2000,
                 max_users: int = 50_000, history: int = 300,
                 protected: Callable[[str], str | None] | None = None,
                 near_threshold: Callable[[Attacker, float], bool] | None = None) -> None:
        self.clock = clock
        self.max_ips = max_ips
        self.max_users = max_users
        self.attackers: dict[str, Attacker] = {}
        self.events: deque[AuthEvent] = deque(maxlen=ring)
        self.users: dict[str, _UserStat] = {}
        self.bans: dict[str, Ban] = {}
        self.limits: dict[int, PortLimit] = {}
        self.sources: dict[str, SourceHealth] = {}
        self.notes: list[str] = []
        self.version = 0
        self.events_total = 0
        self.failures_total = 0
        self.n_attackers = 0  # IPs with at least one failure or probe (success-only ones are not)
        self.protected = protected or (lambda ip: None)
        self.near_threshold = near_threshold
        self._history = history
        self._pass_hist: dict[int, deque[float]] = {}
        self._drop_hist: dict[int, deque[float]] = {}
        self._last_sample: CounterSample | None = None
        self._rates: dict[int, tuple[float, float]] = {}
        self._totals: dict[int, PortCounters] = {}
        self._dirty: set[str] = set()
        self._top: list[str] = []
        self._top_key = ""
        self._eps = 0.0
        self._eps_mark = (clock(), 0)
        self._protected_cache: dict[str, str | None] = {}

    # ----------------------------------------------------------------- ingest
    def add_events(self, events: Iterable[AuthEvent]) -> int:
        """Aggregate a batch of events. Returns how many were taken."""
        attackers = self.attackers
        dirty = self._dirty
        ring = self.events.append
        svc_bit = _SVC_BIT
        fails = _FAILS
        n = 0
        for ev in events:
            n += 1
            ip = ev.ip
            kind = ev.kind
            is_fail = kind in fails
            if is_fail or kind == _SUCCESS:
                ring(ev)
            if is_fail and ev.user:
                self._add_user(ev.user, ip, ev.ts, ev.attempts)
            if ip is None:
                if is_fail:
                    self.failures_total += ev.attempts
                continue
            a = attackers.get(ip)
            if a is None:
                if kind == _SUCCESS:
                    # a success from an unknown IP is remembered only if it later fails
                    a = Attacker(ip, ev.ts)
                    a.successes = 1
                    a.last_success = ev.ts
                    attackers[ip] = a
                    continue
                a = attackers[ip] = Attacker(ip, ev.ts)
            if ev.ts > a.last:
                a.last = ev.ts
            elif ev.ts < a.first:
                a.first = ev.ts
            a.services |= svc_bit.get(ev.service, 0)
            if (is_fail or kind == _PROBE) and not (a.failures or a.probes):
                self.n_attackers += 1
            if is_fail:
                if ev.attempts:
                    a.add_failures(ev.attempts, ev.ts)
                    self.failures_total += ev.attempts
                if ev.user:
                    a.add_user(ev.user)
            elif kind == _SUCCESS:
                a.successes += 1
                a.last_success = max(a.last_success, ev.ts)
            elif kind == _PROBE:
                a.probes += 1
            dirty.add(ip)
        if n:
            self.events_total += n
            self.version += 1
            if len(attackers) > self.max_ips:
                self._evict()
        return n

    def _add_user(self, user: str, ip: str | None, ts: float, attempts: int) -> None:
        st = self.users.get(user)
        if st is None:
            if len(self.users) >= self.max_users:
                self._evict_users()
            st = self.users[user] = _UserStat()
        st.failures += attempts
        if ip is not None and len(st.ips) < 1000:
            st.ips.add(ip)
        if ts > st.last:
            st.last = ts

    def _evict(self) -> None:
        """Drop the least recently seen tenth of IPs (never banned ones)."""
        excess = len(self.attackers) - int(self.max_ips * 0.9)
        victims = heapq.nsmallest(excess, (a for a in self.attackers.values() if a.ip not in self.bans),
                                  key=lambda a: a.last)
        for a in victims:
            if a.failures or a.probes:
                self.n_attackers -= 1
            del self.attackers[a.ip]
            self._dirty.discard(a.ip)
        gone = {a.ip for a in victims}
        self._top = [ip for ip in self._top if ip not in gone]

    def _evict_users(self) -> None:
        excess = len(self.users) - int(self.max_users * 0.9)
        for user, _ in heapq.nsmallest(excess, self.users.items(), key=lambda kv: kv[1].last):
            del self.users[user]

    # ---------------------------------------------------------------- counters
    def add_counters(self, sample: CounterSample) -> None:
        """Turn cumulative counters into rates over the *measured* interval between polls.
        A counter that went down was reset (rule replaced without -c, reboot): its new value is
        the delta."""
        prev = self._last_sample
        self._last_sample = sample
        for port, c in sample.ports.items():
            self._totals[port] = c
        if prev is None:
            self.version += 1
            return
        dt = sample.mono - prev.mono
        if dt <= 0:
            return
        for port, c in sample.ports.items():
            p = prev.ports.get(port)
            if p is None:
                continue
            dp = c.passed - p.passed if c.passed >= p.passed else c.passed
            dd = c.dropped - p.dropped if c.dropped >= p.dropped else c.dropped
            ps, ds = dp / dt, dd / dt
            self._rates[port] = (ps, ds)
            self._pass_hist.setdefault(port, deque(maxlen=self._history)).append(ps)
            self._drop_hist.setdefault(port, deque(maxlen=self._history)).append(ds)
        self.version += 1

    # ---------------------------------------------------------- bans / limits
    def set_ban(self, ban: Ban) -> None:
        self.bans[ban.ip] = ban
        self._dirty.add(ban.ip)
        self.version += 1

    def remove_ban(self, ip: str) -> Ban | None:
        b = self.bans.pop(ip, None)
        self._dirty.add(ip)
        self.version += 1
        return b

    def expire_bans(self) -> list[Ban]:
        now = self.clock()
        gone = [b for b in self.bans.values() if b.expires is not None and b.expires <= now]
        for b in gone:
            self.remove_ban(b.ip)
        return gone

    def set_limit(self, limit: PortLimit) -> None:
        self.limits[limit.port] = limit
        self.version += 1

    def set_source(self, health: SourceHealth) -> None:
        if self.sources.get(health.name) != health:
            self.sources[health.name] = health
            self.version += 1

    def note(self, text: str) -> None:
        self.notes.append(text)
        del self.notes[:-20]
        self.version += 1

    # ------------------------------------------------------------------ reads
    def state_of(self, a: Attacker, now: float) -> tuple[str, float | None]:
        b = self.bans.get(a.ip)
        if b is not None and (b.expires is None or b.expires > now):
            return "banned", (None if b.expires is None else b.expires - now)
        why = self._protected_cache.get(a.ip, "")
        if why == "":
            why = self._protected_cache[a.ip] = self.protected(a.ip)
            if len(self._protected_cache) > 4 * self.max_ips:
                self._protected_cache.clear()
        if why:
            return "protected", None
        if self.near_threshold is not None and self.near_threshold(a, now):
            return "near", None
        return "watching", None

    def row(self, a: Attacker, now: float) -> AttackerRow:
        state, left = self.state_of(a, now)
        svcs = tuple(s for s in _SERVICES if a.services & _SVC_BIT[s])
        return AttackerRow(a.ip, a.failures, a.rate(now), tuple(a.users), a.nusers, svcs, a.first,
                           a.last, state, left, a.successes, a.probes)

    @staticmethod
    def _sort_key(sort: str, now: float) -> Callable[[Attacker], float]:
        if sort == "rate":
            return lambda a: a.rate(now)
        if sort == "last":
            return lambda a: a.last
        return lambda a: a.failures

    def top(self, k: int, sort: str = "failures") -> list[Attacker]:
        """Top-K attackers by ``sort``, incrementally: previous top-K plus what changed."""
        now = self.clock()
        key = self._sort_key(sort, now)
        attackers = self.attackers
        if sort != self._top_key or len(self._top) < min(k, self.n_attackers) or sort == "rate":
            # full pass: on sort change, when the top is short, and for rates (they decay)
            cands: Iterable[Attacker] = (a for a in attackers.values() if a.failures or a.probes)
        else:
            ids = set(self._top)
            ids.update(self._dirty)
            cands = [a for i in ids if (a := attackers.get(i)) is not None and (a.failures or a.probes)]
        best = heapq.nlargest(k, cands, key=key)
        self._top = [a.ip for a in best]
        self._top_key = sort
        self._dirty.clear()
        return best

    def matching(self, flt: str) -> list[Attacker]:
        """Attackers whose IP, prefix (CIDR), user or service matches ``flt`` (full scan)."""
        f = flt.strip().lower()
        if not f:
            return [a for a in self.attackers.values() if a.failures or a.probes]
        net = None
        if "/" in f:
            try:
                net = ipaddress.ip_network(f, strict=False)
            except ValueError:
                net = None
        bit = _SVC_BIT.get(f, 0)
        out = []
        for a in self.attackers.values():
            if not (a.failures or a.probes):
                continue
            if net is not None:
                try:
                    if ipaddress.ip_address(a.ip) in net:
                        out.append(a)
                except ValueError:
                    pass
                continue
            if a.ip.startswith(f) or (bit and a.services & bit) or any(f in u.lower() for u in a.users):
                out.append(a)
        return out

    def snapshot(self, *, k: int = 200, sort: str = "failures", flt: str = "", events: int = 60,
                 users: int = 20) -> Snapshot:
        now = self.clock()
        if flt:
            matched = self.matching(flt)
            best = heapq.nlargest(k, matched, key=self._sort_key(sort, now))
            shown_of = len(matched)
        else:
            best = self.top(k, sort)
            shown_of = self.n_attackers
        rows = tuple(self.row(a, now) for a in best)
        ports = []
        for port in sorted(self.limits):
            ps, ds = self._rates.get(port, (0.0, 0.0))
            tot = self._totals.get(port, PortCounters(port, 0, 0))
            ports.append(PortRow(port, self.limits[port], ps, ds,
                                 tuple(self._pass_hist.get(port, ())), tuple(self._drop_hist.get(port, ())),
                                 tot.passed, tot.dropped))
        # events/s, smoothed between snapshots
        t0, n0 = self._eps_mark
        if now - t0 >= 1.0:
            inst = (self.events_total - n0) / (now - t0)
            self._eps = inst if self._eps == 0 else 0.5 * self._eps + 0.5 * inst
            self._eps_mark = (now, self.events_total)
        # the newest events that count (failures with attempts, logins); de-duplication twins
        # (attempts=0) stay in the ring for the detail view but not in the live log
        tail_l: list[AuthEvent] = []
        ring = self.events
        i = len(ring) - 1
        while i >= 0 and len(tail_l) < events and i >= len(ring) - 4 * events:
            e = ring[i]
            if e.attempts or e.kind == _SUCCESS:
                tail_l.append(e)
            i -= 1
        tail = tuple(reversed(tail_l))
        top_users = heapq.nlargest(users, self.users.items(), key=lambda kv: kv[1].failures)
        return Snapshot(
            version=self.version, now=now, rows=rows, total_ips=self.n_attackers, shown_of=shown_of,
            ports=tuple(ports), events=tail, bans=tuple(sorted(self.bans.values(), key=lambda b: b.created)),
            sources=tuple(self.sources.values()),
            users=tuple(UserRow(u, s.failures, len(s.ips), s.last) for u, s in top_users),
            events_per_s=self._eps, failures_total=self.failures_total, events_total=self.events_total,
            sort=sort, filter=flt, notes=tuple(self.notes[-3:]),
        )

    def events_of(self, ip: str) -> list[AuthEvent]:
        """The events in the ring from ``ip`` (for the detail view)."""
        return [e for e in self.events if e.ip == ip]
