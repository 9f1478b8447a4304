"""The Monitor: the run loop. It runs the sources and the counter poller, feeds the parser's
events to the store and to policy (auto-ban, campaigns), and hands crossings to its
:class:`~popwatch.actions.Actions` (``monitor.actions``: ban, unban, limit, undo, what-if with
the audit, on the process's one firewall thread). Start-up restore and the kernel/store ban
sync are :class:`~popwatch.reconcile.Reconciler`'s (``monitor.reconciler``).

Data flows one way: sources -> parser -> store, and firewall counters -> store. Auto-ban
(:mod:`popwatch.autoban`) runs inside :meth:`Monitor.ingest`: a crossing is handed straight to
the firewall thread (no extra loop round trip), and the store/state dir are updated when the
kernel has it. The state directory's ``bans.json`` is rewritten at most once per poll while the
Monitor runs (bans stay in the kernel's ipset across a crash; reconcile adopts them), and at
once for one-shot CLI actions.

UI bindings: ``a`` -> :meth:`Monitor.set_auto_ban` (toggle), ``w`` -> ``actions.what_if``,
``U`` -> ``actions.undo``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from .actions import ActionResult, Actions
from .autoban import AutoBan, fmt_duration
from .campaigns import CampaignConfig, CampaignTracker
from .config import PolicyConfig
from .conns import PortConns
from .firewall.base import Firewall
from .firewall.thread import FW_THREAD
from .heal import Healer
from .model import AuthEvent, CounterSample, PortLimit, RawLine, SourceHealth, iso
from .persist import Persist
from .policy import Protector
from .reconcile import Reconciler
from .sources.base import Source
from .store import StateStore
from .whatif import EventWindow

#: lines ingested per slice before yielding to the event loop (keeps keys responsive)
INGEST_SLICE = 2000
#: lines parsed between auto-ban checks within one batch
AUTOBAN_STEP = 128
#: polls between kernel/store ban syncs (CLI bans and unbans made while we run)
SYNC_EVERY = 10
class Monitor:
    def __init__(self, *, store: StateStore, parser: Any, sources: Iterable[Source] = (),
                 firewall: Firewall, protector: Protector | None = None,
                 persist: Persist | None = None, dry_run: bool = False, poll_interval: float = 1.0,
                 mono: Callable[[], float] = time.monotonic, events_out: IO[str] | None = None,
                 default_ttl: float | None = 3600.0, policy: PolicyConfig | None = None,
                 auto_ban: bool | None = None,
                 conns: Callable[[Iterable[int]], dict[int, PortConns]] | None = None,
                 campaign: CampaignConfig | None = None) -> None:
        self.store = store
        #: established connections per port, read every poll off the loop (popwatch/conns.py)
        self.conns = conns
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
        #: the process's one firewall thread (python-iptables must run on one thread)
        self.fw_thread = FW_THREAD
        # audit/history writes of auto-bans (fsync) off the firewall thread: the next ban waits for no disk
        self.io_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="popwatch-io")
        self._tasks: list[asyncio.Task[None]] = []
        self.on_events: list[Callable[[list[AuthEvent]], Awaitable[None] | None]] = []
        #: dry run: what an auto-ban would have done (watch --no-tui prints it)
        self.on_dry_run: list[Callable[[ActionResult], None]] = []
        #: after every audited action (ban, unban, limit, expire, restore, undo, refused bans with
        #: ok=False): cb(action, target, fields). Called on the firewall thread or the loop: keep it
        #: cheap and thread-safe (exporters, the CrowdSec bridge); exceptions are swallowed.
        self.on_action: list[Callable[[str, str, dict[str, Any]], None]] = []
        #: one-time problems (state dir unwritable, auto-ban unable to act): cb(text)
        self.on_problem: list[Callable[[str], None]] = []
        self.lines_in = 0
        self._ended: set[str] = set()
        #: True while :meth:`run` runs (bans.json is then written by the poll, not per action)
        self.running = False
        self._said: set[str] = set()  # one-time notes (state dir trouble while running)
        #: ban/unban/limit/undo/what-if with the audit (popwatch.actions)
        self.actions = Actions(self)
        #: start-up restore and the kernel/store ban sync (popwatch.reconcile)
        self.reconciler = Reconciler(self)
        #: (ip, crossing event ts, monotonic at the crossing, monotonic when in the kernel)
        self.auto_latency: deque[tuple[str, float, float, float]] = deque(maxlen=10_000)
        self.window = EventWindow(self.policy.whatif_window)
        self.autoban = AutoBan(self.policy, protected=self.protector.protected_ip,
                               is_banned=self.actions.banned_or_pending, enabled=auto_ban)
        self.healer = Healer(self)
        #: campaigns (popwatch.campaigns): fed in ingest next to auto-ban; the screen reads rows()
        self.campaigns = CampaignTracker(campaign, protected=self.protector.protected_ip,
                                         is_banned=self.actions.banned_or_pending)
        self.on_campaign: list[Callable[[str, Any], None]] = []
        store.set_policy(protected=self.protector.protected_ip, near_threshold=self.autoban.near)
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
            self.healer.arm()
        elif self.dry_run:
            try:
                plan = list(self.firewall.describe_install(limits))
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
        self.running = True
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
            self.running = False
            self.flush()

    def close(self) -> None:
        self.healer.close()
        self.fw_thread.drain()
        self.io_thread.shutdown(wait=True, cancel_futures=False)
        self.flush()
        self.firewall.close()
        if self.persist is not None:
            self.persist.unlock()

    def flush(self) -> None:
        """Write what is pending to the state directory (bans, login history)."""
        if self.actions.bans_dirty:
            self.actions.bans_dirty = False
            try:
                self.actions.save_bans_now()
            except OSError:
                self.actions.bans_dirty = True  # try again at the next poll
                raise
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
            self.say_once(f"log {h.name}: stopped: {e.__class__.__name__}: {e}")
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
                    self.actions.fire(decisions)
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
                    asyncio.ensure_future(r)  # noqa: RUF006 - fire and forget: the loop holds running tasks
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
                counters = await self.fw_thread.run(self.firewall.counters)
                dropped = await self.fw_thread.run(self.firewall.banned_dropped)
                self.store.add_counters(CounterSample(self.mono(), counters, dropped))
                await self.healer.poll(loop)  # popwatch's rules still in place? (heal.py)
            except Exception as e:  # noqa: BLE001 - keep polling; say so once
                self.store.note(f"counter poll failed: {e}")
            if self.conns is not None:
                try:
                    self.store.set_conns(await loop.run_in_executor(None, self.conns, tuple(self.store.limits)))
                except Exception as e:  # noqa: BLE001 - the socket table is extra: note it, stop asking
                    self.store.note(f"reading the socket table failed: {e}")
                    self.conns = None
            for s in self.sources:
                if s.name not in self._ended:
                    h = s.health()
                    self.store.set_source(h)
                    self._check_source(h)
            expired = self.store.expire_bans()
            for b in expired:
                self.actions.audit("expire", b.ip, origin="kernel", reason="ban timed out")
            if expired:
                self.actions.bans_dirty = True
            n += 1
            if n % SYNC_EVERY == 0 and self.firewall.can_write and not self.dry_run:
                try:
                    t0 = self.clock()
                    kernel = await self.fw_thread.run(self.firewall.bans)
                    gone = self.reconciler.missing(kernel, t0)
                    # the audit log is read off the loop (it can be large)
                    lost = await loop.run_in_executor(None, self.reconciler.lost, gone, t0) if gone else []
                    lost = self.reconciler.sync_from_kernel(kernel, t0, lost)
                    if lost and not self.healer.uninstalled():
                        done, text = await self.fw_thread.run(self.reconciler.put_back, lost)
                        self.store.note(text)
                        if done:
                            self.healer.last = (self.clock(), "fw: bans put back")
                except Exception as e:  # noqa: BLE001 - a failed read is noted; the poll loop must go on
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
                self.say_once(str(e))
            tenure_long_lived()
            await asyncio.sleep(self.poll_interval)

    # ------------------------------------------------------------------ audit/state

    def _check_source(self, h: SourceHealth) -> None:
        """A log that cannot be read is said once (stderr, events stream), not only drawn."""
        if h.state in ("waiting", "denied", "error"):
            if h.state == "denied" and any(t.startswith(f"cannot read {h.name} ") for t in self._said):
                return  # already said, with the fix (hostcheck.source_problems)
            self.say_once(f"log {h.name}: cannot read it: {h.detail or h.state}")

    def say_once(self, text: str) -> None:
        """A problem worth one line (store note and stderr), not one per poll."""
        if text not in self._said:
            self._said.add(text)
            self.store.note(text)
            for cb in self.on_problem:
                try:
                    cb(text)
                except Exception:  # noqa: BLE001 - a problem callback must never break the monitor
                    pass


    # ------------------------------------------------------------------ firewall thread


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
            self.actions.audit("auto-ban", "on" if new else "off", origin=origin,
                        reason=f"maxretry {p.maxretry} within {fmt_duration(p.findtime)}, "
                               f"bantime {fmt_duration(p.bantime)}")
            self.store.note(f"auto-ban {'on' if new else 'off'}")
        return new


    # ------------------------------------------------------------------ actions: sync (CLI)


    # ------------------------------------------------------------------ actions: async (TUI)


    # ------------------------------------------------------------------ what-if


    # ------------------------------------------------------------------ undo


    # ------------------------------------------------------------------ reconcile

    def reconcile(self) -> list[str]:
        """Start-up: bring the saved bans, the kernel and the store into agreement (see
        :meth:`popwatch.reconcile.Reconciler.reconcile`)."""
        return self.reconciler.reconcile()


def tenure_long_lived() -> None:
    """Move long-lived state to the permanent generation (every poll): full collections stop
    scanning the store (a full GC over 100k records stalls ingest and auto-ban ~100 ms; see
    PERF-NOTES)."""
    gc.collect(1)
    gc.freeze()
