"""The Monitor: runs the sources and the counter poller, applies policy, acts.

Data flows one way: sources -> parser -> store, and firewall counters -> store. Every action
(ban, unban, limit change) goes Monitor -> policy check -> firewall backend -> store -> audit,
and the same methods serve the CLI (sync: :meth:`ban`), the TUI keys and auto-ban (async:
:meth:`aban`). Firewall calls run on one dedicated thread (python-iptables is not thread-safe),
never on the UI loop.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any, Awaitable, Callable, Iterable

from .addr import parse_target
from .firewall.base import Firewall, PortLimit
from .model import AuthEvent, Ban, CounterSample, RawLine, SourceHealth
from .persist import Persist
from .policy import Protector, Refused
from .sources.base import Source
from .store import StateStore

#: lines ingested per slice before yielding to the event loop (keeps keys responsive)
INGEST_SLICE = 2000


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
                 default_ttl: float | None = 3600.0) -> None:
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
        self._fw = ThreadPoolExecutor(max_workers=1, thread_name_prefix="popwatch-fw")
        self._tasks: list[asyncio.Task[None]] = []
        self.on_events: list[Callable[[list[AuthEvent]], Awaitable[None] | None]] = []
        self.lines_in = 0
        self._ended: set[str] = set()
        store.protected = self.protector.why_protected
        if persist is not None:
            for p in persist.problems:
                store.note(p)

    # ------------------------------------------------------------------ running
    def start_firewall(self, limits: list[PortLimit]) -> None:
        """Install popwatch's rules for these ports (sync; call before :meth:`run`)."""
        if self.firewall.can_write and not self.dry_run:
            self.firewall.install(limits)
        for lim in (self.firewall.limits() or {l.port: l for l in limits}).values():
            self.store.set_limit(lim)
        for lim in limits:
            if lim.port not in self.store.limits:
                self.store.set_limit(lim)
        for w in self.firewall.warnings():
            self.store.note(w)

    async def run(self) -> None:
        """Run every source and the poller until cancelled."""
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

    def close(self) -> None:
        self._fw.shutdown(wait=False, cancel_futures=True)
        self.firewall.close()

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
        """Parse and store one batch (sync; used by sources' task and by tests)."""
        parse = self.parser.parse
        events = [ev for ev in map(parse, batch) if ev is not None]
        self.lines_in += len(batch)
        if events:
            self.store.add_events(events)
            out = self.events_out
            if out is not None:
                out.write("".join(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in events))
                out.flush()
            for cb in self.on_events:
                r = cb(events)
                if r is not None:
                    asyncio.ensure_future(r)
        return events

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
            for b in self.store.expire_bans():
                self._audit("expire", b.ip, origin="kernel", reason="ban timed out")
            n += 1
            if n % 30 == 1:
                # long-lived state to the permanent generation: full GCs stop scanning it
                gc.collect(1)
                gc.freeze()
            await asyncio.sleep(self.poll_interval)

    # ------------------------------------------------------------------ actions
    def _audit(self, action: str, target: str, **kw: Any) -> None:
        if self.persist is not None and not self.dry_run:
            self.persist.audit(action, target, **kw)

    def _save_bans(self) -> None:
        if self.persist is not None and not self.dry_run:
            self.persist.save_bans(list(self.store.bans.values()))

    def _ban_fw(self, ip: str, ttl: float | None, reason: str, origin: str,
                allow_net: bool = False) -> ActionResult:
        """Policy check + firewall change. Runs on the firewall thread (or the CLI's)."""
        target = str(parse_target(ip, allow_net=allow_net))
        why = self.protector.why_protected(target)
        if why:
            self._audit("ban", target, origin=origin, reason=reason, ok=False, error=f"refused: {why}")
            raise Refused(f"refused: {why}")
        change = self.firewall.describe_ban(target, ttl)
        if self.dry_run:
            return ActionResult(True, f"dry run: would ban {target}", tuple(change))
        self.firewall.ban(target, ttl)
        now = self.clock()
        ban = Ban(target, now, None if ttl is None else now + ttl, reason, origin)
        self._audit("ban", target, origin=origin, reason=reason, change=change)
        left = "permanently" if ttl is None else f"for {_human(ttl)}"
        return ActionResult(True, f"banned {target} {left}", tuple(change), ban)

    def _unban_fw(self, ip: str, origin: str) -> ActionResult:
        target = str(parse_target(ip, allow_net=True))
        if self.dry_run:
            return ActionResult(True, f"dry run: would unban {target}", (f"unban {target}",))
        self.firewall.unban(target)
        self._audit("unban", target, origin=origin, change=[f"unban {target}"])
        return ActionResult(True, f"unbanned {target}")

    def _limit_fw(self, limit: PortLimit, origin: str) -> ActionResult:
        if self.dry_run:
            return ActionResult(True, f"dry run: would set port {limit.port} to {limit.describe()}")
        self.firewall.set_limit(limit)
        self._audit("limit", str(limit.port), origin=origin, change=[limit.describe()])
        return ActionResult(True, f"port {limit.port}: {limit.describe()}")

    def _after_ban(self, r: ActionResult) -> ActionResult:
        if r.ban is not None:
            self.store.set_ban(r.ban)
            self._save_bans()
        return r

    def _after_unban(self, ip: str, r: ActionResult) -> ActionResult:
        if not self.dry_run:
            self.store.remove_ban(str(parse_target(ip, allow_net=True)))
            self._save_bans()
        return r

    # sync (CLI)
    def ban(self, ip: str, *, ttl: float | None = None, reason: str = "", origin: str = "cli",
            allow_net: bool = False) -> ActionResult:
        return self._after_ban(self._ban_fw(ip, ttl, reason, origin, allow_net))

    def unban(self, ip: str, *, origin: str = "cli") -> ActionResult:
        return self._after_unban(ip, self._unban_fw(ip, origin))

    def set_limit(self, limit: PortLimit, *, origin: str = "cli") -> ActionResult:
        r = self._limit_fw(limit, origin)
        if not self.dry_run:
            self.store.set_limit(limit)
        return r

    # async (TUI, auto-ban): the firewall work on its thread, the store on the loop
    async def aban(self, ip: str, *, ttl: float | None = None, reason: str = "",
                   origin: str = "key") -> ActionResult:
        loop = asyncio.get_running_loop()
        r = await loop.run_in_executor(self._fw, self._ban_fw, ip, ttl, reason, origin, False)
        return self._after_ban(r)

    async def aunban(self, ip: str, *, origin: str = "key") -> ActionResult:
        loop = asyncio.get_running_loop()
        return self._after_unban(ip, await loop.run_in_executor(self._fw, self._unban_fw, ip, origin))

    async def aset_limit(self, limit: PortLimit, *, origin: str = "key") -> ActionResult:
        loop = asyncio.get_running_loop()
        r = await loop.run_in_executor(self._fw, self._limit_fw, limit, origin)
        if not self.dry_run:
            self.store.set_limit(limit)
        return r


def _human(secs: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= n and secs % n == 0:
            return f"{int(secs // n)}{unit}"
    if secs >= 3600:
        return f"{secs / 3600:.1f}h"
    if secs >= 60:
        return f"{int(secs // 60)}m"
    return f"{int(secs)}s"
