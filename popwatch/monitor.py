"""The Monitor: runs the sources and the counter poller, applies policy, acts.

Data flows one way: sources -> parser -> store, and firewall counters -> store. Every action
(ban, unban, limit change, undo) goes Monitor -> policy check -> firewall backend -> store ->
audit, and the same methods serve the CLI (sync: :meth:`ban`), the TUI keys and auto-ban
(async: :meth:`aban`). Firewall calls run on one dedicated thread (python-iptables is not
thread-safe), never on the UI loop.

Auto-ban (:mod:`popwatch.autoban`) runs inside :meth:`ingest`: a crossing is handed straight
to the firewall thread (no extra loop round trip), and the store/state dir are updated when the
kernel has it. The state directory's ``bans.json`` is rewritten at most once per poll while the
Monitor runs (bans stay in the kernel's ipset across a crash; reconcile adopts them), and at
once for one-shot CLI actions.

UI bindings: ``a`` -> :meth:`set_auto_ban` (toggle), ``w`` -> :meth:`what_if`,
``U`` -> :meth:`aundo`.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any, Awaitable, Callable, Iterable

from .addr import parse_target
from .autoban import AutoBan, Decision, fmt_duration
from .campaigns import CampaignConfig, CampaignTracker
from .config import PolicyConfig
from .firewall.base import Firewall, FirewallError, PortLimit, Rate
from .model import AuthEvent, Ban, CounterSample, RawLine, SourceHealth, iso
from .persist import Persist
from .policy import Protector, Refused
from .sources.base import Source
from .store import StateStore
from .whatif import EventWindow, WhatIfReport, what_if as _what_if

#: lines ingested per slice before yielding to the event loop (keeps keys responsive)
INGEST_SLICE = 2000
#: lines parsed between auto-ban checks within one batch
AUTOBAN_STEP = 128
#: polls between kernel/store ban syncs (CLI bans and unbans made while we run)
SYNC_EVERY = 10
#: actions `undo` can revert
UNDOABLE = ("ban", "unban", "limit")


@dataclass(frozen=True, slots=True)
class ActionResult:
    ok: bool
    message: str
    change: tuple[str, ...] = ()
    ban: Ban | None = None


class Monitor:
    def __init__(self, *, store: StateStore, parser: Any, sources: Iterable[Source] = (),
                 firewall: Firewall, protector: Protector | None = None,
                 persist: Persist | None = None, dry_run: bool = False, poll_interval: float = 1.0,
                 mono: Callable[[], float] = time.monotonic, events_out: IO[str] | None = None,
                 default_ttl: float | None = 3600.0, policy: PolicyConfig | None = None,
                 auto_ban: bool | None = None, campaign: CampaignConfig | None = None) -> None:
        self.store = store
        self.parser = parser
        self.sources = list(sources)
        self.firewall = firewall
        self.protector = protector or Protector()
        self.persist = persist
        self.dry_run = dry_run
        self.poll_interval = poll_interval
        self.mono = mono
        self.events_out = events_out
        self.default_ttl = default_ttl
        self.clock = store.clock
        self.policy = policy or PolicyConfig()
        self._fw = ThreadPoolExecutor(max_workers=1, thread_name_prefix="popwatch-fw")
        # audit/history writes of auto-bans (fsync) off the firewall thread: the next ban waits for no disk
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="popwatch-io")
        self._tasks: list[asyncio.Task[None]] = []
        self.on_events: list[Callable[[list[AuthEvent]], Awaitable[None] | None]] = []
        #: dry run: what an auto-ban would have done (watch --no-tui prints it)
        self.on_dry_run: list[Callable[[ActionResult], None]] = []
        #: after every audited action (ban, unban, limit, expire, restore, undo, refused bans with
        #: ok=False): cb(action, target, fields). Called on the firewall thread or the loop: keep it
        #: cheap and thread-safe (exporters, the CrowdSec bridge); exceptions are swallowed.
        self.on_action: list[Callable[[str, str, dict[str, Any]], None]] = []
        self.lines_in = 0
        self._ended: set[str] = set()
        self._running = False
        self._bans_dirty = False
        self._pending: set[str] = set()
        self._entries: dict[str, str] = {}
        self._actions: list[dict[str, Any]] = []  # in-memory action log (undo without a state dir)
        #: (ip, crossing event ts, monotonic at the crossing, monotonic when in the kernel)
        self.auto_latency: deque[tuple[str, float, float, float]] = deque(maxlen=10_000)
        self.window = EventWindow(self.policy.whatif_window)
        self.autoban = AutoBan(self.policy, protected=self.protector.protected_ip,
                               is_banned=self._banned_or_pending, enabled=auto_ban)
        store.protected = self.protector.protected_ip
        #: campaigns (popwatch.campaigns): fed in ingest next to auto-ban; the screen reads rows()
        self.campaigns = CampaignTracker(campaign, protected=self.protector.protected_ip,
                                         is_banned=self._banned_or_pending)
        self.on_campaign: list[Callable[[str, Any], None]] = []
        if store.near_threshold is None:
            store.near_threshold = self.autoban.near
        if persist is not None:
            for rec in persist.load_history():
                if isinstance(rec.get("created"), (int, float)):
                    self.autoban.note_ban(str(rec["ip"]), float(rec["created"]))
            for ip, t in persist.load_successes().items():
                self.autoban.note_success(ip, t)
            self.autoban.successes_changed = False
            logins = persist.load_logins()
            if logins is not None:
                try:
                    self.campaigns.logins.load(logins)
                except (ValueError, KeyError, TypeError, AttributeError) as e:
                    persist.problems.append(f"{persist.logins_path}: ignored ({e.__class__.__name__})")
            for p in persist.problems:
                store.note(p)

    # ------------------------------------------------------------------ running
    def start_firewall(self, limits: list[PortLimit]) -> list[str]:
        """Install popwatch's rules for these ports (sync; call before :meth:`run`). In a dry
        run nothing is installed; returns the exact commands it would have run."""
        plan: list[str] = []
        if self.firewall.can_write and not self.dry_run:
            self.firewall.install(limits)
        elif self.dry_run:
            describe = getattr(self.firewall, "describe_install", None)
            try:
                plan = list(describe(limits)) if describe is not None else []
            except Exception as e:  # noqa: BLE001 - e.g. no rights to read the current rules
                plan = [f"(cannot describe the install: {e})"]
            for line in plan:
                self.store.note(f"dry run: {line.splitlines()[0]}")
        for lim in (self.firewall.limits() or {l.port: l for l in limits}).values():
            self.store.set_limit(lim)
        for lim in limits:
            if lim.port not in self.store.limits:
                self.store.set_limit(lim)
        for w in self.firewall.warnings():
            self.store.note(w)
        return plan

    async def run(self) -> None:
        """Run every source and the poller until cancelled."""
        self._running = True
        self._tasks = [asyncio.create_task(self._consume(s), name=f"source:{s.name}") for s in self.sources]
        self._tasks.append(asyncio.create_task(self._poll(), name="counters"))
        try:
            await asyncio.gather(*self._tasks)
        finally:
            for t in self._tasks:
                t.cancel()
            for s in self.sources:
                try:
                    await s.aclose()
                except Exception:  # noqa: BLE001 - shutting down
                    pass
            self._running = False
            self.flush()

    def close(self) -> None:
        self._fw.shutdown(wait=True, cancel_futures=False)
        self._io.shutdown(wait=True, cancel_futures=False)
        self.flush()
        self.firewall.close()
        if self.persist is not None:
            self.persist.unlock()

    def flush(self) -> None:
        """Write what is pending to the state directory (bans, login history)."""
        if self._bans_dirty:
            self._bans_dirty = False
            self._save_bans_now()
        if self.persist is not None and not self.dry_run and self.autoban.successes_changed:
            self.autoban.successes_changed = False
            self.persist.save_successes(dict(self.autoban.successes))
        if self.persist is not None and not self.dry_run and self.campaigns.logins.changed:
            self.campaigns.logins.changed = False
            self.persist.save_logins(self.campaigns.logins.to_json())

    async def _consume(self, source: Source) -> None:
        try:
            async for batch in source.batches():
                for i in range(0, len(batch), INGEST_SLICE):
                    self.ingest(batch[i:i + INGEST_SLICE] if len(batch) > INGEST_SLICE else batch)
                    await asyncio.sleep(0)
                self.store.set_source(source.health())
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a broken source must not stop the others
            h = source.health()
            self._ended.add(h.name)
            self.store.set_source(SourceHealth(h.name, "error", f"{e.__class__.__name__}: {e}", h.lines))
        else:
            h = source.health()
            self._ended.add(h.name)
            self.store.set_source(SourceHealth(h.name, "stopped", h.detail, h.lines))

    def ingest(self, batch: list[RawLine]) -> list[AuthEvent]:
        """Parse and store one batch (sync; used by sources' task and by tests). Auto-ban
        decisions go to the firewall thread from here, before anything else is done."""
        parse = self.parser.parse
        feed = self.autoban.feed
        camp = self.campaigns.feed
        events: list[AuthEvent] = []
        # parse and count in small steps, so a crossing goes to the firewall thread before
        # the rest of a big batch is parsed
        for i in range(0, len(batch), AUTOBAN_STEP):
            evs = [ev for ev in map(parse, batch[i:i + AUTOBAN_STEP]) if ev is not None]
            if evs:
                decisions = feed(evs)
                decisions += camp(evs)
                if decisions:
                    self._fire(decisions)
                events.extend(evs)
        self.lines_in += len(batch)
        if events:
            self.store.add_events(events)
            self.window.add(events)
            out = self.events_out
            if out is not None:
                out.write("".join(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in events))
                out.flush()
            for cb in self.on_events:
                r = cb(events)
                if r is not None:
                    asyncio.ensure_future(r)
        if self.campaigns.changes:
            self._campaign_changes()
        return events

    def _campaign_changes(self) -> None:
        """Campaign start/update/end/alert: the events stream, notes and on_campaign hooks."""
        for what, row in self.campaigns.drain():
            if what in ("start", "end", "alert"):
                self.store.note(f"campaign {what}: {row.score}"
                                + (f" -- {row.alerts[-1][2]} ({row.alerts[-1][1]})" if what == "alert" else ""))
            out = self.events_out
            if out is not None:
                out.write(json.dumps({"type": "campaign", "event": what, "kind": f"campaign_{what}",
                                      "ts": iso(self.clock()), "ip": None, **row.to_json()}) + "\n")
                out.flush()
            for cb in self.on_campaign:
                try:
                    cb(what, row)
                except Exception:  # noqa: BLE001 - an exporter must never break ingest
                    pass

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        n = 0
        while True:
            try:
                counters = await loop.run_in_executor(self._fw, self.firewall.counters)
                dropped = await loop.run_in_executor(self._fw, self.firewall.banned_dropped)
                self.store.add_counters(CounterSample(self.mono(), counters, dropped))
            except Exception as e:  # noqa: BLE001 - keep polling; say so once
                self.store.note(f"counter poll failed: {e}")
            for s in self.sources:
                if s.name not in self._ended:
                    self.store.set_source(s.health())
            expired = self.store.expire_bans()
            for b in expired:
                self._audit("expire", b.ip, origin="kernel", reason="ban timed out")
            if expired:
                self._bans_dirty = True
            n += 1
            if n % SYNC_EVERY == 0 and self.firewall.can_write and not self.dry_run:
                try:
                    t0 = self.clock()
                    kernel = await loop.run_in_executor(self._fw, self.firewall.bans)
                    self._sync_from_kernel(kernel, t0)
                except Exception as e:  # noqa: BLE001
                    self.store.note(f"reading the kernel's bans failed: {e}")
            if n % 60 == 0:
                self.autoban.sweep(self.clock())
            if n % 5 == 0:
                self.campaigns.sweep(self.clock())
                if self.campaigns.changes:
                    self._campaign_changes()
            try:
                self.flush()
            except OSError as e:
                self.store.note(f"state dir: {e}")
            # long-lived state to the permanent generation, every poll: full collections stop
            # scanning the store (a full GC over 100k records stalls ingest and auto-ban ~100 ms)
            gc.collect(1)
            gc.freeze()
            await asyncio.sleep(self.poll_interval)

    # ------------------------------------------------------------------ audit/state
    def _notify(self, action: str, target: str, kw: dict[str, Any]) -> None:
        for cb in self.on_action:
            try:
                cb(action, target, kw)
            except Exception:  # noqa: BLE001 - an exporter must never break an action
                pass

    def _audit(self, action: str, target: str, **kw: Any) -> dict[str, Any] | None:
        if self.dry_run:
            return None
        if self.persist is not None:
            rec = self.persist.audit(action, target, **kw)
        else:
            rec = {"id": f"{time.time_ns():x}", "action": action, "target": target, **kw}
        self._notify(action, target, kw)
        if action in UNDOABLE or action == "undo":
            self._actions.append(rec)
            del self._actions[:-1000]
        return rec

    def _audit_io(self, action: str, target: str, kw: dict[str, Any], ban: Ban | None = None) -> None:
        try:
            if self.persist is not None:
                self.persist.audit(action, target, **kw)
                if ban is not None:
                    self.persist.add_history(ban)
        except OSError as e:
            self.store.note(f"audit log: {e}")

    def _save_bans_now(self) -> None:
        if self.persist is not None and not self.dry_run:
            self.persist.save_bans(list(self.store.bans.values()))

    def _save_bans(self) -> None:
        if self._running:
            self._bans_dirty = True  # the poll writes it within a second
        else:
            self._save_bans_now()

    def _banned_or_pending(self, ip: str) -> bool:
        if ip in self._pending:
            return True
        b = self.store.bans.get(ip)
        # a ban the kernel has timed out but the poll has not expired yet does not count
        return b is not None and (b.expires is None or b.expires > self.clock() + 0.5)

    def _entry(self, target: str, allow_net: bool) -> str:
        """The kernel entry a ban of ``target`` becomes (IPv6: its /64). Memoised."""
        key = getattr(self.firewall, "ban_key", None)
        if key is None:
            return target
        hit = self._entries.get(target)
        if hit is not None:
            return hit
        try:
            e = str(key(target, net=True if allow_net else None))
        except (FirewallError, ValueError, TypeError):
            e = target
        if len(self._entries) > 100_000:
            self._entries.clear()
        self._entries[target] = e
        return e

    def _why_refused(self, target: str, allow_net: bool) -> str | None:
        """Why ``target`` may not be banned: it is protected, or the kernel entry its ban
        becomes (IPv6: the /64) contains a protected address. None: it may be."""
        why = self.protector.why_protected(target)
        if why is None:
            entry = self._entry(target, allow_net)
            if entry != target:
                why2 = self.protector.why_protected(entry)
                why = f"banning {target} bans all of {entry}: {why2}" if why2 else None
        return why

    # ------------------------------------------------------------------ firewall thread
    def _ban_fw(self, ip: str, ttl: float | None, reason: str, origin: str,
                allow_net: bool = False, detail: dict[str, Any] | None = None) -> ActionResult:
        """Policy check + firewall change. Runs on the firewall thread (or the CLI's)."""
        target = str(parse_target(ip, allow_net=allow_net))
        why = self._why_refused(target, allow_net)
        if why:
            self._audit("ban", target, origin=origin, reason=reason, ok=False, error=f"refused: {why}")
            raise Refused(f"refused: {why}")
        change = self.firewall.describe_ban(target, ttl)
        if self.dry_run:
            return ActionResult(True, f"dry run: would ban {target}"
                                + ("" if ttl is None else f" for {_human(ttl)}"), tuple(change))
        self.firewall.ban(target, ttl)
        now = self.clock()
        ban = Ban(target, now, None if ttl is None else now + ttl, reason, origin)
        extra: dict[str, Any] = {"ttl": ttl, "expires": ban.expires}
        if detail:
            extra["detail"] = detail
        if origin in ("auto", "campaign") and self.persist is not None and self._running:
            # while running: the disk after the kernel, off this thread
            kw = dict(origin=origin, reason=reason, change=change, **extra)
            self._notify("ban", target, kw)
            self._io.submit(self._audit_io, "ban", target, kw, ban)
        else:
            self._audit("ban", target, origin=origin, reason=reason, change=change, **extra)
            if self.persist is not None:
                self.persist.add_history(ban)
        left = "permanently" if ttl is None else f"for {_human(ttl)}"
        return ActionResult(True, f"banned {target} {left}", tuple(change), ban)

    def _unban_fw(self, ip: str, origin: str, reason: str = "", **extra: Any) -> ActionResult:
        target = str(parse_target(ip, allow_net=True))
        describe = getattr(self.firewall, "describe_unban", None)
        change = list(describe(target)) if describe is not None else [f"unban {target}"]
        if self.dry_run:
            return ActionResult(True, f"dry run: would unban {target}", tuple(change))
        self.firewall.unban(target)
        prev = self.store.bans.get(target)
        if prev is not None:
            extra.setdefault("prev", {"expires": prev.expires, "reason": prev.reason, "origin": prev.origin,
                                      "created": prev.created})
        self._audit("unban", target, origin=origin, reason=reason, change=change, **extra)
        return ActionResult(True, f"unbanned {target}", tuple(change))

    def _limit_fw(self, limit: PortLimit, origin: str, reason: str = "", **extra: Any) -> ActionResult:
        describe = getattr(self.firewall, "describe_limit", None)
        if self.dry_run:
            change = tuple(describe(limit)) if describe is not None else (limit.describe(),)
            return ActionResult(True, f"dry run: would set port {limit.port} to {limit.describe()}", change)
        prev = self.store.limits.get(limit.port) or self.firewall.limits().get(limit.port)
        self.firewall.set_limit(limit)
        if prev is not None:
            extra.setdefault("prev_limit", prev.to_json())
        self._audit("limit", str(limit.port), origin=origin, reason=reason, change=[limit.describe()],
                    limit=limit.to_json(), **extra)
        return ActionResult(True, f"port {limit.port}: {limit.describe()}")

    def _after_ban(self, r: ActionResult) -> ActionResult:
        if r.ban is not None:
            self.store.set_ban(r.ban)
            if r.ban.origin != "auto":
                self.autoban.note_ban(r.ban.ip, r.ban.created)
            self._save_bans()
        return r

    def _after_unban(self, ip: str, r: ActionResult) -> ActionResult:
        if not self.dry_run:
            self.store.remove_ban(str(parse_target(ip, allow_net=True)))
            self._save_bans()
        return r

    # ------------------------------------------------------------------ auto-ban
    @property
    def auto_ban(self) -> bool:
        return self.autoban.enabled

    def set_auto_ban(self, on: bool | None = None, *, origin: str = "key") -> bool:
        """Turn auto-ban on/off (None: toggle; the UI's ``a``). Returns the new state."""
        new = (not self.autoban.enabled) if on is None else bool(on)
        if new != self.autoban.enabled:
            self.autoban.set_enabled(new)
            p = self.policy
            self._audit("auto-ban", "on" if new else "off", origin=origin,
                        reason=f"maxretry {p.maxretry} within {fmt_duration(p.findtime)}, "
                               f"bantime {fmt_duration(p.bantime)}")
            self.store.note(f"auto-ban {'on' if new else 'off'}")
        return new

    def _fire(self, decisions: list[Decision]) -> None:
        """Hand crossings to the firewall thread now; the store follows on the loop."""
        seen: set[str] = set()
        todo = [d for d in decisions if d.ip not in self._pending and not (d.ip in seen or seen.add(d.ip))]
        if not todo:
            return
        for d in todo:
            self._pending.add(d.ip)
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:  # sync callers (tests, one-shot tools): do it in line
            self._auto_done(todo, self._auto_job(todo))
            return
        fut: Future[list[Any]] = self._fw.submit(self._auto_job, todo)
        fut.add_done_callback(lambda f: loop.call_soon_threadsafe(self._auto_done_future, todo, f))

    def _auto_job(self, todo: list[Decision]) -> list[Any]:
        """Firewall thread: ban each decision; results are ActionResult or an exception."""
        out: list[Any] = []
        for d in todo:
            try:
                r = self._ban_fw(d.ip, d.bantime, d.reason, d.origin, "/" in d.ip, d.detail)
                self.auto_latency.append((d.ip, d.event_ts, d.mono, time.monotonic()))
                out.append(r)
            except (Refused, FirewallError, ValueError, OSError) as e:
                out.append(e)
        return out

    def _auto_done_future(self, todo: list[Decision], fut: Future[list[Any]]) -> None:
        try:
            results = fut.result()
        except Exception as e:  # noqa: BLE001 - executor shut down, etc.
            results = [e] * len(todo)
        self._auto_done(todo, results)

    def _auto_done(self, todo: list[Decision], results: list[Any]) -> None:
        for d, r in zip(todo, results):
            self._pending.discard(d.ip)
            if isinstance(r, ActionResult):
                if r.ban is not None:
                    self._after_ban(r)
                else:  # dry run: say what would have been done, exactly
                    self.store.note(f"{r.message} ({d.reason}): {'; '.join(r.change)}")
                    for cb in self.on_dry_run:
                        cb(r)
            else:
                if d.origin == "auto":
                    self.autoban.cancel(d.ip)
                self.store.note(f"{d.origin}-ban of {d.ip} failed: {r}")

    # ------------------------------------------------------------------ actions: sync (CLI)
    def ban(self, ip: str, *, ttl: float | None = None, reason: str = "", origin: str = "cli",
            allow_net: bool = False) -> ActionResult:
        return self._after_ban(self._ban_fw(ip, ttl, reason, origin, allow_net))

    def ban_many(self, ips: Iterable[str], *, ttl: float | None = None, reason: str = "",
                 origin: str = "cli") -> tuple[list[ActionResult], dict[str, str]]:
        """Mass ban through the same policy path: (results, {ip: why refused or failed})."""
        done: list[ActionResult] = []
        refused: dict[str, str] = {}
        for ip in ips:
            try:
                done.append(self.ban(ip, ttl=ttl, reason=reason, origin=origin))
            except (Refused, FirewallError, ValueError) as e:
                refused[ip] = str(e)
        return done, refused

    def unban(self, ip: str, *, origin: str = "cli") -> ActionResult:
        return self._after_unban(ip, self._unban_fw(ip, origin))

    def set_limit(self, limit: PortLimit, *, origin: str = "cli") -> ActionResult:
        r = self._limit_fw(limit, origin)
        if not self.dry_run:
            self.store.set_limit(limit)
        return r

    # ------------------------------------------------------------------ actions: async (TUI)
    async def aban(self, ip: str, *, ttl: float | None = None, reason: str = "",
                   origin: str = "key") -> ActionResult:
        loop = asyncio.get_running_loop()
        r = await loop.run_in_executor(self._fw, self._ban_fw, ip, ttl, reason, origin, False)
        return self._after_ban(r)

    async def aban_many(self, ips: Iterable[str], *, ttl: float | None = None, reason: str = "",
                        origin: str = "key", allow_net: bool = False) -> tuple[list[ActionResult], dict[str, str]]:
        loop = asyncio.get_running_loop()
        ips = list(ips)

        def job() -> list[Any]:
            out: list[Any] = []
            for ip in ips:
                try:
                    out.append(self._ban_fw(ip, ttl, reason, origin, allow_net))
                except (Refused, FirewallError, ValueError) as e:
                    out.append(e)
            return out
        done: list[ActionResult] = []
        refused: dict[str, str] = {}
        for ip, r in zip(ips, await loop.run_in_executor(self._fw, job)):
            if isinstance(r, ActionResult):
                done.append(self._after_ban(r))
            else:
                refused[ip] = str(r)
        return done, refused

    async def aunban(self, ip: str, *, origin: str = "key") -> ActionResult:
        loop = asyncio.get_running_loop()
        return self._after_unban(ip, await loop.run_in_executor(self._fw, self._unban_fw, ip, origin))

    async def aset_limit(self, limit: PortLimit, *, origin: str = "key") -> ActionResult:
        loop = asyncio.get_running_loop()
        r = await loop.run_in_executor(self._fw, self._limit_fw, limit, origin)
        if not self.dry_run:
            self.store.set_limit(limit)
        return r

    # ------------------------------------------------------------------ what-if
    def what_if(self, proposal: str | dict[str, Any], *, window: float | None = None) -> WhatIfReport:
        """Replay the recent events (the last ``window`` seconds, default all that is kept:
        ``policy.whatif_window``) under ``proposal`` (``"maxretry=5,findtime=10m"`` or
        ``"port=110,rate=2/second,burst=5"``); nothing is changed. Raises ValueError."""
        since = None if window is None else self.clock() - window
        events = list(self.window.events(since))
        prop = proposal
        current = None
        if isinstance(proposal, str):
            from .whatif import parse_proposal
            prop = parse_proposal(proposal)
        if isinstance(prop, dict) and "port" in prop:
            current = self.store.limits.get(int(prop["port"]))
        return _what_if(events, self.policy, prop, protected=self.protector.protected_ip,
                        successes=self._recent_successes(), current_limit=current,
                        ipv6_prefix=self.policy.ipv6_prefix, campaign=self.campaigns.cfg)

    async def awhat_if(self, proposal: str | dict[str, Any], *, window: float | None = None) -> WhatIfReport:
        """:meth:`what_if` for the TUI (``w``): the events are copied on the loop, the replay
        runs in a worker thread so keys stay responsive. Raises ValueError."""
        from .whatif import parse_proposal
        prop = parse_proposal(proposal) if isinstance(proposal, str) else dict(proposal)
        since = None if window is None else self.clock() - window
        events = list(self.window.events(since))
        current = self.store.limits.get(int(prop["port"])) if "port" in prop else None
        successes = self._recent_successes()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, lambda: _what_if(events, self.policy, prop, protected=self.protector.protected_ip,
                                   successes=successes, current_limit=current,
                                   ipv6_prefix=self.policy.ipv6_prefix, campaign=self.campaigns.cfg))

    def _recent_successes(self) -> dict[str, float]:
        now = self.clock()
        return {ip: t for ip, t in self.autoban.successes.items()
                if self.autoban.recent_success(ip, now) is not None}

    # ------------------------------------------------------------------ undo
    def _undo_target(self, include_auto: bool) -> dict[str, Any] | None:
        recs = self.persist.read_audit() if self.persist is not None else list(self._actions)
        undone = {r.get("undoes") for r in recs if r.get("undoes")}
        for rec in reversed(recs):
            if rec.get("action") not in UNDOABLE or not rec.get("ok", True) or rec.get("id") in undone:
                continue
            if rec.get("origin") == "undo":
                continue  # an undo is not undone by the next undo: that walks further back
            if rec.get("origin") == "auto" and not include_auto:
                continue
            if rec.get("origin") in ("kernel", "restore", "reconcile"):
                continue
            return rec
        return None

    def _undo_fw(self, rec: dict[str, Any]) -> tuple[str, ActionResult]:
        """Revert one audit record (firewall thread). Returns (kind, result)."""
        act, target, rid = rec["action"], str(rec["target"]), rec.get("id")
        why = f"undo of {act} {target} ({rec.get('time', '')})"
        if act == "ban":
            return "unban", self._unban_fw(target, "undo", why, undoes=rid)
        if act == "unban":
            prev = rec.get("prev") or {}
            exp = prev.get("expires")
            now = self.clock()
            if exp is not None and exp <= now:
                if not self.dry_run:
                    self._audit("undo", target, origin="undo", reason=f"{why}: that ban would have expired "
                                f"already; nothing to restore", undoes=rid)
                return "none", ActionResult(True, f"nothing to undo: the ban of {target} would have expired")
            ttl = None if exp is None else exp - now
            r = self._ban_fw(target, ttl, prev.get("reason") or why, "undo", "/" in target,
                             {"undoes": rid})
            if r.ban is not None and self.persist is not None:
                # mark the undo on the ban's audit record's twin: a separate link record
                self._audit("undo", target, origin="undo", reason=why, undoes=rid)
            return "ban", r
        lim = rec.get("prev_limit")
        if not lim:
            raise Refused(f"cannot undo the limit change on port {target}: its previous rule is unknown")
        prev_limit = PortLimit(int(lim["port"]), lim["mode"], Rate.parse(lim["rate"]), int(lim["burst"]))
        return "limit", self._limit_fw(prev_limit, "undo", why, undoes=rid)

    def _after_undo(self, kind: str, r: ActionResult, target: str, rec: dict[str, Any]) -> ActionResult:
        if kind == "unban":
            self._after_unban(target, r)
        elif kind == "ban":
            self._after_ban(r)
        elif kind == "limit" and not self.dry_run:
            lim = rec["prev_limit"]
            self.store.set_limit(PortLimit(int(lim["port"]), lim["mode"], Rate.parse(lim["rate"]),
                                           int(lim["burst"])))
        what = f"undid {rec['action']} {target}: {r.message}"
        return ActionResult(r.ok, what if not self.dry_run else r.message, r.change, r.ban)

    def undo(self, *, include_auto: bool = False) -> ActionResult:
        """Revert the last ban, unban or limit change made by a person (with ``include_auto``,
        also auto-bans). Repeated undos walk further back. Raises Refused when there is none."""
        rec = self._undo_target(include_auto)
        if rec is None:
            raise Refused("nothing to undo")
        kind, r = self._undo_fw(rec)
        return self._after_undo(kind, r, str(rec["target"]), rec)

    async def aundo(self, *, include_auto: bool = False) -> ActionResult:
        """:meth:`undo` for the TUI (``U``)."""
        rec = self._undo_target(include_auto)
        if rec is None:
            raise Refused("nothing to undo")
        loop = asyncio.get_running_loop()
        kind, r = await loop.run_in_executor(self._fw, self._undo_fw, rec)
        return self._after_undo(kind, r, str(rec["target"]), rec)

    # ------------------------------------------------------------------ reconcile
    def reconcile(self) -> list[str]:
        """Start-up: bring the saved bans, the kernel and the store into agreement (sync; call
        after :meth:`start_firewall`). Saved bans still active but missing from the kernel (a
        reboot emptied the sets) are restored with their remaining time; expired ones are
        dropped; bans found in the kernel are adopted without being added again. Returns what
        was done, one line each (also noted in the store)."""
        msgs: list[str] = []
        saved = self.persist.load_bans() if self.persist is not None else []
        problems = list(self.persist.problems) if self.persist is not None else []
        try:
            kernel = self.firewall.bans() if self.firewall.can_write or self.dry_run else {}
        except Exception as e:  # noqa: BLE001 - start anyway, read-only view of bans
            kernel = {}
            msgs.append(f"could not read the kernel's bans: {e}")
        now = self.clock()
        seen: set[str] = set()
        restored = adopted = expired = refused = 0
        for b in saved:
            if b.expires is not None and b.expires <= now:
                expired += 1
                self._audit("expire", b.ip, origin="reconcile", reason="expired while popwatch was not running")
                continue
            entry = self._entry(b.ip, "/" in b.ip)
            why = self._why_refused(b.ip, "/" in b.ip)
            if why:
                refused += 1
                msgs.append(f"not restoring the ban of {b.ip}: {why}")
                if entry in kernel:
                    self._lift_protected(b.ip, why, msgs)
                seen.add(entry)
                continue
            seen.add(entry)
            if entry in kernel:
                adopted += 1
                self.store.set_ban(b)
                continue
            if not self.firewall.can_write and not self.dry_run:
                msgs.append(f"cannot restore the ban of {b.ip}: the firewall is read-only")
                continue
            ttl = None if b.expires is None else b.expires - now
            try:
                if self.dry_run:
                    msgs.extend(self.firewall.describe_ban(b.ip, ttl))
                else:
                    self.firewall.ban(b.ip, ttl)
                    self._audit("restore", b.ip, origin="reconcile", reason=b.reason or "restored on start",
                                change=self.firewall.describe_ban(b.ip, ttl), expires=b.expires)
                restored += 1
                self.store.set_ban(b)
            except (FirewallError, ValueError) as e:
                msgs.append(f"could not restore the ban of {b.ip}: {e}")
        for entry, left in kernel.items():
            if entry in seen:
                continue
            why = self.protector.why_protected(entry)
            if why:  # never keep the admin (or the allow-list) locked out
                self._lift_protected(entry, why, msgs)
                continue
            ban = Ban(entry, now, None if left is None else now + left, "found in the kernel", "kernel")
            self.store.set_ban(ban)
            adopted += 1
        if not self.dry_run and (restored or expired or len(self.store.bans) != len(saved)):
            self._save_bans_now()
        summary = (f"bans on start: {restored} restored, {adopted} already in the kernel, "
                   f"{expired} expired" + (f", {refused} protected (not restored)" if refused else ""))
        msgs.insert(0, summary)
        for m in msgs:
            self.store.note(m)
        for p in problems:  # corrupt state files: already noted in the store at start
            msgs.append(f"state dir: {p}")
        return msgs

    def _lift_protected(self, target: str, why: str, msgs: list[str]) -> None:
        """Start-up found a protected address banned in the kernel: lift it, say so."""
        if self.dry_run or not self.firewall.can_write:
            msgs.append(f"the kernel bans {target}, which is protected ({why}); lift it with "
                        f"`popwatch unban {target}`")
            return
        try:
            self.firewall.unban(target)
        except (FirewallError, ValueError) as e:
            msgs.append(f"could not lift the ban of protected {target}: {e}")
            return
        self._audit("unban", target, origin="reconcile", reason=f"protected: {why}",
                    change=[f"unban {target}"])
        msgs.append(f"lifted the ban of {target}: {why}")

    def _sync_from_kernel(self, kernel: dict[str, float | None], read_at: float) -> None:
        """While running: drop store bans the kernel no longer has (a CLI unban, expiry), adopt
        kernel bans the store does not know (a CLI ban)."""
        entries = {self._entry(ip, "/" in ip): ip for ip in self.store.bans}
        changed = False
        for entry, ip in entries.items():
            b = self.store.bans.get(ip)
            if entry not in kernel and b is not None and b.created < read_at and ip not in self._pending:
                self.store.remove_ban(ip)
                changed = True
        now = self.clock()
        new = [e for e in kernel if e not in entries]
        if new:
            saved: dict[str, Ban] = {}
            if self.persist is not None:  # a CLI ban made while we run: its record says why
                saved = {self._entry(b.ip, "/" in b.ip): b for b in self.persist.load_bans()}
            for entry in new:
                left = kernel[entry]
                rec = saved.get(entry)
                if rec is not None:
                    self.store.set_ban(rec)
                else:
                    self.store.set_ban(Ban(entry, now, None if left is None else now + left,
                                           "found in the kernel", "kernel"))
                changed = True
        if changed:
            self._bans_dirty = True


def _human(secs: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= n and secs % n == 0:
            return f"{int(secs // n)}{unit}"
    if secs >= 3600:
        return f"{secs / 3600:.1f}h"
    if secs >= 60:
        return f"{int(secs // 60)}m"
    return f"{int(secs)}s"
