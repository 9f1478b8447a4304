"""StateStore: everything popwatch knows, in one place, with bounded memory.

Written only from the Monitor (one asyncio loop); read by the UI and exporters through
immutable :class:`Snapshot` objects built on a timer, never per event.

Memory: one :class:`Attacker` per IP with a handful of slots (no per-event lists), at most
``max_ips`` of them (least recently seen evicted first, banned ones kept), a bounded event ring
and bounded per-user stats. The top-K view is maintained incrementally: a snapshot merges the
previous top-K with the IPs that changed since, so a tick costs O(changed + K), not O(IPs).
That includes the rate sort, whose values decay with time (a rolling re-check, see
:class:`_View`). The /24 (IPv4) and /64 (IPv6) roll-up is kept
the same way, aggregated as events arrive.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .addr import NetIndex
from .conns import PortConns
from .model import (
    FAILURE_KINDS,
    AuthEvent,
    Ban,
    CounterSample,
    Kind,
    PortCounters,
    PortLimit,
    RowState,
    Service,
    SourceHealth,
    TwoBucket,
)

_SERVICES = [s.value for s in Service]
_SVC_BIT = {s: 1 << i for i, s in enumerate(_SERVICES)}
# `mail` (a dovecot login whose protocol is not named yet) gives way to the protocol once known
_MAIL_BIT = _SVC_BIT["mail"]
_MAIL_PROTOS = _SVC_BIT["pop3"] | _SVC_BIT["imap"] | _SVC_BIT["submission"] | _SVC_BIT["sieve"] | _SVC_BIT["smtp"]
_FAILS = frozenset(str(k) for k in FAILURE_KINDS)
_SUCCESS = str(Kind.SUCCESS)
_PROBE = str(Kind.PROBE)

USERS_PER_IP = 16
RATE_WINDOW = 60.0
SORT_KEYS = ("failures", "rate", "last")
#: candidates a view keeps beyond the K it shows (fewer full passes for the rate sort)
VIEW_SLACK = 2
#: entries per tick the rate views re-check (see :class:`_View`)
SCAN_SLICE = 2000
#: ban/unban history entries kept for the detail view
BAN_LOG = 2000


class Attacker(TwoBucket):
    """Per-IP aggregate. Few slots, no containers but a small capped user dict; its failure
    rate is the :class:`TwoBucket` it is."""

    __slots__ = (
        "failures",
        "first",
        "ip",
        "last",
        "last_success",
        "net",
        "nusers",
        "probes",
        "services",
        "successes",
        "users",
    )

    def __init__(self, ip: str, ts: float) -> None:
        self.ip = ip
        self.net: Net | None = None
        self.failures = 0
        self.first = ts
        self.last = ts
        self.users: dict[str, None] = {}
        self.nusers = 0
        self.services = 0
        self.successes = 0
        self.last_success = 0.0
        TwoBucket.__init__(self, int(ts // RATE_WINDOW))
        self.probes = 0

    def add_failures(self, n: int, ts: float) -> None:
        self.add(n, ts, RATE_WINDOW)
        self.failures += n

    def rate(self, now: float) -> float:
        """Failures per minute over a sliding 60 s window (two-bucket approximation)."""
        return self.count(now, RATE_WINDOW)

    def add_user(self, user: str) -> None:
        users = self.users
        if user in users:
            del users[user]  # move to the end: most recent last
        else:
            self.nusers += 1
            if len(users) >= USERS_PER_IP:
                del users[next(iter(users))]
        users[user] = None


class Net(Attacker):
    """A /24 (IPv4) or /64 (IPv6) roll-up: the same aggregate over every attacker in it."""

    __slots__ = ("nips",)

    def __init__(self, key: str, ts: float) -> None:
        super().__init__(key, ts)
        self.nips = 0


def net_of(ip: str) -> str:
    """The roll-up key of an address: ``a.b.c.0/24`` or the ``/64`` of an IPv6 address."""
    if ":" not in ip:
        return ip[: ip.rfind(".")] + ".0/24"
    try:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    except ValueError:
        return ip


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
    state: str                   # a RowState value
    ban_left: float | None       # seconds, None = permanent (only when banned)
    successes: int
    probes: int
    nips: int = 1                # roll-up rows: addresses in the network
    banned_ips: int = 0          # roll-up rows: how many of them are banned
    fleet: str = ""              # banned fleet-wide (CrowdSec decision label), "" if not


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
    #: established connections now (socket table; None when not collected)
    conns: PortConns | None = None


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
    rollup: bool = False
    #: per service with failures in the last minute: (service, top IP, its share 0..1, failures/min)
    shares: tuple[tuple[str, str, float, float], ...] = ()
    #: packets dropped by the ban match, per second, and its history
    ban_dropped_s: float = 0.0
    ban_dropped_hist: tuple[float, ...] = ()
    full_passes: int = 0


@dataclass(frozen=True, slots=True)
class BanLogEntry:
    ts: float
    action: str                  # ban | unban | expire
    ip: str
    origin: str = ""
    reason: str = ""
    expires: float | None = None


class _SvcWindow(TwoBucket):
    """Failures per minute of one service (the same window as :class:`Attacker`)."""

    __slots__ = ()

    def rate(self, now: float) -> float:
        return self.count(now, RATE_WINDOW)


def _key_fn(sort: str, now: float) -> Callable[[Attacker], float]:
    if sort == "rate":
        # Attacker.rate inlined: this runs for every candidate of every tick
        w = int(now // RATE_WINDOW)
        left = 1.0 - (now - w * RATE_WINDOW) / RATE_WINDOW
        return lambda a: (a.cur + a.prev * left if a.win == w else a.cur * left if a.win == w - 1 else 0.0)
    if sort == "last":
        return lambda a: a.last
    return lambda a: a.failures


def _counts(a: Attacker) -> bool:
    return bool(a.failures or a.probes)


def make_filter(flt: str) -> Callable[[Attacker], bool] | None:
    """A predicate for the ``/`` filter: IP or network prefix, CIDR, service name, or part of a
    username (case-insensitive). None for an empty filter."""
    f = flt.strip().lower()
    if not f:
        return None
    net = None
    if "/" in f:
        try:
            net = ipaddress.ip_network(f, strict=False)
        except ValueError:
            net = None
    if net is not None:
        def in_net(a: Attacker) -> bool:
            try:
                if "/" in a.ip:
                    other = ipaddress.ip_network(a.ip)
                    return other.version == net.version and other.overlaps(net)
                addr = ipaddress.ip_address(a.ip)
                return addr.version == net.version and addr in net
            except ValueError:
                return False
        return in_net
    bit = _SVC_BIT.get(f, 0)

    def match(a: Attacker) -> bool:
        return (a.ip.startswith(f) or bool(bit and a.services & bit)
                or any(f in u.lower() for u in a.users))
    return match


class _View:
    """Incremental top-K of one population (addresses or networks) for one sort and filter.

    It keeps ``K * VIEW_SLACK`` candidates and, per tick, re-ranks only them plus what changed
    since the last tick, so a tick costs O(changed + K), never O(population):

    * failures and last seen only grow, and only with an event; an entry that changed is a
      candidate, so the candidates always hold the true top-K (exact);
    * a rate decays without events, and entries in different minute windows decay at different
      speeds, so an entry that dropped out can come back ahead without changing. A rolling scan
      re-checks ``SCAN_SLICE`` entries per tick (all of 100,000 every 50 ticks), which bounds
      how long such an entry can be missing; nothing else ever walks the whole population.

    A full pass happens only when the view is new (sort, filter or roll-up changed) or when the
    candidates run short (evictions).
    """

    def __init__(self, sort: str, pred: Callable[[Attacker], bool] | None) -> None:
        self.sort = sort
        self.pred = pred
        self.top: list[str] = []
        self.dirty: set[str] = set()
        self.members: set[str] | None = None if pred is None else set()
        self.fresh = True
        self.full_passes = 0
        self._scan: list[str] = []
        self._scan_pos = 0

    def _full(self, pop: dict[str, Attacker], k: int, now: float) -> list[Attacker]:
        key = _key_fn(self.sort, now)
        pred = self.pred
        if pred is None:
            cands = [a for a in pop.values() if _counts(a)]
        else:
            cands = [a for a in pop.values() if _counts(a) and pred(a)]
            self.members = {a.ip for a in cands}
        best = heapq.nlargest(k * VIEW_SLACK, cands, key=key)
        self.top = [a.ip for a in best]
        self.dirty.clear()
        self.fresh = False
        self.full_passes += 1
        return best[:k]

    def _scan_slice(self, pop: dict[str, Attacker]) -> list[str]:
        if self._scan_pos >= len(self._scan):
            self._scan = list(pop)
            self._scan_pos = 0
        out = self._scan[self._scan_pos:self._scan_pos + SCAN_SLICE]
        self._scan_pos += SCAN_SLICE
        return out

    def get(self, pop: dict[str, Attacker], k: int, now: float, population: int) -> list[Attacker]:
        """The top ``k``; ``population`` is how many entries count (to detect a short top)."""
        if self.fresh:
            return self._full(pop, k, now)
        key = _key_fn(self.sort, now)
        pred = self.pred
        members = self.members
        fresh_ids = self.dirty
        if self.sort == "rate":
            fresh_ids = fresh_ids.union(self._scan_slice(pop))
        fresh_ids.difference_update(self.top)
        # sorted: ties keep one order whatever the string hash seed (stable pictures and tests)
        fresh = sorted(fresh_ids)
        get = pop.get
        cands = [a for i in self.top if (a := get(i)) is not None]
        if pred is None:
            cands += [a for i in fresh if (a := get(i)) is not None and (a.failures or a.probes)]
        else:
            for ip in fresh:
                a = get(ip)
                if a is not None and (a.failures or a.probes) and pred(a):
                    members.add(ip)  # type: ignore[union-attr]  # members is a set whenever a predicate is given
                    cands.append(a)
        self.dirty = set()
        if members is not None:
            population = len(members)
        ranked = heapq.nlargest(k * VIEW_SLACK, cands, key=key)
        if len(ranked) < min(k * VIEW_SLACK, population):
            return self._full(pop, k, now)
        self.top = [a.ip for a in ranked]
        return ranked[:k]

    def count(self, population: int) -> int:
        return population if self.members is None else len(self.members)


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
        #: the network bans among ``bans`` (which hold an address: ``net_bans.holders(ip)``)
        self.net_bans = NetIndex()
        self.limits: dict[int, PortLimit] = {}
        self.conns: dict[int, PortConns] = {}
        self.sources: dict[str, SourceHealth] = {}
        self.notes: list[str] = []
        self.version = 0
        self.events_total = 0
        self.failures_total = 0
        self.n_attackers = 0  # IPs with at least one failure or probe (success-only ones are not)
        self.n_nets = 0       # roll-up networks likewise
        self.protected = protected or (lambda ip: None)
        self.near_threshold = near_threshold
        self._history = history
        self._pass_hist: dict[int, deque[float]] = {}
        self._drop_hist: dict[int, deque[float]] = {}
        self._last_sample: CounterSample | None = None
        self._rates: dict[int, tuple[float, float]] = {}
        self._totals: dict[int, PortCounters] = {}
        self._dirty: set[str] = set()
        self.nets: dict[str, Net] = {}
        self._dirty_nets: set[str] = set()
        self._views: dict[tuple[bool, str, str], _View] = {}
        self._svc: dict[str, _SvcWindow] = {}
        self._dirty_users: set[str] = set()
        self._top_users: list[str] = []
        self._users_bound = 0
        self.ban_log: deque[BanLogEntry] = deque(maxlen=BAN_LOG)
        self._ban_drop_rate = 0.0
        self._ban_drop_hist: deque[float] = deque(maxlen=history)
        self._eps = 0.0
        self._eps_mark = (clock(), 0)
        self._protected_cache: dict[str, str | None] = {}
        #: CrowdSec decisions seen on the LAPI (popwatch/crowdsec.py): address or CIDR -> a short
        #: label for the row, e.g. "cscli" or "popwatch/auto; not in this host's set"
        self.fleet_bans: dict[str, str] = {}
        #: ring events labelled `mail` per dovecot session, relabelled when the session's protocol
        #: shows up (see :meth:`_track_mail`): session -> ring sequence numbers, plus the same in
        #: arrival order so entries leave with the ring; both hold at most ``ring`` entries. A
        #: session whose protocol is known moves to ``_mail_done`` (service, session, numbers),
        #: applied when the ring is read (:meth:`_relabel`): in a flood most have left by then
        self._ring_n = 0
        self._mail_sess: dict[str, list[int]] = {}
        self._mail_q: deque[tuple[int, str]] = deque()
        self._mail_done: list[tuple[str, str, list[int]]] = []
        self._mail_done_n = 0  # sequence numbers in _mail_done

    # ----------------------------------------------------------------- ingest
    def add_events(self, events: Iterable[AuthEvent]) -> int:
        """Aggregate a batch of events. Returns how many were taken."""
        attackers = self.attackers
        dirty = self._dirty
        dirty_nets = self._dirty_nets
        nets = self.nets
        svc_win = self._svc
        ring = self.events.append
        svc_bit = _SVC_BIT
        fails = _FAILS
        mail_sess = self._mail_sess
        rn = self._ring_n
        n = 0
        for ev in events:
            n += 1
            ip = ev.ip
            kind = ev.kind
            is_fail = kind in fails
            if is_fail or kind == _SUCCESS:
                ring(ev)
                rn += 1
                if ev.session is not None and ev.service == "mail":
                    self._track_mail(ev.session, rn)
            if mail_sess and ev.session in mail_sess and svc_bit.get(ev.service, 0) & _MAIL_PROTOS:
                seqs = mail_sess.pop(ev.session)
                self._mail_done.append((ev.service, ev.session, seqs))
                self._mail_done_n += len(seqs)
            if is_fail and ev.user:
                self._add_user(ev.user, ip, ev.ts, ev.attempts)
            if is_fail and ev.attempts:
                sw = svc_win.get(ev.service)
                if sw is None:
                    sw = svc_win[ev.service] = _SvcWindow()
                sw.add(ev.attempts, ev.ts, RATE_WINDOW)
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
            net = a.net
            if net is None:
                key = net_of(ip)
                net = nets.get(key)
                if net is None:
                    net = nets[key] = Net(key, ev.ts)
                net.nips += 1
                a.net = net
            for x in (a, net):
                if ev.ts > x.last:
                    x.last = ev.ts
                elif ev.ts < x.first:
                    x.first = ev.ts
                b = svc_bit.get(ev.service, 0)
                if b & _MAIL_PROTOS:
                    x.services = (x.services | b) & ~_MAIL_BIT
                elif b != _MAIL_BIT or not x.services & _MAIL_PROTOS:
                    x.services |= b
            # becomes an attacker with its first counted failure or probe (a de-duplication
            # twin with attempts=0 counts for nothing)
            if ((is_fail and ev.attempts) or kind == _PROBE) and not (a.failures or a.probes):
                self.n_attackers += 1
                if not (net.failures or net.probes):
                    self.n_nets += 1
            if is_fail:
                if ev.attempts:
                    a.add_failures(ev.attempts, ev.ts)
                    net.add_failures(ev.attempts, ev.ts)
                    self.failures_total += ev.attempts
                if ev.user:
                    a.add_user(ev.user)
                    net.add_user(ev.user)
            elif kind == _SUCCESS:
                a.successes += 1
                a.last_success = max(a.last_success, ev.ts)
                net.successes += 1
            elif kind == _PROBE:
                a.probes += 1
                net.probes += 1
            dirty.add(ip)
            dirty_nets.add(net.ip)
        self._ring_n = rn
        if self._mail_done_n > 4 * len(self.events):  # most have left the ring by then
            self._relabel()
        if n:
            self.events_total += n
            self.version += 1
            if len(attackers) > self.max_ips:
                self._evict()
        return n

    def _track_mail(self, session: str, rn: int) -> None:
        """Remember that the ring's newest event is a `mail` one of ``session``. Entries whose
        event the ring has dropped go first, so this holds at most ``ring`` entries whatever
        the number of sessions that never get a summary."""
        seq = rn - 1
        old = seq - len(self.events)  # sequence numbers <= old have left the ring
        q, d = self._mail_q, self._mail_sess
        while q and q[0][0] <= old:
            s0, sess0 = q.popleft()
            lst = d.get(sess0)
            if lst and lst[0] == s0:
                del lst[0]
                if not lst:
                    del d[sess0]
        q.append((seq, session))
        lst = d.get(session)
        if lst is None:
            d[session] = [seq]
        else:
            lst.append(seq)

    def _relabel(self) -> None:
        """Sessions whose protocol the login process named: their `mail` events still in the
        ring take it (O(their events); the ring is not scanned). Called before the ring is
        read. ``scan --json`` streams events as they are parsed and is not relabelled."""
        done = self._mail_done
        if not done:
            return
        ring = self.events
        base = self._ring_n - len(ring)
        for service, session, seqs in done:
            if seqs[-1] < base:
                continue  # all gone from the ring
            for seq in seqs:
                i = seq - base
                if i >= 0:
                    e = ring[i]
                    if e.service == "mail" and e.session == session:
                        ring[i] = AuthEvent(e.ts, service, e.kind, e.ip, e.user, e.attempts, e.source,
                                            e.lineno, e.line, e.host, session)
        done.clear()
        self._mail_done_n = 0

    def _add_user(self, user: str, ip: str | None, ts: float, attempts: int) -> None:
        st = self.users.get(user)
        if st is None:
            if len(self.users) >= self.max_users:
                self._evict_users()
            st = self.users[user] = _UserStat()
        st.failures += attempts
        self._dirty_users.add(user)
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
            net = a.net
            if net is not None:
                net.nips -= 1
                if net.nips <= 0:
                    if net.failures or net.probes:
                        self.n_nets -= 1
                    del self.nets[net.ip]
                    self._dirty_nets.discard(net.ip)
        gone = {a.ip for a in victims}
        for (rollup, _, _), view in self._views.items():
            if view.members is not None:
                if rollup:
                    view.members.intersection_update(self.nets)
                else:
                    view.members -= gone

    def _evict_users(self) -> None:
        excess = len(self.users) - int(self.max_users * 0.9)
        for user, _ in heapq.nsmallest(excess, self.users.items(), key=lambda kv: kv[1].last):
            del self.users[user]
            self._dirty_users.discard(user)

    def set_policy(self, *, protected: Callable[[str], str | None] | None = None,
                   near_threshold: Callable[[Attacker, float], bool] | None = None) -> None:
        """The policy's answers the rows show: why an address is protected (None: it is not),
        and whether an attacker is one failure from the auto-ban threshold. The Monitor gives
        its own here; a callback given at construction stays."""
        if protected is not None:
            self.protected = protected
            self._protected_cache.clear()
        if near_threshold is not None and self.near_threshold is None:
            self.near_threshold = near_threshold

    # ---------------------------------------------------------------- counters
    def port_totals(self) -> dict[int, PortCounters]:
        """The last cumulative kernel counters per port (a copy)."""
        return dict(self._totals)

    @property
    def last_sample(self) -> CounterSample | None:
        """The last counter poll, None before the first."""
        return self._last_sample

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
        b0, b1 = prev.banned_dropped, sample.banned_dropped
        changed = False
        rate = (b1 - b0 if b1 >= b0 else b1) / dt
        changed |= rate != self._ban_drop_rate
        self._ban_drop_rate = rate
        self._ban_drop_hist.append(rate)
        for port, c in sample.ports.items():
            p = prev.ports.get(port)
            if p is None:
                continue
            dp = c.passed - p.passed if c.passed >= p.passed else c.passed
            dd = c.dropped - p.dropped if c.dropped >= p.dropped else c.dropped
            ps, ds = dp / dt, dd / dt
            changed |= self._rates.get(port) != (ps, ds)
            self._rates[port] = (ps, ds)
            self._pass_hist.setdefault(port, deque(maxlen=self._history)).append(ps)
            self._drop_hist.setdefault(port, deque(maxlen=self._history)).append(ds)
        if changed:
            # an idle server polls the same rates every second: no new version, no repaint
            # (the UI still redraws every few seconds for ages and sliding rates)
            self.version += 1

    # ---------------------------------------------------------- bans / limits
    def set_ban(self, ban: Ban) -> None:
        self.bans[ban.ip] = ban
        if "/" in ban.ip:
            self.net_bans.add(ban.ip)
        self._touch(ban.ip)
        self.ban_log.append(BanLogEntry(self.clock(), "ban", ban.ip, ban.origin, ban.reason, ban.expires))
        self.version += 1

    def remove_ban(self, ip: str, *, action: str = "unban") -> Ban | None:
        b = self.bans.pop(ip, None)
        if "/" in ip:
            self.net_bans.discard(ip)
        self._touch(ip)
        if b is not None:
            self.ban_log.append(BanLogEntry(self.clock(), action, ip))
        self.version += 1
        return b

    def _touch(self, ip: str) -> None:
        self._dirty.add(ip)
        a = self.attackers.get(ip)
        if a is not None and a.net is not None:
            self._dirty_nets.add(a.net.ip)

    def expire_bans(self) -> list[Ban]:
        now = self.clock()
        gone = [b for b in self.bans.values() if b.expires is not None and b.expires <= now]
        for b in gone:
            self.remove_ban(b.ip, action="expire")
        return gone

    def ban_history(self, ip: str) -> list[BanLogEntry]:
        """Bans and unbans of ``ip`` seen by this process (for the detail view)."""
        return [e for e in self.ban_log if e.ip == ip]

    def set_limit(self, limit: PortLimit) -> None:
        self.limits[limit.port] = limit
        self.version += 1

    def set_conns(self, conns: dict[int, PortConns]) -> None:
        """Established connections per port (:mod:`popwatch.conns`), from the poll."""
        if conns != self.conns:
            self.conns = dict(conns)
            self.version += 1

    def set_fleet_bans(self, bans: dict[str, str]) -> None:
        """Replace the fleet-wide (CrowdSec) bans shown on rows: "banned fleet-wide (label)"."""
        if bans != self.fleet_bans:
            old = self.fleet_bans
            self.fleet_bans = dict(bans)
            for ip in old.keys() ^ bans.keys():
                self._touch(ip)
            for ip in bans.keys() & old.keys():
                if bans[ip] != old[ip]:
                    self._touch(ip)
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
            return RowState.BANNED, (None if b.expires is None else b.expires - now)
        why = self._protected_cache.get(a.ip, "")
        if why == "":
            why = self._protected_cache[a.ip] = self.protected(a.ip)
            if len(self._protected_cache) > 4 * self.max_ips:
                self._protected_cache.clear()
        if why:
            return RowState.PROTECTED, None
        if self.near_threshold is not None and self.near_threshold(a, now):
            return RowState.NEAR, None
        return RowState.WATCHING, None

    def row(self, a: Attacker, now: float) -> AttackerRow:
        if isinstance(a, Net):
            return self.net_row(a, now)
        state, left = self.state_of(a, now)
        svcs = tuple(s for s in _SERVICES if a.services & _SVC_BIT[s])
        return AttackerRow(a.ip, a.failures, a.rate(now), tuple(a.users), a.nusers, svcs, a.first,
                           a.last, state, left, a.successes, a.probes,
                           fleet=self.fleet_bans.get(a.ip, "") if self.fleet_bans else "")

    def net_row(self, n: Net, now: float) -> AttackerRow:
        """A roll-up row: banned when the network itself is, else counts its banned addresses."""
        svcs = tuple(s for s in _SERVICES if n.services & _SVC_BIT[s])
        banned = 0
        attackers = self.attackers
        for ip in self.bans:
            a = attackers.get(ip)
            if a is not None and a.net is n:
                banned += 1
        b = self.bans.get(n.ip)
        if b is not None and (b.expires is None or b.expires > now):
            state, left = RowState.BANNED, (None if b.expires is None else b.expires - now)
        else:
            why = self.protected(n.ip)
            state, left = (RowState.PROTECTED if why else RowState.WATCHING), None
        return AttackerRow(n.ip, n.failures, n.rate(now), tuple(n.users), n.nusers, svcs, n.first, n.last,
                           state, left, n.successes, n.probes, nips=n.nips, banned_ips=banned)

    def _view(self, rollup: bool, sort: str, flt: str) -> _View:
        key = (rollup, sort, flt.strip().lower())
        view = self._views.pop(key, None)
        if view is None:
            view = _View(sort, make_filter(flt))
        self._views[key] = view  # most recently used last
        while len(self._views) > 6:
            del self._views[next(iter(self._views))]
        return view

    def _feed_views(self) -> None:
        """Hand what changed since the last tick to every live view."""
        d, dn = self._dirty, self._dirty_nets
        if d or dn:
            for (rollup, _, _), view in self._views.items():
                view.dirty |= dn if rollup else d
            d.clear()
            dn.clear()

    def top(self, k: int, sort: str = "failures", flt: str = "",
            rollup: bool = False) -> tuple[list[Attacker], int]:
        """Top ``k`` addresses (or networks) by ``sort`` among those matching ``flt``, and how
        many match. Incremental: O(changed + k) per call, see :class:`_View`."""
        view = self._view(rollup, sort, flt)
        self._feed_views()
        now = self.clock()
        if rollup:
            pop: dict[str, Attacker] = self.nets  # type: ignore[assignment]  # Net is an Attacker for the ranking
            population = self.n_nets
        else:
            pop = self.attackers
            population = self.n_attackers
        best = view.get(pop, k, now, population)
        return best, view.count(population)

    def matching(self, flt: str) -> list[Attacker]:
        """Attackers whose IP, prefix (CIDR), user or service matches ``flt`` (full scan; for
        mass actions, never per tick)."""
        pred = make_filter(flt)
        return [a for a in self.attackers.values() if _counts(a) and (pred is None or pred(a))]

    def shares(self, now: float, best: list[Attacker] | None = None) -> list[tuple[str, str, float, float]]:
        """Per service: the top attacker by rate and its share of the last minute's failures.
        ``best``: addresses already ranked by rate (saves a second view on the rate sort)."""
        out = []
        if best is None:
            best, _ = self.top(20, "rate")
        for svc, win in self._svc.items():
            total = win.rate(now)
            if total <= 0:
                continue
            bit = _SVC_BIT.get(svc, 0)
            for a in best:
                if a.services & bit:
                    r = a.rate(now)
                    if r > 0:
                        out.append((svc, a.ip, min(1.0, r / total), total))
                    break
        return out

    def snapshot(self, *, k: int = 200, sort: str = "failures", flt: str = "", events: int = 60,
                 users: int = 20, rollup: bool = False) -> Snapshot:
        now = self.clock()
        best, shown_of = self.top(k, sort, flt, rollup)
        rows = tuple(self.row(a, now) for a in best)
        ports = []
        for port in sorted(self.limits):
            ps, ds = self._rates.get(port, (0.0, 0.0))
            tot = self._totals.get(port, PortCounters(port, 0, 0))
            ports.append(PortRow(port, self.limits[port], ps, ds,
                                 tuple(self._pass_hist.get(port, ())), tuple(self._drop_hist.get(port, ())),
                                 tot.passed, tot.dropped, self.conns.get(port)))
        # events/s, smoothed between snapshots
        t0, n0 = self._eps_mark
        if now - t0 >= 1.0:
            inst = (self.events_total - n0) / (now - t0)
            self._eps = inst if self._eps == 0 else 0.5 * self._eps + 0.5 * inst
            self._eps_mark = (now, self.events_total)
        # the newest events that count (failures with attempts, logins); de-duplication twins
        # (attempts=0) stay in the ring for the detail view but not in the live log
        tail_l: list[AuthEvent] = []
        self._relabel()
        ring = self.events
        i = len(ring) - 1
        while i >= 0 and len(tail_l) < events and i >= len(ring) - 4 * events:
            e = ring[i]
            if e.attempts or e.kind == _SUCCESS:
                tail_l.append(e)
            i -= 1
        tail = tuple(reversed(tail_l))
        top_users = self.top_users(users)
        return Snapshot(
            version=self.version, now=now, rows=rows, total_ips=self.n_attackers, shown_of=shown_of,
            ports=tuple(ports), events=tail, bans=tuple(self.bans.values()),
            sources=tuple(self.sources.values()),
            users=tuple(UserRow(u, s.failures, len(s.ips), s.last) for u, s in top_users),
            events_per_s=self._eps, failures_total=self.failures_total, events_total=self.events_total,
            sort=sort, filter=flt, notes=tuple(self.notes[-3:]), rollup=rollup,
            shares=tuple(self.shares(now, best if sort == "rate" and not flt and not rollup else None)),
            ban_dropped_s=self._ban_drop_rate,
            ban_dropped_hist=tuple(self._ban_drop_hist),
            full_passes=sum(v.full_passes for v in self._views.values()),
        )

    def top_users(self, k: int) -> list[tuple[str, _UserStat]]:
        """The most tried usernames, incrementally (failures only grow; see :class:`_View`)."""
        us = self.users
        keep = k * VIEW_SLACK
        names = self._top_users + sorted(self._dirty_users.difference(self._top_users))
        self._dirty_users.clear()
        cands = [(u, st) for u in names if (st := us.get(u)) is not None]
        ranked = heapq.nlargest(keep, cands, key=lambda kv: kv[1].failures)
        short = len(ranked) < min(k, len(us))
        if short or (len(ranked) >= k and len(ranked) < len(us) and ranked[k - 1][1].failures < self._users_bound):
            ranked = heapq.nlargest(keep, us.items(), key=lambda kv: kv[1].failures)
            self._users_bound = 0
            if len(us) > keep:
                kept = {u for u, _ in ranked}
                self._users_bound = max((st.failures for u, st in us.items() if u not in kept), default=0)
        else:
            kept = {u for u, _ in ranked}
            for u, st in cands:
                if u not in kept and st.failures > self._users_bound:
                    self._users_bound = st.failures
        self._top_users = [u for u, _ in ranked]
        return ranked[:k]

    def events_of(self, ip: str) -> list[AuthEvent]:
        """The events in the ring from ``ip`` (for the detail view)."""
        self._relabel()
        return [e for e in self.events if e.ip == ip]
