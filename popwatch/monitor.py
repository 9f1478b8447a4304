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
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import IO, Any

from .addr import parse_target
from .autoban import AutoBan, Decision, fmt_duration
from .campaigns import CampaignConfig, CampaignTracker
from .config import PolicyConfig
from .conns import PortConns
from .faults import point
from .firewall.base import Firewall, FirewallError
from .firewall.rules import MAX_TIMEOUT as MAX_BAN_TTL
from .firewall.thread import FW_THREAD
from .heal import Healer
from .model import AuthEvent, Ban, CounterSample, PortLimit, Rate, RawLine, SourceHealth, iso
from .persist import Persist, StateDirError
from .policy import Protector, Refused
from .sources.base import Source
from .store import StateStore
from .whatif import EventWindow, WhatIfReport
from .whatif import what_if as _what_if

#: lines ingested per slice before yielding to the event loop (keeps keys responsive)
INGEST_SLICE = 2000
#: lines parsed between auto-ban checks within one batch
AUTOBAN_STEP = 128
#: polls between kernel/store ban syncs (CLI bans and unbans made while we run)
SYNC_EVERY = 10
#: actions `undo` can revert
UNDOABLE = ("ban", "unban", "limit")


class Conflict(Refused):
    """Refused because of the current bans (an address inside a network ban; nothing to undo):
    CLI exit 5."""


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
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="popwatch-io")
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
        self._running = False
        self._bans_dirty = False
        self._pending: set[str] = set()
        self._entries: dict[str, str] = {}
        #: bans.json as this process last read/wrote it: a write merges only our changes
        self._saved: dict[str, Ban] = dict(store.bans)
        self._ban_entries: dict[str, str] = {}  # IPv6 kernel entry (/64) -> the banned address
        self._said: set[str] = set()  # one-time notes (state dir trouble while running)
        self._actions: list[dict[str, Any]] = []  # in-memory action log (undo without a state dir)
        #: (ip, crossing event ts, monotonic at the crossing, monotonic when in the kernel)
        self.auto_latency: deque[tuple[str, float, float, float]] = deque(maxlen=10_000)
        self.window = EventWindow(self.policy.whatif_window)
        self.autoban = AutoBan(self.policy, protected=self.protector.protected_ip,
                               is_banned=self._banned_or_pending, enabled=auto_ban)
        self.healer = Healer(self)
        #: campaigns (popwatch.campaigns): fed in ingest next to auto-ban; the screen reads rows()
        self.campaigns = CampaignTracker(campaign, protected=self.protector.protected_ip,
                                         is_banned=self._banned_or_pending)
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
        self.healer.close()
        self.fw_thread.drain()
        self._io.shutdown(wait=True, cancel_futures=False)
        self.flush()
        self.firewall.close()
        if self.persist is not None:
            self.persist.unlock()

    def flush(self) -> None:
        """Write what is pending to the state directory (bans, login history)."""
        if self._bans_dirty:
            self._bans_dirty = False
            try:
                self._save_bans_now()
            except OSError:
                self._bans_dirty = True  # try again at the next poll
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
                self._audit("expire", b.ip, origin="kernel", reason="ban timed out")
            if expired:
                self._bans_dirty = True
            n += 1
            if n % SYNC_EVERY == 0 and self.firewall.can_write and not self.dry_run:
                try:
                    t0 = self.clock()
                    kernel = await self.fw_thread.run(self.firewall.bans)
                    self._sync_from_kernel(kernel, t0)
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
    def _notify(self, action: str, target: str, kw: dict[str, Any]) -> None:
        for cb in self.on_action:
            try:
                cb(action, target, kw)
            except Exception:  # noqa: BLE001 - an exporter must never break an action
                pass

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

    def _void(self, rec: dict[str, Any] | None, error: str) -> None:
        """A written-ahead action did not happen: say so in the audit log."""
        if rec is None:
            return
        if rec in self._actions:
            self._actions.remove(rec)
        if self.persist is not None and not self.persist.void(rec, error):
            self.say_once(f"the audit log holds {rec.get('action')} {rec.get('target')} "
                          f"(id {rec.get('id')}) that did not happen ({error}); the disk refused the note")

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

    def _save_bans_now(self) -> None:
        """Merge this process's ban changes into bans.json under the state lock (another
        process, a CLI ban while watch runs, may have written it since)."""
        if self.persist is not None and not self.dry_run:
            cur = dict(self.store.bans)
            up = {ip: b for ip, b in cur.items() if self._saved.get(ip) != b}
            rm = {ip for ip in self._saved if ip not in cur}
            if up or rm or not self.persist.bans_path.exists():
                self.persist.merge_bans(up, rm)
            self._saved = cur

    def _save_bans(self) -> None:
        if self._running:
            self._bans_dirty = True  # the poll writes it within a second
        else:
            self._save_bans_now()

    def _banned_or_pending(self, ip: str) -> bool:
        if ip in self._pending:
            return True
        b = self.store.bans.get(ip)
        if b is None and ":" in ip and self._ban_entries:  # another address of a banned /64
            owner = self._ban_entries.get(self.ban_entry(ip, False))
            if owner is not None:
                b = self.store.bans.get(owner)
        # a ban the kernel has timed out but the poll has not expired yet does not count
        return b is not None and (b.expires is None or b.expires > self.clock() + 0.5)

    def ban_entry(self, target: str, allow_net: bool) -> str:
        """The kernel entry a ban of ``target`` becomes (IPv6: its /64). Memoised."""
        hit = self._entries.get(target)
        if hit is not None:
            return hit
        try:
            e = str(self.firewall.ban_key(target, net=True if allow_net else None))
        except (FirewallError, ValueError, TypeError):
            e = target
        if len(self._entries) > 100_000:
            self._entries.clear()
        self._entries[target] = e
        return e

    def _why_refused(self, target: str, allow_net: bool) -> str | None:
        """Why ``target`` may not be banned: it is protected, or the kernel entry its ban
        becomes (IPv6: the /64) contains a protected address. None: it may be."""
        why = self.protector.why_protected(target) if "/" in target else self.protector.protected_ip(target)
        if why is None:
            entry = self.ban_entry(target, allow_net)
            if entry != target:
                why2 = self.protector.protected_net(entry)
                why = f"banning {target} bans all of {entry}: {why2}" if why2 else None
        return why

    # ------------------------------------------------------------------ firewall thread
    def _ban_plan(self, ip: str, ttl: float | None, reason: str, origin: str, allow_net: bool,
                  detail: dict[str, Any] | None) -> tuple[Ban, list[str], dict[str, Any]]:
        """Policy check and the exact change, nothing done yet: (ban, change, audit fields)."""
        target = str(parse_target(ip, allow_net=allow_net))
        why = self._why_refused(target, allow_net)
        if why:
            self._audit("ban", target, origin=origin, reason=reason, ok=False, error=f"refused: {why}")
            raise Refused(f"refused: {why}")
        if ttl is not None and ttl > MAX_BAN_TTL:
            ttl = float(MAX_BAN_TTL)  # what the kernel set holds (recidive can ask for more)
        change = self.firewall.describe_ban(target, ttl)
        now = self.clock()
        ban = Ban(target, now, None if ttl is None else now + ttl, reason, origin)
        extra: dict[str, Any] = {"ttl": ttl, "expires": ban.expires}
        if detail:
            extra["detail"] = detail
        return ban, change, extra

    def _ban_kernel(self, ban: Ban, rec: dict[str, Any] | None) -> None:
        """The kernel change of a ban whose audit record is already written (``rec``)."""
        ttl = None if ban.expires is None else ban.expires - ban.created
        try:
            point("kernel ban")
            self.firewall.ban(ban.ip, ttl)
            point("kernel ban done")
            self._keep_longer_members(ban)
        except Exception as e:
            self._void(rec, f"the firewall refused: {e}")
            raise

    def _keep_longer_members(self, ban: Ban) -> None:
        """A network ban never shortens a longer ban of one of its members (the set re-adds
        members with the network's timeout): put those back with their own."""
        if "/" not in ban.ip or ":" in ban.ip:
            return
        import ipaddress
        net = ipaddress.ip_network(ban.ip)
        now = self.clock()
        for b in list(self.store.bans.values()):
            if "/" in b.ip or ":" in b.ip or ipaddress.ip_address(b.ip) not in net:
                continue
            if ban.expires is not None and (b.expires is None or b.expires > ban.expires):
                self.firewall.ban(b.ip, None if b.expires is None else b.expires - now)

    def _ban_fw(self, ip: str, ttl: float | None, reason: str, origin: str,
                allow_net: bool = False, detail: dict[str, Any] | None = None,
                close: bool = True) -> ActionResult:
        """Policy check, audit record (written ahead), firewall change, then (``close``) the
        address's open connections are closed. Runs on the firewall thread (or the CLI's)."""
        ban, change, extra = self._ban_plan(ip, ttl, reason, origin, allow_net, detail)
        target, ttl = ban.ip, extra["ttl"]
        if self.dry_run:
            return ActionResult(True, f"dry run: would ban {target}"
                                + ("" if ttl is None else f" for {_human(ttl)}"), tuple(change))
        rec = self._audit("ban", target, origin=origin, reason=reason, change=change, **extra)
        self._ban_kernel(ban, rec)
        closed = self._close_conns([target]).get(target, 0) if close else 0
        if closed:
            ban = replace(ban, closed=closed)
            self._audit("close", target, origin=origin, reason="open connections closed at the ban",
                        closed=closed)
        if self.persist is not None:
            if origin in ("auto", "campaign") and self._running:
                self._io.submit(self._history_io, ban)
            else:
                try:
                    self.persist.add_history(ban)
                except OSError:
                    pass  # recidive history only; the audit record and bans.json are what count
        left = "permanently" if ttl is None else f"for {_human(ttl)}"
        return ActionResult(True, f"banned {target} {left}" + _closed_text(closed), tuple(change), ban)

    def _close_conns(self, targets: list[str]) -> dict[str, int]:
        """Firewall thread, right after bans: close the addresses' open connections (a session
        opened before the ban would go on guessing). Best effort, never fails a ban."""
        try:
            return self.firewall.close_connections(targets) if targets else {}
        except Exception:  # noqa: BLE001 - closing connections is best effort; it never fails a ban
            return {}

    def _closed_after(self, results: list[Any]) -> list[Any]:
        """Mass bans: one close for all of them (one socket dump), counts onto the results."""
        counts = self._close_conns([r.ban.ip for r in results if isinstance(r, ActionResult) and r.ban])
        if not counts:
            return results
        out = []
        for r in results:
            n = counts.get(r.ban.ip, 0) if isinstance(r, ActionResult) and r.ban else 0
            if n:
                kw = {"origin": r.ban.origin, "reason": "open connections closed at the ban", "closed": n}
                self._audit("close", r.ban.ip, **kw)
                r = ActionResult(r.ok, r.message + _closed_text(n), r.change, replace(r.ban, closed=n))
            out.append(r)
        return out

    def _history_io(self, ban: Ban) -> None:
        try:
            if self.persist is not None:
                self.persist.add_history(ban)
        except OSError as e:
            self.store.note(f"ban history: {e}")

    def _unban_fw(self, ip: str, origin: str, reason: str = "", **extra: Any) -> ActionResult:
        target = str(parse_target(ip, allow_net=True))
        change = list(self.firewall.describe_unban(target))
        inside = self._net_ban_of(target)
        if inside is not None:
            raise Conflict(f"{target} is inside the network ban {inside}: lift the network with "
                           f"`popwatch unban --net {inside}` (and ban the rest again if needed)")
        if self.dry_run:
            return ActionResult(True, f"dry run: would unban {target}", tuple(change))
        prev = self.store.bans.get(target)
        if prev is not None:
            extra.setdefault("prev", {"expires": prev.expires, "reason": prev.reason, "origin": prev.origin,
                                      "created": prev.created})
        rec = self._audit("unban", target, origin=origin, reason=reason, change=change, **extra)
        try:
            point("kernel unban")
            self.firewall.unban(target)
            point("kernel unban done")
            self._keep_members(target)
        except Exception as e:
            self._void(rec, f"the firewall refused: {e}")
            raise
        also = sorted(ip for ip in self._same_entry(target) if ip != target)
        note = f" (its {self.ban_entry(target, '/' in target)} also covered {', '.join(also)})" if also else ""
        return ActionResult(True, f"unbanned {target}{note}", tuple(change))

    def _keep_members(self, net_text: str) -> None:
        """Lifting an IPv4 network ban removes every member from the set: members banned on
        their own stay banned, with their own time."""
        if "/" not in net_text or ":" in net_text:
            return
        import ipaddress
        net = ipaddress.ip_network(net_text)
        now = self.clock()
        for b in list(self.store.bans.values()):
            if "/" in b.ip or ":" in b.ip or ipaddress.ip_address(b.ip) not in net:
                continue
            if b.expires is None or b.expires > now:
                self.firewall.ban(b.ip, None if b.expires is None else b.expires - now)

    def _net_ban_of(self, target: str) -> str | None:
        """The recorded IPv4 network ban that holds ``target`` (an address), if any."""
        if "/" in target or ":" in target:
            return None
        import ipaddress
        addr = ipaddress.ip_address(target)
        for ip in self.store.bans:
            if "/" in ip and ":" not in ip and addr in ipaddress.ip_network(ip):
                return ip
        return None

    def _same_entry(self, target: str) -> list[str]:
        """Recorded bans that are the same kernel entry as ``target`` (two addresses of one /64)."""
        entry = self.ban_entry(target, "/" in target)
        return [ip for ip in self.store.bans if ip == target or self.ban_entry(ip, "/" in ip) == entry]

    def _limit_fw(self, limit: PortLimit, origin: str, reason: str = "", **extra: Any) -> ActionResult:
        if self.dry_run:
            change = tuple(self.firewall.describe_limit(limit))
            return ActionResult(True, f"dry run: would set port {limit.port} to {limit.describe()}", change)
        prev = self.store.limits.get(limit.port) or self.firewall.limits().get(limit.port)
        if prev is not None:
            extra.setdefault("prev_limit", prev.to_json())
        rec = self._audit("limit", str(limit.port), origin=origin, reason=reason, change=[limit.describe()],
                          limit=limit.to_json(), **extra)
        try:
            point("kernel limit")
            self.firewall.set_limit(limit)
            point("kernel limit done")
        except Exception as e:
            self._void(rec, f"the firewall refused: {e}")
            raise
        return ActionResult(True, f"port {limit.port}: {limit.describe()}")

    def _after_ban(self, r: ActionResult) -> ActionResult:
        if r.ban is not None:
            self.store.set_ban(r.ban)
            if ":" in r.ban.ip:
                if len(self._ban_entries) > 200_000:
                    self._ban_entries.clear()
                self._ban_entries[self.ban_entry(r.ban.ip, "/" in r.ban.ip)] = r.ban.ip
            if r.ban.origin != "auto":
                self.autoban.note_ban(r.ban.ip, r.ban.created)
            self._save_bans()
        return r

    def _after_unban(self, ip: str, r: ActionResult) -> ActionResult:
        if not self.dry_run:
            for same in self._same_entry(str(parse_target(ip, allow_net=True))):
                self.store.remove_ban(same)  # the kernel entry is gone for all of them
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
        todo = []
        entries: set[str] = set()
        for d in decisions:  # one ban per kernel entry: two addresses of one /64 are one incident
            if d.ip in self._pending:
                continue
            e = self.ban_entry(d.ip, "/" in d.ip) if ":" in d.ip else d.ip
            if e in entries:
                if d.origin == "auto":
                    self.autoban.cancel(d.ip)
                continue
            entries.add(e)
            todo.append(d)
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
        fut: Future[list[Any]] = self.fw_thread.submit(self._auto_job, todo)
        fut.add_done_callback(lambda f: loop.call_soon_threadsafe(self._auto_done_future, todo, f))

    def _auto_job(self, todo: list[Decision]) -> list[Any]:
        """Firewall thread: ban each decision; results are ActionResult or an exception. With a
        state dir, the batch's audit records are written ahead with one fsync, then the kernel."""
        if self.persist is not None and not self.dry_run:
            return self._auto_job_ahead(todo)
        out: list[Any] = []
        for d in todo:
            try:
                r = self._ban_fw(d.ip, d.bantime, d.reason, d.origin, "/" in d.ip, d.detail, close=False)
                self.auto_latency.append((d.ip, d.event_ts, d.mono, time.monotonic()))
                out.append(r)
            except (Refused, FirewallError, ValueError, OSError) as e:
                out.append(e)
        return self._closed_after(out)

    def _auto_job_ahead(self, todo: list[Decision]) -> list[Any]:
        assert self.persist is not None
        out: list[Any] = [None] * len(todo)
        plans = []
        for i, d in enumerate(todo):
            try:
                plans.append((i, d, *self._ban_plan(d.ip, d.bantime, d.reason, d.origin, "/" in d.ip, d.detail)))
            except (Refused, FirewallError, ValueError, OSError) as e:
                out[i] = e
        recs = [self.persist.record("ban", ban.ip, origin=d.origin, reason=d.reason, change=change, **extra)
                for _, d, ban, change, extra in plans]
        try:
            self.persist.write_audit(recs)
        except OSError as e:
            self.say_once(f"auto-ban cannot act: {e} (no ban without its audit record)")
            for i, *_ in plans:
                out[i] = e
            return out
        voids: list[dict[str, Any]] = []
        for (i, d, ban, change, extra), rec in zip(plans, recs, strict=False):
            ttl = extra["ttl"]
            try:
                point("kernel ban")
                self.firewall.ban(ban.ip, ttl)
            except (FirewallError, ValueError, OSError) as e:
                voids.append(self.persist.record("void", ban.ip, origin=d.origin, reason=f"the firewall refused: {e}",
                                                 voids=rec["id"]))
                out[i] = e
                continue
            self._notify("ban", ban.ip, dict(origin=d.origin, reason=d.reason, change=change, **extra))
            self.auto_latency.append((d.ip, d.event_ts, d.mono, time.monotonic()))
            self._io.submit(self._history_io, ban)
            left = "permanently" if ttl is None else f"for {_human(ttl)}"
            out[i] = ActionResult(True, f"banned {ban.ip} {left}", tuple(change), ban)
        try:
            self.persist.write_audit(voids)
        except OSError as e:
            self.say_once(f"audit log: cannot note failed auto-bans: {e}")
        return self._closed_after(out)

    def _auto_done_future(self, todo: list[Decision], fut: Future[list[Any]]) -> None:
        try:
            results = fut.result()
        except Exception as e:  # noqa: BLE001 - executor shut down, etc.
            results = [e] * len(todo)
        self._auto_done(todo, results)

    def _auto_done(self, todo: list[Decision], results: list[Any]) -> None:
        for d, r in zip(todo, results, strict=False):
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
        prev = self._prev_of(ip, allow_net)
        r = self._ban_fw(ip, ttl, reason, origin, allow_net)
        try:
            return self._after_ban(r)
        except OSError as e:
            raise self._rollback(r, prev, e) from None

    def _prev_of(self, ip: str, allow_net: bool) -> Ban | None:
        try:
            return self.store.bans.get(str(parse_target(ip, allow_net=allow_net)))
        except ValueError:
            return None

    def _rollback(self, r: ActionResult, prev: Ban | None, e: OSError) -> StateDirError:
        """bans.json could not be written after the kernel changed: put the kernel back as it
        was (and say so in the audit log), so the kernel and the state never disagree."""
        target = r.ban.ip if r.ban is not None else ""
        try:
            if prev is None:
                self.firewall.unban(target)
                self.store.remove_ban(target)
            else:
                now = self.clock()
                self.firewall.ban(prev.ip, None if prev.expires is None else max(1.0, prev.expires - now))
                self.store.set_ban(prev)
            undone = "the kernel change was undone"
        except (FirewallError, ValueError) as err:
            undone = f"undoing the kernel change failed too ({err}): the kernel has it, bans.json not"
        recs = [x for x in self.persist.read_audit() if x.get("target") == target] if self.persist else []
        if recs:
            self._void(recs[-1], f"rolled back: {e}")
        self._saved = dict(self.store.bans)
        return StateDirError(e.errno, f"{e}; {undone}")

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
        target = str(parse_target(ip, allow_net=True))
        before = [self.store.bans[x] for x in self._same_entry(target)]
        r = self._unban_fw(ip, origin)
        try:
            return self._after_unban(ip, r)
        except OSError as e:
            for b in before:  # put them back in the kernel: bans.json still has them
                try:
                    now = self.clock()
                    self.firewall.ban(b.ip, None if b.expires is None else max(1.0, b.expires - now))
                    self.store.set_ban(b)
                except (FirewallError, ValueError):
                    pass
            recs = [x for x in self.persist.read_audit() if x.get("target") == target] if self.persist else []
            if recs:
                self._void(recs[-1], f"rolled back: {e}")
            self._saved = dict(self.store.bans)
            raise StateDirError(e.errno, f"{e}; the unban was undone") from None

    def set_limit(self, limit: PortLimit, *, origin: str = "cli") -> ActionResult:
        r = self._limit_fw(limit, origin)
        if not self.dry_run:
            self.store.set_limit(limit)
        return r

    # ------------------------------------------------------------------ actions: async (TUI)
    async def aban(self, ip: str, *, ttl: float | None = None, reason: str = "",
                   origin: str = "key") -> ActionResult:
        r = await self.fw_thread.run(self._ban_fw, ip, ttl, reason, origin, False)
        return self._after_ban(r)

    async def aban_many(self, ips: Iterable[str], *, ttl: float | None = None, reason: str = "",
                        origin: str = "key", allow_net: bool = False) -> tuple[list[ActionResult], dict[str, str]]:
        ips = list(ips)

        def job() -> list[Any]:
            out: list[Any] = []
            for ip in ips:
                try:
                    out.append(self._ban_fw(ip, ttl, reason, origin, allow_net, close=False))
                except (Refused, FirewallError, ValueError) as e:
                    out.append(e)
            return self._closed_after(out)
        done: list[ActionResult] = []
        refused: dict[str, str] = {}
        for ip, r in zip(ips, await self.fw_thread.run(job), strict=False):
            if isinstance(r, ActionResult):
                done.append(self._after_ban(r))
            else:
                refused[ip] = str(r)
        return done, refused

    async def aunban(self, ip: str, *, origin: str = "key") -> ActionResult:
        return self._after_unban(ip, await self.fw_thread.run(self._unban_fw, ip, origin))

    async def aset_limit(self, limit: PortLimit, *, origin: str = "key") -> ActionResult:
        r = await self.fw_thread.run(self._limit_fw, limit, origin)
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
        undone |= {r.get("voids") for r in recs if r.get("action") == "void"}
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
            raise Conflict("nothing to undo")
        kind, r = self._undo_fw(rec)
        return self._after_undo(kind, r, str(rec["target"]), rec)

    async def aundo(self, *, include_auto: bool = False) -> ActionResult:
        """:meth:`undo` for the TUI (``U``)."""
        rec = self._undo_target(include_auto)
        if rec is None:
            raise Conflict("nothing to undo")
        kind, r = await self.fw_thread.run(self._undo_fw, rec)
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
        todo: list[Ban] = []
        # nets before members, shorter before longer: a later add (-exist) sets the timeout, so
        # a network ban never shortens a longer member ban
        saved = sorted(saved, key=lambda b: (b.expires is None, b.expires or 0.0, "/" not in b.ip))
        for b in saved:
            if b.expires is not None and b.expires <= now:
                expired += 1
                self._audit("expire", b.ip, origin="reconcile", reason="expired while popwatch was not running")
                continue
            entry = self.ban_entry(b.ip, "/" in b.ip)
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
            todo.append(b)
        restored = self._restore_bulk(todo, now, msgs)
        from_audit = self._audit_bans(set(kernel) - seen) if kernel else {}
        for entry, left in kernel.items():
            if entry in seen:
                continue
            why = self.protector.why_protected(entry)
            if why:  # never keep the admin (or the allow-list) locked out
                self._lift_protected(entry, why, msgs)
                continue
            rec = from_audit.get(entry)
            if rec is not None:  # banned, then killed before bans.json was written: its record says why
                ban = Ban(str(rec["target"]), now, None if left is None else now + left,
                          str(rec.get("reason", "")), str(rec.get("origin", "kernel")))
            else:
                ban = Ban(entry, now, None if left is None else now + left, "found in the kernel", "kernel")
            self.store.set_ban(ban)
            adopted += 1
        if not self.dry_run:
            self._saved = {b.ip: b for b in saved}
            self._save_bans_now()
        summary = (f"bans on start: {restored} restored, {adopted} already in the kernel, "
                   f"{expired} expired" + (f", {refused} protected (not restored)" if refused else ""))
        msgs.insert(0, summary)
        for m in msgs:
            self.store.note(m)
        msgs.extend(f"state dir: {p}" for p in problems)  # corrupt state files: noted in the store at start
        return msgs

    def _restore_bulk(self, todo: list[Ban], now: float, msgs: list[str]) -> int:
        """Put saved bans back in the kernel: one audit record (written ahead), then one bulk
        load (``ban_many``: netlink batches, or one nft transaction), up to what the set can hold."""
        if not todo:
            return 0
        cap = _set_capacity()
        if len(todo) > cap:
            keep = sorted(todo, key=lambda b: (b.expires is not None, -(b.expires or 0.0)))[:cap]
            msgs.append(f"{len(todo) - cap} saved bans not restored: the kernel ban set holds at most "
                        f"{cap} entries (the longest bans were kept)")
            kept = {id(b) for b in keep}
            todo = [b for b in todo if id(b) in kept]
        items = [(b.ip, None if b.expires is None else b.expires - now) for b in todo]
        if self.dry_run:
            for ip, ttl in items[:1000]:
                msgs.extend(self.firewall.describe_ban(ip, ttl))
            for b in todo:
                self.store.set_ban(b)
            return len(todo)
        targets = [b.ip for b in todo]
        recs: list[dict[str, Any]] = []
        if self.persist is not None and len(todo) <= 1000:  # one record each, one write
            recs = [self.persist.record("restore", b.ip, origin="reconcile", reason=b.reason or "restored on start",
                                        change=[f"ban {ip} ttl {ttl}"], expires=b.expires)
                    for b, (ip, ttl) in zip(todo, items, strict=False)]
            self.persist.write_audit(recs)
            rec = None
        else:  # a bulk restore: one record naming the count (bans.json lists them)
            rec = self._audit("restore", f"{len(todo)} bans", origin="reconcile", reason="restored on start",
                              targets=targets[:1000], count=len(targets))
        done: list[Ban] = []
        try:
            point("kernel restore")
            self.firewall.ban_many(items)
            point("kernel restore done")
            done = todo
        except (FirewallError, ValueError) as e:
            msgs.append(f"bulk restore failed ({e}); restoring one by one")
        if not done:
            for b, (ip, ttl) in zip(todo, items, strict=False):
                try:
                    self.firewall.ban(ip, ttl)
                    done.append(b)
                except (FirewallError, ValueError) as e:
                    msgs.append(f"could not restore the ban of {ip}: {e}")
            done_ids = {id(b) for b in done}
            failed = {b.ip for b in todo if id(b) not in done_ids}
            if rec is not None and not done:
                self._void(rec, "nothing could be restored")
            for r in recs:
                if r["target"] in failed:
                    self._void(r, "could not be restored")
        for b in done:
            self.store.set_ban(b)
        return len(done)

    def _audit_bans(self, entries: set[str]) -> dict[str, dict[str, Any]]:
        """For kernel entries bans.json does not know: the newest audit ban record of each that
        was not voided nor followed by an unban."""
        if self.persist is None or not entries:
            return {}
        recs = self.persist.read_audit()
        voided = {r.get("voids") for r in recs if r.get("action") == "void"}
        out: dict[str, dict[str, Any]] = {}
        for r in recs:
            act, target = r.get("action"), r.get("target")
            if not isinstance(target, str) or " " in target:
                continue
            if act == "ban" and r.get("ok", True) and r.get("id") not in voided:
                try:
                    e = self.ban_entry(target, "/" in target)
                except (ValueError, TypeError):
                    continue
                if e in entries:
                    out[e] = r
            elif act in ("unban", "expire"):
                try:
                    out.pop(self.ban_entry(target, "/" in target), None)
                except (ValueError, TypeError):
                    continue
        return out

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
        entries = {self.ban_entry(ip, "/" in ip): ip for ip in self.store.bans}
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
                saved = {self.ban_entry(b.ip, "/" in b.ip): b for b in self.persist.load_bans()}
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


def tenure_long_lived() -> None:
    """Move long-lived state to the permanent generation (every poll): full collections stop
    scanning the store (a full GC over 100k records stalls ingest and auto-ban ~100 ms; see
    PERF-NOTES)."""
    gc.collect(1)
    gc.freeze()


def _set_capacity() -> int:
    """How many entries one kernel ban set holds (ipset's ``maxelem`` at create)."""
    try:
        from .firewall.ipset import MAXELEM
        return int(MAXELEM)
    except (ImportError, AttributeError, ValueError):
        return 1 << 20


def _closed_text(n: int) -> str:
    return f"; closed {n} open connection{'' if n == 1 else 's'}" if n else ""


def _human(secs: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= n and secs % n == 0:
            return f"{int(secs // n)}{unit}"
    if secs >= 3600:
        return f"{secs / 3600:.1f}h"
    if secs >= 60:
        return f"{int(secs // 60)}m"
    return f"{int(secs)}s"
