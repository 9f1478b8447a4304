"""Auto-ban: fail2ban-style ``maxretry`` failed attempts within ``findtime`` per address.

Pure and synchronous (no I/O, no asyncio): :meth:`AutoBan.feed` takes a batch of events and
returns the :class:`Decision` s to act on; the Monitor calls it from ``ingest`` and hands each
decision straight to its firewall thread, so the time from the crossing line to the kernel is
one thread hop. The same engine, fresh, is the what-if replay (:mod:`popwatch.whatif`).

Rules, all from ``[policy]`` (see :class:`popwatch.config.PolicyConfig`):

* attempts, not lines: a dovecot summary ``(auth failed, 11 attempts ...)`` counts 11;
* per-service overrides (``[policy.services.ssh]``) count in their own window ("jail"); every
  other service shares the default one;
* recidive: ``bantime * recidive_factor ** n`` where ``n`` is the number of earlier bans of the
  address within ``recidive_window``, at most ``recidive_max``;
* success grace: an address that logged in successfully within ``success_grace`` is banned only
  after ``success_maxretry`` failures within findtime;
* per-username signal: a user name tried from ``user_ips`` or more addresses within findtime is
  *targeted*; an address failing on a targeted name is banned after ``user_maxretry`` failures;
* protected addresses (the :class:`~popwatch.policy.Protector`) are never counted or decided.

Memory is bounded: one small window per (address, jail) holding at most the threshold's worth
of entries, swept when empty; bounded user, success and ban-history tables.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .config import PolicyConfig
from .model import FAILURE_KINDS, AuthEvent, Kind, fmt_duration

_FAILS = frozenset(str(k) for k in FAILURE_KINDS)
_SUCCESS = str(Kind.SUCCESS)
#: fraction of the threshold from which the UI shows an address as "near threshold"
NEAR_FRACTION = 0.5
#: hard cap of entries in one window (the threshold normally bounds it far below this)
WINDOW_CAP = 512


@dataclass(frozen=True, slots=True)
class Decision:
    """Ban ``ip`` for ``bantime`` seconds, because ``reason`` (``detail`` for the audit log)."""

    ip: str
    bantime: float
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)
    event_ts: float = 0.0       # timestamp of the failure that crossed the threshold
    mono: float = 0.0           # time.monotonic() when the crossing was seen (benchmarks)
    origin: str = "auto"        # auto | campaign (popwatch.campaigns)


class _Win:
    """Failed attempts of one address in one jail within findtime. A flood is mostly addresses
    seen once: one entry lives in ``last``/``total`` without a list (half the memory)."""

    __slots__ = ("last", "q", "total")

    def __init__(self) -> None:
        self.q: list[tuple[float, int]] | None = None  # (ts, n) entries, oldest first, when > 1
        self.total = 0
        self.last = 0.0

    def add(self, ts: float, n: int, findtime: float) -> int:
        q = self.q
        if q is None:
            if self.total == 0:
                self.total, self.last = n, ts
                return n
            q = self.q = [(self.last, self.total)]
        q.append((ts, n))
        self.total += n
        if ts > self.last:
            self.last = ts
        self.prune(self.last - findtime)
        if len(q) > WINDOW_CAP:
            self.total -= q[0][1]
            del q[0]
        return self.total

    def prune(self, cutoff: float) -> int:
        q = self.q
        if q is None:
            if self.total and self.last <= cutoff:
                self.total = 0
            return self.total
        i = 0
        while i < len(q) and q[i][0] <= cutoff:
            self.total -= q[i][1]
            i += 1
        if i:
            del q[:i]
        return self.total

    def reset(self) -> None:
        self.q = None
        self.total = 0

    def count(self, now: float, findtime: float) -> int:
        """Attempts within findtime before ``now``, without changing the window."""
        cutoff = now - findtime
        if self.q is None:
            return self.total if self.last > cutoff else 0
        return sum(n for ts, n in self.q if ts > cutoff)


class AutoBan:
    """The auto-ban engine. ``protected(ip) -> reason | None``; ``is_banned(ip) -> bool``."""

    def __init__(self, policy: PolicyConfig, *, protected: Callable[[str], str | None] = lambda ip: None,
                 is_banned: Callable[[str], bool] = lambda ip: False, enabled: bool | None = None,
                 max_ips: int = 200_000, max_users: int = 50_000, max_successes: int = 100_000,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.enabled = policy.auto_ban if enabled is None else enabled
        self.protected = protected
        self.is_banned = is_banned
        self.max_ips = max_ips
        self.max_users = max_users
        self.max_successes = max_successes
        self.mono = mono
        #: failed attempts per address (default jail) or ``"ip|service"`` (override jails)
        self.windows: dict[str, _Win] = {}
        self.user_ips: dict[str, dict[str, float]] = {}
        self.successes: dict[str, float] = {}       # ip -> last successful login (epoch)
        self.ban_history: dict[str, list[float]] = {}  # ip -> times of earlier bans
        self.decided = 0
        self.successes_changed = False

    # -------------------------------------------------------------- configuration
    def set_enabled(self, on: bool) -> None:
        self.enabled = on

    def _jail(self, service: str) -> tuple[str, int, float, float]:
        p = self.policy
        if service in p.services:
            mr, ft, bt = p.for_service(service)
            return service, mr, ft, bt
        return "", p.maxretry, p.findtime, p.bantime

    def _is_protected(self, ip: str) -> bool:
        # no cache: Protector.protected_ip takes ~1 us, and the protected set may change
        return self.protected(ip) is not None

    # -------------------------------------------------------------- history
    def note_success(self, ip: str, ts: float) -> None:
        if ts > self.successes.get(ip, 0.0):
            if ip not in self.successes and len(self.successes) >= self.max_successes:
                self._prune_successes(ts)
            self.successes[ip] = ts
            self.successes_changed = True

    def _prune_successes(self, now: float) -> None:
        grace = self.policy.success_grace
        for ip in [ip for ip, t in self.successes.items() if t < now - grace]:
            del self.successes[ip]
        if len(self.successes) >= self.max_successes:  # still full: keep the newest 90%
            keep = sorted(self.successes.items(), key=lambda kv: kv[1])[-int(self.max_successes * 0.9):]
            self.successes = dict(keep)

    def recent_success(self, ip: str, now: float) -> float | None:
        t = self.successes.get(ip)
        if t is None or self.policy.success_grace <= 0 or t < now - self.policy.success_grace:
            return None
        return t

    def note_ban(self, ip: str, ts: float) -> None:
        """Remember a ban (any origin) for recidive."""
        h = self.ban_history.setdefault(ip, [])
        h.append(ts)
        cutoff = ts - self.policy.recidive_window
        while h and (h[0] < cutoff or len(h) > 32):
            del h[0]
        if len(self.ban_history) > self.max_ips:
            for k in [k for k, v in self.ban_history.items() if not v or v[-1] < cutoff]:
                del self.ban_history[k]

    def previous_bans(self, ip: str, now: float) -> int:
        cutoff = now - self.policy.recidive_window
        return sum(1 for t in self.ban_history.get(ip, ()) if cutoff <= t <= now)

    def bantime_for(self, ip: str, base: float, now: float) -> tuple[float, int]:
        """Recidive: (bantime, earlier bans counted)."""
        n = self.previous_bans(ip, now)
        p = self.policy
        if n == 0 or p.recidive_factor <= 1:
            return base, n
        return min(base * p.recidive_factor ** n, max(p.recidive_max, base)), n

    # -------------------------------------------------------------- users
    def _note_user(self, user: str, ip: str, ts: float, findtime: float) -> int:
        """Distinct addresses that tried ``user`` within findtime (after adding this one).
        Amortised O(1): the dict is kept in order of last try, oldest first."""
        d = self.user_ips.get(user)
        if d is None:
            if len(self.user_ips) >= self.max_users:
                self._prune_users(ts, findtime)
            d = self.user_ips[user] = {}
        else:
            old = d.pop(ip, None)
            if old is not None and old > ts:
                ts = old
        d[ip] = ts
        cutoff = ts - findtime
        while d:
            first = next(iter(d))
            if d[first] > cutoff:
                break
            del d[first]
        cap = max(4 * self.policy.user_ips, 64)
        while len(d) > cap:
            del d[next(iter(d))]
        return len(d)

    def _prune_users(self, now: float, findtime: float) -> None:
        cutoff = now - findtime
        for u in [u for u, d in self.user_ips.items() if all(t <= cutoff for t in d.values())]:
            del self.user_ips[u]
        if len(self.user_ips) >= self.max_users:
            for u in list(self.user_ips)[: len(self.user_ips) // 10 or 1]:
                del self.user_ips[u]

    def targeted_users(self, now: float) -> list[tuple[str, int]]:
        """User names tried from ``user_ips`` or more addresses within findtime, most first."""
        if self.policy.user_ips <= 0:
            return []
        cutoff = now - self.policy.findtime
        out = [(u, n) for u, d in self.user_ips.items()
               if (n := sum(1 for t in d.values() if t > cutoff)) >= self.policy.user_ips]
        return sorted(out, key=lambda x: -x[1])

    # -------------------------------------------------------------- the engine
    def feed(self, events: Iterable[AuthEvent]) -> list[Decision]:
        """Count a batch; return the bans to make now (none while disabled)."""
        out: list[Decision] = []
        fails = _FAILS
        decided: set[str] = set()  # one incident, one ban: later lines of this batch are its tail
        for ev in events:
            ip = ev.ip
            if ip is None:
                continue
            kind = ev.kind
            if kind == _SUCCESS:
                self.note_success(ip, ev.ts)
                continue
            if kind not in fails or ev.attempts <= 0 or ip in decided:
                continue
            d = self.observe(ev)
            if d is not None:
                out.append(d)
                decided.add(ip)
        return out

    def observe(self, ev: AuthEvent) -> Decision | None:
        """One failure event (ip not None, attempts > 0)."""
        ip = ev.ip
        assert ip is not None
        if self._is_protected(ip):
            return None
        jail, maxretry, findtime, bantime = self._jail(ev.service)
        key = f"{ip}|{jail}" if jail else ip
        w = self.windows.get(key)
        if w is None:
            if len(self.windows) >= self.max_ips:
                self.sweep(ev.ts)
            w = self.windows[key] = _Win()
        total = w.add(ev.ts, ev.attempts, findtime)
        p = self.policy
        rule = "maxretry"
        threshold = maxretry
        targeted = 0
        if ev.user and p.user_ips > 0:
            targeted = self._note_user(ev.user, ip, ev.ts, findtime)
            if targeted >= p.user_ips and p.user_maxretry < threshold:
                threshold, rule = p.user_maxretry, "targeted_user"
        success = self.recent_success(ip, ev.ts)
        if success is not None:
            threshold, rule = max(threshold, p.success_maxretry), "success_grace"
        if total < threshold or not self.enabled or self.is_banned(ip):
            return None
        # crossing: decide, and start the window afresh (the ban is on its way)
        w.reset()
        bt, earlier = self.bantime_for(ip, bantime, ev.ts)
        self.note_ban(ip, ev.ts)
        self.decided += 1
        on = f" on {jail}" if jail else ""
        why = [f"{total} failed attempts within {fmt_duration(findtime)}{on}"]
        if rule == "maxretry":
            why.append(f"maxretry {threshold}")
        elif rule == "targeted_user":
            why.append(f"user {ev.user!r} tried from {targeted} addresses: maxretry lowered to {threshold}")
        else:
            from .model import iso
            why.append(f"logged in successfully at {iso(success)}: higher threshold {threshold}")
        if earlier:
            why.append(f"ban #{earlier + 1} within {fmt_duration(p.recidive_window)}: bantime "
                       f"{fmt_duration(bt)} (recidive x{p.recidive_factor:g}^{earlier})")
        else:
            why.append(f"bantime {fmt_duration(bt)}")
        detail = {"rule": rule, "count": total, "threshold": threshold, "findtime": findtime,
                  "service": ev.service, "jail": jail or "default", "user": ev.user,
                  "earlier_bans": earlier, "bantime": bt, "event_ts": ev.ts,
                  "source": ev.source, "lineno": ev.lineno}
        return Decision(ip, bt, "auto: " + "; ".join(why), detail, ev.ts, self.mono())

    def cancel(self, ip: str) -> None:
        """A decided ban did not happen (firewall error): forget it for recidive."""
        h = self.ban_history.get(ip)
        if h:
            h.pop()

    # -------------------------------------------------------------- reads
    def level(self, ip: str, now: float) -> float:
        """How close ``ip`` is to a ban: attempts in window / threshold, highest jail (0..)."""
        p = self.policy
        best = 0.0
        success = self.recent_success(ip, now) is not None
        jails = [""] + [s for s in p.services]
        for jail in jails:
            w = self.windows.get(f"{ip}|{jail}" if jail else ip)
            if w is None or not w.total:
                continue
            _, mr, ft, _ = self._jail(jail) if jail else ("", p.maxretry, p.findtime, p.bantime)
            thr = max(mr, p.success_maxretry) if success else mr
            best = max(best, w.count(now, ft) / thr)
        return best

    def near(self, attacker: Any, now: float) -> bool:
        """The store's ``near_threshold`` hook: at least half way to a ban."""
        return self.level(attacker.ip, now) >= NEAR_FRACTION

    def sweep(self, now: float) -> int:
        """Drop empty and stale windows; keep the table under ``max_ips``. Returns how many."""
        p = self.policy
        longest = max([p.findtime] + [o.findtime or 0 for o in p.services.values()])
        cutoff = now - longest
        dead = [k for k, w in self.windows.items() if w.last <= cutoff or not w.total]
        for k in dead:
            del self.windows[k]
        if len(self.windows) >= self.max_ips:
            oldest = sorted(self.windows.items(), key=lambda kv: kv[1].last)[: len(self.windows) // 10 or 1]
            for k, _ in oldest:
                del self.windows[k]
                dead.append(k)
        return len(dead)
