"""Campaigns: distributed and low-and-slow attacks that no per-address threshold sees.

Pure and synchronous like :mod:`popwatch.autoban`: :meth:`CampaignTracker.feed` takes a batch of
events (the Monitor calls it from ``ingest``, right after auto-ban) and returns the
:class:`~popwatch.autoban.Decision` s to act on (origin ``campaign``); the Monitor hands them to
its one ban path. Readers (the screen, exporters) call :meth:`CampaignTracker.rows` on their
tick.

What is tracked, incrementally, per failed attempt:

* **targets**: per user name (across services, with a per-service count): the distinct source
  addresses that failed on it within ``window`` (kept in order of last try, oldest first, so
  expiry is O(1) amortised), and how many of them fall in each /24 (IPv4) or /64 (IPv6) and
  each /16 or /48. A target tried from ``user_sources`` or more addresses within ``window`` is
  a *campaign*; it ends after ``window`` without a failure.
* **slow sources**: per address, failures in a two-bucket sliding window of ``slow_window``
  (hours to days): three numbers per address, no per-event lists. An address whose count
  reaches ``slow_maxretry`` is a slow campaign of its own.
* **login history** (:class:`LoginHistory`): successful logins per user, per address, persisted
  in the state directory (``logins.json``). An address that ever logged in is *known-good* and
  is never banned by a campaign (only by its own per-address threshold).

Response (``[campaign] auto_ban = true``): once a campaign on a user is established, every
source of it (then and later) that never logged in successfully as that user is banned at
once; when ``net_sources`` of a campaign's sources fall in one /24 (/64) that network is
banned, and ``wide_sources`` in one /16 (/48) spread over ``wide_nets`` subnets ban the /16
(/48) -- never a network holding a protected or known-good address; slow sources are banned
when their long-window count reaches ``slow_maxretry``.

Memory bound: at most ``max_targets`` targets (least recently seen, non-campaign first, are
evicted), at most ``max_entries`` source entries over all targets (the least recently seen
targets go when it is exceeded), at most ``max_slow`` slow-source counters (least recently seen
evicted; 1 object of 4 slots each) and the login history's own caps: with the defaults
(5000 targets, 300k entries, 200k slow counters, 20k users x 32 addresses) that is roughly
100 MB in the worst case, a few MB for a typical flood (see benchmarks/campaigns.py).
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .autoban import Decision, fmt_duration
from .config import CAMPAIGN_DOC, CampaignConfig, campaign_table
from .model import FAILURE_KINDS, AuthEvent, Kind, TwoBucket

_FAILS = frozenset(str(k) for k in FAILURE_KINDS)
_SUCCESS = str(Kind.SUCCESS)
#: minutes of history in a campaign's rate sparkline
SPARK = 30
#: update events at most this often per campaign (seconds)
UPDATE_EVERY = 60.0
#: alerts (successful logins worth a look) kept per campaign
ALERTS = 8


# ----------------------------------------------------------------------------- config

# the [campaign] section (CampaignConfig, its keys and documentation) is read in config.py
CONFIG_DOC = CAMPAIGN_DOC
from_table = campaign_table


# ----------------------------------------------------------------------------- networks

def nets_of(ip: str) -> tuple[str, str]:
    """(narrow, wide) networks of an address: /24 and /16 for IPv4, /64 and /48 for IPv6."""
    if ":" not in ip:
        a, b, c, _ = ip.split(".", 3)
        return f"{a}.{b}.{c}.0/24", f"{a}.{b}.0.0/16"
    try:
        n = int(ipaddress.IPv6Address(ip))
    except ValueError:
        return ip, ip
    m64 = n >> 64 << 64
    m48 = n >> 80 << 80
    return f"{ipaddress.IPv6Address(m64)}/64", f"{ipaddress.IPv6Address(m48)}/48"


def _hm(ts: float) -> str:
    return time.strftime("%H:%M", time.localtime(ts))


# ----------------------------------------------------------------------------- login history

class LoginHistory:
    """Successful logins per user, per address (last time), bounded: ``max_users`` users
    (least recently seen evicted) x ``per_user`` addresses; ``good`` is every address that ever
    logged in (bounded by the same entries). Persisted as ``logins.json``."""

    def __init__(self, max_users: int = 20000, per_user: int = 32) -> None:
        self.max_users = max_users
        self.per_user = per_user
        self.by_user: dict[str, dict[str, float]] = {}
        self.good: dict[str, int] = {}     # ip -> number of (user, ip) entries
        #: /24 and /16 (IPv6: /64 and /48) -> known-good addresses in it (network bans check it)
        self.good_nets: dict[str, int] = {}
        self.changed = False

    def add(self, user: str | None, ip: str, ts: float) -> bool:
        """Record a login; True when (user, ip) was never seen before."""
        u = user or ""
        d = self.by_user.pop(u, None)
        new = d is None or ip not in d
        if d is None:
            d = {}
            if len(self.by_user) >= self.max_users:
                for old in list(self.by_user)[: max(1, self.max_users // 10)]:
                    for oip in self.by_user.pop(old):
                        self._drop_good(oip)
        self.by_user[u] = d
        if ip in d:
            ts = max(ts, d.pop(ip))
        else:
            n = self.good.get(ip, 0)
            self.good[ip] = n + 1
            if n == 0:
                for k in nets_of(ip):
                    self.good_nets[k] = self.good_nets.get(k, 0) + 1
            if len(d) >= self.per_user:
                oip = next(iter(d))
                del d[oip]
                self._drop_good(oip)
        d[ip] = ts
        self.changed = True
        return new

    def _drop_good(self, ip: str) -> None:
        n = self.good.get(ip, 0) - 1
        if n <= 0:
            if self.good.pop(ip, None) is not None:
                for k in nets_of(ip):
                    v = self.good_nets.get(k, 0) - 1
                    if v <= 0:
                        self.good_nets.pop(k, None)
                    else:
                        self.good_nets[k] = v
        else:
            self.good[ip] = n

    def knows(self, user: str | None, ip: str) -> bool:
        d = self.by_user.get(user or "")
        return d is not None and ip in d

    def has_user(self, user: str | None) -> bool:
        return (user or "") in self.by_user

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "logins": self.by_user}

    def load(self, data: Any) -> None:
        """From :meth:`to_json`'s shape; raises ValueError/KeyError/TypeError on garbage."""
        logins = data["logins"]
        if not isinstance(logins, dict):
            raise TypeError("logins is not an object")
        for user, d in logins.items():
            for ip, ts in dict(d).items():
                self.add(str(user), str(ip), float(ts))
        self.changed = False


# ----------------------------------------------------------------------------- state

class _Slow(TwoBucket):
    """Failures of one address in a two-bucket sliding window of ``slow_window``."""

    __slots__ = ("first",)

    def __init__(self, win: int, ts: float) -> None:
        TwoBucket.__init__(self, win)
        self.first = ts

    def add_count(self, n: int, ts: float, width: float) -> float:
        """Count ``n`` at ``ts``; the count over the window at ``ts``."""
        self.add(n, ts, width)
        return self.count(ts, width)


class _Target:
    """One user name under watch: its recent sources and their networks."""

    __slots__ = (
        "alerts",
        "banned",
        "decided_nets",
        "emitted_sources",
        "ended",
        "failures",
        "first",
        "last",
        "last_emit",
        "narrow",
        "peak",
        "services",
        "sources",
        "spark",
        "spark_min",
        "started",
        "state",
        "user",
        "wide",
    )

    def __init__(self, user: str, ts: float) -> None:
        self.user = user
        self.first = ts
        self.last = ts
        self.failures = 0
        self.services: dict[str, int] = {}
        self.sources: dict[str, float] = {}      # ip -> last failure, oldest first
        self.narrow: dict[str, int] = {}         # /24 or /64 -> sources in it
        self.wide: dict[str, int] = {}           # /16 or /48 -> sources in it
        self.spark = [0] * SPARK
        self.spark_min = int(ts // 60)
        self.state = "watching"                  # watching | active | ended
        self.started = 0.0
        self.ended = 0.0
        self.banned = 0
        self.alerts: list[tuple[float, str, str]] = []
        self.last_emit = 0.0
        self.emitted_sources = 0
        self.peak = 0
        self.decided_nets: set[str] = set()

    def label(self) -> str:
        svcs = sorted(self.services, key=lambda s: -self.services[s])
        if len(svcs) > 1 and "other" in svcs:  # dovecot's auth lines, before the session's service is known
            svcs.remove("other")
        return f"{self.user or '(none)'}@{','.join(svcs[:3])}" if svcs else (self.user or "(none)")

    def tick_spark(self, ts: float, n: int) -> None:
        m = int(ts // 60)
        if m > self.spark_min:
            step = min(SPARK, m - self.spark_min)
            self.spark = self.spark[step:] + [0] * step
            self.spark_min = m
        idx = SPARK - 1 - (self.spark_min - m)
        if 0 <= idx < SPARK:
            self.spark[idx] += n


@dataclass(frozen=True, slots=True)
class CampaignRow:
    """One campaign, for the screen and exporters (immutable)."""

    key: str                 # "user:NAME" or "slow:IP"
    kind: str                # user | slow
    target: str              # test@pop3 | 203.0.113.9
    sources: int
    networks: int
    failures: int
    rate: float              # failures per minute over the last 10 minutes
    spark: tuple[int, ...]   # failures per minute, oldest first
    first: float
    last: float
    state: str               # active | ended
    banned: int
    score: str
    alerts: tuple[tuple[float, str, str], ...] = ()
    top_nets: tuple[tuple[str, int], ...] = ()
    source_ips: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        from .model import iso
        return {"key": self.key, "kind": self.kind, "target": self.target, "sources": self.sources,
                "networks": self.networks, "failures": self.failures, "rate": round(self.rate, 3),
                "first": iso(self.first), "last": iso(self.last), "state": self.state,
                "banned": self.banned, "score": self.score,
                "alerts": [{"ts": iso(t), "ip": ip, "why": why} for t, ip, why in self.alerts]}


# ----------------------------------------------------------------------------- the tracker

class CampaignTracker:
    """Incremental, bounded campaign detection and (when enabled) response."""

    def __init__(self, cfg: CampaignConfig | None = None, *,
                 protected: Callable[[str], str | None] = lambda ip: None,
                 is_banned: Callable[[str], bool] = lambda ip: False,
                 enabled: bool | None = None, max_targets: int = 5000, max_entries: int = 300_000,
                 max_slow: int = 200_000, logins: LoginHistory | None = None,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg or CampaignConfig()
        self.enabled = self.cfg.auto_ban if enabled is None else enabled
        self.protected = protected
        self.is_banned = is_banned
        self.max_targets = max_targets
        self.max_entries = max_entries
        self.max_slow = max_slow
        self.mono = mono
        self.logins = logins or LoginHistory()
        self.targets: dict[str, _Target] = {}     # least recently failed first
        self.camps: dict[str, _Target] = {}       # targets that are or were campaigns (rows())
        self.entries = 0
        self.slow: dict[str, _Slow] = {}          # least recently failed first
        self.slow_alerts: dict[str, _Target] = {}  # slow campaigns (a _Target keyed by the ip)
        self.decided: dict[str, float] = {}        # ip or network -> ban until (campaign bans)
        #: (event, CampaignRow) for start | update | end | alert; the Monitor exports them
        self.changes: list[tuple[str, CampaignRow]] = []
        #: drained changes by kind (Prometheus: popwatch_campaign_events)
        self.counts: dict[str, int] = {}
        self.now = 0.0

    # -------------------------------------------------------------- reads used by decisions
    def known_good(self, ip: str) -> bool:
        return ip in self.logins.good

    def _decided(self, key: str, ts: float) -> bool:
        return self.decided.get(key, 0.0) > ts

    def _note_decided(self, key: str, until: float) -> None:
        self.decided[key] = until
        if len(self.decided) > 100_000:
            now = self.now
            self.decided = {k: v for k, v in self.decided.items() if v > now}
            if len(self.decided) > 100_000:
                self.decided = dict(list(self.decided.items())[-50_000:])

    # -------------------------------------------------------------- feeding
    def feed(self, events: Iterable[AuthEvent]) -> list[Decision]:
        out: list[Decision] = []
        for ev in events:
            ip = ev.ip
            if ip is None:
                continue
            self.now = max(self.now, ev.ts)
            kind = ev.kind
            if kind == _SUCCESS:
                self._success(ev, ip)
            elif kind in _FAILS and ev.attempts > 0:
                self._failure(ev, ip, out)
        return out

    def _success(self, ev: AuthEvent, ip: str) -> None:
        user = ev.user or ""
        t = self.targets.get(user)
        new = self.logins.add(user, ip, ev.ts)
        if t is not None and t.state == "active":
            why = ""
            if ip in t.sources:
                why = f"successful login as {user!r} from a source of this campaign"
            elif new:
                why = f"successful login as {user!r} from an address never seen before"
            if why:
                t.alerts.append((ev.ts, ip, why))
                del t.alerts[:-ALERTS]
                self.changes.append(("alert", self._row(t, ev.ts)))
        s = self.slow_alerts.get(ip)
        if s is not None and s.state == "active":
            s.alerts.append((ev.ts, ip, f"successful login as {user!r} from this slow source"))
            del s.alerts[:-ALERTS]
            self.changes.append(("alert", self._row(s, ev.ts)))

    def _failure(self, ev: AuthEvent, ip: str, out: list[Decision]) -> None:
        ts, n = ev.ts, ev.attempts
        if self.protected(ip) is not None:
            return
        cfg = self.cfg
        # ---- slow, per address
        if cfg.slow_maxretry > 0:
            s = self.slow.pop(ip, None)
            if s is None:
                if len(self.slow) >= self.max_slow:
                    for k in list(self.slow)[: max(1, self.max_slow // 10)]:
                        del self.slow[k]
                s = _Slow(int(ts // cfg.slow_window), ts)
            self.slow[ip] = s
            c = s.add_count(n, ts, cfg.slow_window)
            # slow: over the threshold, at a pace no per-address findtime sees (a fast brute
            # forcer is the attackers table's and auto-ban's business, not a campaign)
            if c >= cfg.slow_maxretry and c <= cfg.slow_rate * max(1.0, (ts - s.first) / 60.0):
                self._slow_campaign(ev, ip, s, c, out)
        # ---- per user
        user = ev.user or ""
        t = self.targets.pop(user, None)
        if t is None:
            if len(self.targets) >= self.max_targets:
                self._evict_targets(len(self.targets) - int(self.max_targets * 0.9) + 1)
            t = _Target(user, ts)
        self.targets[user] = t
        t.failures += n
        t.last = max(t.last, ts)
        t.services[ev.service] = t.services.get(ev.service, 0) + n
        t.tick_spark(ts, n)
        old = t.sources.pop(ip, None)
        if old is None:
            narrow, wide = nets_of(ip)
            t.narrow[narrow] = t.narrow.get(narrow, 0) + 1
            t.wide[wide] = t.wide.get(wide, 0) + 1
            self.entries += 1
        t.sources[ip] = max(ts, old or 0.0)
        self._expire_sources(t, ts)
        if len(t.sources) > self.max_entries // 4:  # one huge campaign keeps its newest sources
            oldest = next(iter(t.sources))
            del t.sources[oldest]
            self._forget(t, oldest)
        nsrc = len(t.sources)
        t.peak = max(t.peak, nsrc)
        if t.state != "active" and nsrc >= cfg.user_sources:
            t.state = "active"
            t.started = ts
            self.camps[user] = t
            t.banned = 0
            t.alerts = []
            t.decided_nets = set()
            t.last_emit = ts
            t.emitted_sources = nsrc
            self.changes.append(("start", self._row(t, ts)))
            if self.enabled:  # every current source at once (networks first: fewer entries)
                for net in list(t.narrow):
                    self._ban_net(t, net, ev, out)
                for sip in list(t.sources):
                    self._ban_source(t, sip, ev, out)
        elif t.state == "active":
            if self.enabled:
                self._ban_net(t, nets_of(ip)[0], ev, out)
                self._ban_source(t, ip, ev, out)
            if ts - t.last_emit >= UPDATE_EVERY and nsrc != t.emitted_sources:
                t.last_emit = ts
                t.emitted_sources = nsrc
                self.changes.append(("update", self._row(t, ts)))
        if self.entries > self.max_entries:
            self._evict_targets(max(1, len(self.targets) // 10))

    def _expire_sources(self, t: _Target, now: float) -> None:
        cutoff = now - self.cfg.window
        src = t.sources
        while src:
            ip = next(iter(src))
            if src[ip] > cutoff:
                break
            del src[ip]
            self._forget(t, ip)

    def _forget(self, t: _Target, ip: str) -> None:
        self.entries -= 1
        narrow, wide = nets_of(ip)
        for d, k in ((t.narrow, narrow), (t.wide, wide)):
            v = d.get(k, 0) - 1
            if v <= 0:
                d.pop(k, None)
            else:
                d[k] = v

    def _evict_targets(self, k: int) -> None:
        """Drop ``k`` least recently failed targets, non-campaigns first."""
        victims = [u for u, t in self.targets.items() if t.state != "active"][:k]
        if len(victims) < k:
            chosen = set(victims)
            victims += [u for u in self.targets if u not in chosen][: k - len(victims)]
        for u in victims:
            t = self.targets.pop(u)
            self.entries -= len(t.sources)
            self.camps.pop(u, None)

    # -------------------------------------------------------------- decisions
    def _reason(self, t: _Target, now: float) -> str:
        return self.score(t, now)

    def _ban_source(self, t: _Target, ip: str, ev: AuthEvent, out: list[Decision]) -> None:
        ts = ev.ts
        if (self.known_good(ip) or self.logins.knows(t.user, ip) or self._decided(ip, ts)
                or self.protected(ip) is not None or self.is_banned(ip)):
            return
        narrow, wide = nets_of(ip)
        if self._decided(narrow, ts) or self._decided(wide, ts):
            return
        bt = self.cfg.bantime
        self._note_decided(ip, ts + bt)
        t.banned += 1
        reason = f"campaign: {self._reason(t, ts)}; {ip} never logged in as {t.user!r}"
        out.append(Decision(ip, bt, reason, {"rule": "campaign_user", "user": t.user, "target": t.label(),
                                             "sources": len(t.sources), "service": ev.service,
                                             "event_ts": ts}, ts, self.mono(), origin="campaign"))

    def _ban_net(self, t: _Target, narrow: str, ev: AuthEvent, out: list[Decision]) -> None:
        cfg = self.cfg
        if cfg.net_sources and t.narrow.get(narrow, 0) >= cfg.net_sources and narrow not in t.decided_nets:
            t.decided_nets.add(narrow)
            self._net_decision(t, narrow, t.narrow[narrow], ev, out)
        if cfg.wide_sources:
            wide = _wide_of(narrow)
            if wide in t.decided_nets or t.wide.get(wide, 0) < cfg.wide_sources:
                return
            subs = sum(1 for k in t.narrow if _wide_of(k) == wide)
            if subs >= cfg.wide_nets:
                t.decided_nets.add(wide)
                self._net_decision(t, wide, t.wide[wide], ev, out, subs)

    def _net_decision(self, t: _Target, net: str, nsrc: int, ev: AuthEvent, out: list[Decision],
                      subs: int = 0) -> None:
        ts = ev.ts
        if self._decided(net, ts) or self.is_banned(net):
            return
        why = self.net_blocker(net)
        if why:
            t.alerts.append((ts, net, f"network not banned: {why}"))
            del t.alerts[:-ALERTS]
            return
        bt = self.cfg.net_bantime
        self._note_decided(net, ts + bt)
        t.banned += 1
        spread = f" over {subs} networks" if subs else ""
        reason = f"campaign: {self._reason(t, ts)}; {nsrc} of its sources in {net}{spread}"
        out.append(Decision(net, bt, reason, {"rule": "campaign_net", "user": t.user, "target": t.label(),
                                              "network": net, "sources_in_net": nsrc, "event_ts": ts},
                            ts, self.mono(), origin="campaign"))

    def net_blocker(self, net: str) -> str | None:
        """Why ``net`` may not be banned: a protected or known-good address in it."""
        why = self.protected(net)
        if why:
            return why
        good = self.logins.good_nets
        if net in good:
            return f"{good[net]} address(es) in it logged in successfully"
        if not good:
            return None
        # a network of another size (the UI's X on any network): the slow way, rare
        n = ipaddress.ip_network(net, strict=False)
        for ip in self.logins.good:
            try:
                if ipaddress.ip_address(ip) in n:
                    return f"{ip} in it logged in successfully"
            except ValueError:
                continue
        return None

    def _slow_campaign(self, ev: AuthEvent, ip: str, s: _Slow, count: float, out: list[Decision]) -> None:
        ts = ev.ts
        t = self.slow_alerts.get(ip)
        if t is None or t.state != "active":
            t = _Target(ip, s.first)
            t.state, t.started = "active", ts
            t.services = {ev.service: 0}
            self.slow_alerts[ip] = t
            if len(self.slow_alerts) > 1000:
                for k in [k for k, v in self.slow_alerts.items() if v.state != "active"][:100] or \
                        list(self.slow_alerts)[:100]:
                    del self.slow_alerts[k]
            self._slow_fill(t, s, ts)
            self.changes.append(("start", self._row(t, ts)))
        self._slow_fill(t, s, ts)
        t.services[ev.service] = t.services.get(ev.service, 0) + ev.attempts
        t.tick_spark(ts, ev.attempts)
        if not self.enabled or self.known_good(ip) or self._decided(ip, ts) or self.is_banned(ip):
            return
        bt = self.cfg.bantime
        self._note_decided(ip, ts + bt)
        t.banned += 1
        out.append(Decision(ip, bt, f"campaign: {self.score(t, ts)}",
                            {"rule": "campaign_slow", "count": round(count, 1),
                             "threshold": self.cfg.slow_maxretry, "window": self.cfg.slow_window,
                             "service": ev.service, "user": ev.user, "event_ts": ts},
                            ts, self.mono(), origin="campaign"))

    def _slow_fill(self, t: _Target, s: _Slow, ts: float) -> None:
        t.failures = round(s.count(ts, self.cfg.slow_window))
        t.last = max(t.last, ts)
        t.first = s.first
        t.sources = {t.user: ts}

    # -------------------------------------------------------------- upkeep
    def sweep(self, now: float) -> None:
        """End campaigns idle for ``window`` (slow ones: ``slow_window``); expire old sources."""
        self.now = max(self.now, now)
        w = self.cfg.window
        for t in list(self.targets.values()):
            if now - t.last > w:
                self._expire_sources(t, now)
            if t.state == "active" and now - t.last > w:
                t.state, t.ended = "ended", now
                self.changes.append(("end", self._row(t, now)))
        for u in [u for u, t in self.camps.items() if t.state == "ended" and now - t.ended > 86400.0]:
            del self.camps[u]
        for t in self.slow_alerts.values():
            if t.state == "active" and now - t.last > min(self.cfg.slow_window, max(w, 3600.0)):
                t.state, t.ended = "ended", now
                self.changes.append(("end", self._row(t, now)))
        if len(self.decided) > 1000:
            self.decided = {k: v for k, v in self.decided.items() if v > now}

    def drain(self) -> list[tuple[str, CampaignRow]]:
        ch, self.changes = self.changes, []
        for what, _ in ch:
            self.counts[what] = self.counts.get(what, 0) + 1
        return ch

    # -------------------------------------------------------------- rows
    def score(self, t: _Target, now: float) -> str:
        """The self-explaining score: ``test@pop3: 41 addresses in 9 networks, 1.2 guesses/min,
        first 04:10`` (a slow source: ``203.0.113.9: 7 failed attempts within 1d, first 04:10``)."""
        if t.user in self.slow_alerts and self.slow_alerts[t.user] is t:
            return (f"{t.user}@{','.join(sorted(t.services))}: {t.failures} failed attempts within "
                    f"{fmt_duration(self.cfg.slow_window)} (slow), first {_hm(t.first)}")
        rate = self._rate(t, now)
        return (f"{t.label()}: {len(t.sources)} addresses in {len(t.narrow)} networks, "
                f"{rate:.1f} guesses/min, first {_hm(t.first)}")

    @staticmethod
    def _rate(t: _Target, now: float) -> float:
        m = int(now // 60)
        lag = m - t.spark_min
        vals = t.spark[max(0, SPARK - 10 + lag):] if lag < 10 else []
        span = max(1.0, min(10.0, (now - t.first) / 60.0))
        return sum(vals) / span

    def _row(self, t: _Target, now: float, detail: bool = False) -> CampaignRow:
        slow = self.slow_alerts.get(t.user) is t
        m = int(now // 60)
        lag = max(0, m - t.spark_min)
        spark = tuple(t.spark[lag:] + [0] * min(SPARK, lag))
        top: tuple[tuple[str, int], ...] = ()
        ips: tuple[str, ...] = ()
        if detail:
            top = tuple(sorted(t.narrow.items(), key=lambda kv: -kv[1])[:50])
            ips = tuple(reversed(list(t.sources)[-500:]))
        return CampaignRow(
            key=("slow:" if slow else "user:") + t.user, kind="slow" if slow else "user",
            target=(t.user if slow else t.label()), sources=1 if slow else len(t.sources),
            networks=1 if slow else len(t.narrow), failures=t.failures, rate=self._rate(t, now),
            spark=spark, first=t.first, last=t.last, state=t.state, banned=t.banned,
            score=self.score(t, now), alerts=tuple(t.alerts), top_nets=top, source_ips=ips)

    def rows(self, now: float | None = None, *, k: int = 50, ended: bool = True) -> list[CampaignRow]:
        """Campaigns (active first, then recently ended), newest activity first. O(targets
        that are or were campaigns): only those carry a state other than watching."""
        now = self.now if now is None else now
        ts = list(self.camps.values()) + list(self.slow_alerts.values())
        if not ended:
            ts = [t for t in ts if t.state == "active"]
        ts.sort(key=lambda t: (t.state != "active", -len(t.sources) if t.user not in self.slow_alerts else -1,
                               -t.failures))
        return [self._row(t, now) for t in ts[:k]]

    def detail(self, key: str, now: float | None = None) -> CampaignRow | None:
        now = self.now if now is None else now
        kind, _, name = key.partition(":")
        t = self.slow_alerts.get(name) if kind == "slow" else self.targets.get(name)
        return None if t is None else self._row(t, now, detail=True)

    def sources_of(self, key: str) -> list[str]:
        kind, _, name = key.partition(":")
        t = self.slow_alerts.get(name) if kind == "slow" else self.targets.get(name)
        if t is None:
            return []
        return list(t.sources) if kind != "slow" else [name]

    def networks_of(self, key: str) -> list[str]:
        kind, _, name = key.partition(":")
        t = self.targets.get(name) if kind == "user" else None
        if t is None:
            return []
        need = max(2, self.cfg.net_sources or 2)
        return [n for n, c in sorted(t.narrow.items(), key=lambda kv: -kv[1]) if c >= need]

    def active(self) -> int:
        return sum(1 for t in self.camps.values() if t.state == "active") + \
            sum(1 for t in self.slow_alerts.values() if t.state == "active")


def _wide_of(narrow: str) -> str:
    if ":" not in narrow:
        a, b, _ = narrow.split(".", 2)
        return f"{a}.{b}.0.0/16"
    n = int(ipaddress.IPv6Address(narrow.split("/")[0]))
    return f"{ipaddress.IPv6Address(n >> 80 << 80)}/48"


def load_logins(path: Any, problems: list[str] | None = None) -> LoginHistory:
    """``logins.json`` -> LoginHistory (a corrupt file is reported and ignored)."""
    h = LoginHistory()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return h
    except OSError as e:
        if problems is not None:
            problems.append(f"{path}: {e.strerror}")
        return h
    try:
        h.load(json.loads(raw))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        if problems is not None:
            problems.append(f"{path}: unreadable ({e.__class__.__name__}), ignored")
        return LoginHistory()
    return h


__all__ = ["CampaignConfig", "CampaignRow", "CampaignTracker", "LoginHistory", "from_table", "nets_of"]
