"""Actions: ban, unban, limit, undo and what-if, with the write-ahead audit, in one place.

Every action goes policy check -> audit record (written ahead) -> firewall backend (on the
process's one firewall thread, :data:`popwatch.firewall.thread.FW_THREAD`) -> store ->
bans.json. The API is async (the TUI's keys, the CrowdSec bridge); the CLI runs a coroutine
to completion with :func:`run_sync`. Auto-ban crossings (:meth:`Actions.fire`) go straight to
the firewall thread from ingest, without a loop round trip.

The :class:`~popwatch.monitor.Monitor` owns one ``Actions`` (``monitor.actions``) and gives it
the store, the firewall, the state dir and the policy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from .addr import NetIndex, parse_target
from .autoban import Decision
from .faults import point
from .firewall.base import FirewallError
from .firewall.rules import MAX_TIMEOUT as MAX_BAN_TTL
from .model import Ban, Origin, PortLimit, Rate, fmt_duration
from .persist import StateDirError
from .policy import Refused
from .whatif import WhatIfReport, parse_proposal
from .whatif import what_if as _what_if

if TYPE_CHECKING:
    from .monitor import Monitor

T = TypeVar("T")

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


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run an action coroutine to completion from synchronous code (the CLI, scripts): on a
    fresh event loop, or on a helper thread's when this thread already runs one."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="popwatch-sync") as ex:
        return ex.submit(asyncio.run, coro).result()


class Actions:
    """ban/unban/limit/undo/what-if of one Monitor (see the module docstring)."""

    def __init__(self, monitor: Monitor) -> None:
        self.m = monitor
        #: written-ahead bans.json changes wait for the poll while the monitor runs
        self.bans_dirty = False
        #: auto-bans handed to the firewall thread, not yet in the store
        self.pending: set[str] = set()
        #: the network bans among ``pending``: an address inside one is in flight too
        self.pending_nets = NetIndex()
        self._entries: dict[str, str] = {}
        #: bans.json as this process last read/wrote it: a write merges only our changes
        self.saved: dict[str, Ban] = dict(monitor.store.bans)
        #: IPv6 kernel entry (/64) -> the banned address
        self.ban_entries: dict[str, str] = {}
        #: in-memory action log (undo without a state dir)
        self.log: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ the API (async; sync callers: run_sync)
    async def ban(self, ip: str, *, ttl: float | None = None, reason: str = "", origin: str = Origin.KEY,
                  allow_net: bool = False) -> ActionResult:
        """Ban ``ip`` (with ``allow_net``, a network) through the policy check, audit record
        first, kernel, then store and bans.json; its open connections are closed. When
        bans.json cannot be written the kernel change is rolled back (StateDirError)."""
        prev = self._prev_of(ip, allow_net)
        r = await self.m.fw_thread.run(self._ban_fw, ip, ttl, reason, origin, allow_net)
        try:
            return self._after_ban(r)
        except OSError as e:
            raise await self.m.fw_thread.run(self._rollback, r, prev, e) from None

    async def ban_many(self, ips: Iterable[str], *, ttl: float | None = None, reason: str = "",
                       origin: str = Origin.KEY, allow_net: bool = False
                       ) -> tuple[list[ActionResult], dict[str, str]]:
        """Mass ban through the same policy path, in one firewall job with one close of open
        connections: (results, {ip: why refused or failed})."""
        ips = list(ips)

        def job() -> list[Any]:
            if self.m.persist is not None and not self.m.dry_run:
                return self._ban_many_ahead(ips, ttl, reason, origin, allow_net)
            out: list[Any] = []
            for ip in ips:
                try:
                    out.append(self._ban_fw(ip, ttl, reason, origin, allow_net, close=False))
                except (Refused, FirewallError, ValueError) as e:
                    out.append(e)
            return self._closed_after(out)
        done: list[ActionResult] = []
        refused: dict[str, str] = {}
        for ip, r in zip(ips, await self.m.fw_thread.run(job), strict=False):
            if isinstance(r, ActionResult):
                done.append(self._after_ban(r))
            else:
                refused[ip] = str(r)
        return done, refused

    async def unban(self, ip: str, *, origin: str = Origin.KEY) -> ActionResult:
        """Lift a ban (every recorded ban of the same kernel entry goes with it). When bans.json
        cannot be written the bans are put back (StateDirError)."""
        target = str(parse_target(ip, allow_net=True))
        before = [self.m.store.bans[x] for x in self.same_entry(target)]
        r = await self.m.fw_thread.run(self._unban_fw, ip, origin)
        try:
            return self._after_unban(ip, r)
        except OSError as e:
            await self.m.fw_thread.run(self._rollback_unban, target, before, e)
            raise StateDirError(e.errno, f"{e}; the unban was undone") from None

    def _rollback_unban(self, target: str, before: list[Ban], e: OSError) -> None:
        for b in before:  # put them back in the kernel: bans.json still has them
            try:
                now = self.m.clock()
                self.m.firewall.ban(b.ip, None if b.expires is None else max(1.0, b.expires - now))
                self.m.store.set_ban(b)
            except (FirewallError, ValueError):
                pass
        recs = [x for x in self.m.persist.read_audit() if x.get("target") == target] if self.m.persist else []
        if recs:
            self.void(recs[-1], f"rolled back: {e}")
        self.saved = dict(self.m.store.bans)

    async def set_limit(self, limit: PortLimit, *, origin: str = Origin.KEY) -> ActionResult:
        """Replace one port's rule (counters carried over)."""
        r = await self.m.fw_thread.run(self._limit_fw, limit, origin)
        if not self.m.dry_run:
            self.m.store.set_limit(limit)
        return r

    async def undo(self, *, include_auto: bool = False) -> ActionResult:
        """Revert the last ban, unban or limit change made by a person (with ``include_auto``,
        also auto-bans). Repeated undos walk further back. Raises Conflict when there is none."""
        rec = self._undo_target(include_auto)
        if rec is None:
            raise Conflict("nothing to undo")
        kind, r = await self.m.fw_thread.run(self._undo_fw, rec)
        return self._after_undo(kind, r, str(rec["target"]), rec)

    async def what_if(self, proposal: str | dict[str, Any], *, window: float | None = None) -> WhatIfReport:
        """Replay the recent events (the last ``window`` seconds, default all that is kept:
        ``policy.whatif_window``) under ``proposal`` (``"maxretry=5,findtime=10m"`` or
        ``"port=110,rate=2/second,burst=5"``); nothing is changed. The events are copied here,
        the replay runs in a worker thread. Raises ValueError."""
        prop = parse_proposal(proposal) if isinstance(proposal, str) else dict(proposal)
        m = self.m
        since = None if window is None else m.clock() - window
        events = list(m.window.events(since))
        current = m.store.limits.get(int(prop["port"])) if "port" in prop else None
        successes = self._recent_successes()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, lambda: _what_if(events, m.policy, prop, protected=m.protector.protected_ip,
                                   successes=successes, current_limit=current,
                                   ipv6_prefix=m.policy.ipv6_prefix, campaign=m.campaigns.cfg))

    # ------------------------------------------------------------------ the firewall thread
    def notify(self, action: str, target: str, kw: dict[str, Any]) -> None:
        for cb in self.m.on_action:
            try:
                cb(action, target, kw)
            except Exception:  # noqa: BLE001 - an exporter must never break an action
                pass

    def void(self, rec: dict[str, Any] | None, error: str) -> None:
        """A written-ahead action did not happen: say so in the audit log."""
        if rec is None:
            return
        if rec in self.log:
            self.log.remove(rec)
        if self.m.persist is not None and not self.m.persist.void(rec, error):
            self.m.say_once(f"the audit log holds {rec.get('action')} {rec.get('target')} "
                          f"(id {rec.get('id')}) that did not happen ({error}); the disk refused the note")

    def audit(self, action: str, target: str, **kw: Any) -> dict[str, Any] | None:
        if self.m.dry_run:
            return None
        if self.m.persist is not None:
            rec = self.m.persist.audit(action, target, **kw)
        else:
            rec = {"id": f"{time.time_ns():x}", "action": action, "target": target, **kw}
        self._remember(rec, action, target, kw)
        return rec

    def _remember(self, rec: dict[str, Any], action: str, target: str, kw: dict[str, Any]) -> None:
        """A written audit record: to the exporters, and to the in-memory log (undo)."""
        self.notify(action, target, kw)
        if action in UNDOABLE or action == "undo":
            self.log.append(rec)
            del self.log[:-1000]

    def save_bans_now(self) -> None:
        """Merge this process's ban changes into bans.json under the state lock (another
        process, a CLI ban while watch runs, may have written it since)."""
        if self.m.persist is not None and not self.m.dry_run:
            cur = dict(self.m.store.bans)
            up = {ip: b for ip, b in cur.items() if self.saved.get(ip) != b}
            rm = {ip for ip in self.saved if ip not in cur}
            if up or rm or not self.m.persist.bans_path.exists():
                self.m.persist.merge_bans(up, rm)
            self.saved = cur

    def save_bans(self) -> None:
        if self.m.running:
            self.bans_dirty = True  # the poll writes it within a second
        else:
            self.save_bans_now()

    def banned_or_pending(self, ip: str) -> bool:
        """``ip`` (an address or a network) is banned already or on its way: itself, the /64 of
        a banned IPv6 address, or inside a network ban (IPv4 or IPv6, recorded or in flight)."""
        if ip in self.pending or (self.pending_nets and self.pending_nets.holders(ip)):
            return True
        bans = self.m.store.bans
        b = bans.get(ip)
        if b is None and ":" in ip and self.ban_entries:  # another address of a banned /64
            owner = self.ban_entries.get(self.ban_entry(ip, False))
            if owner is not None:
                b = bans.get(owner)
        if self._active(b):
            return True
        return any(self._active(bans.get(net)) for net in self.m.store.net_bans.holders(ip) if net != ip)

    def _active(self, b: Ban | None) -> bool:
        # a ban the kernel has timed out but the poll has not expired yet does not count
        return b is not None and (b.expires is None or b.expires > self.m.clock() + 0.5)

    def ban_entry(self, target: str, allow_net: bool) -> str:
        """The kernel entry a ban of ``target`` becomes (IPv6: its /64). Memoised."""
        hit = self._entries.get(target)
        if hit is not None:
            return hit
        try:
            e = str(self.m.firewall.ban_key(target, net=True if allow_net else None))
        except (FirewallError, ValueError, TypeError):
            e = target
        if len(self._entries) > 100_000:
            self._entries.clear()
        self._entries[target] = e
        return e

    def why_refused(self, target: str, allow_net: bool) -> str | None:
        """Why ``target`` may not be banned: it is protected, or the kernel entry its ban
        becomes (IPv6: the /64) contains a protected address. None: it may be."""
        why = self.m.protector.why_protected(target) if "/" in target else self.m.protector.protected_ip(target)
        if why is None:
            entry = self.ban_entry(target, allow_net)
            if entry != target:
                why2 = self.m.protector.protected_net(entry)
                why = f"banning {target} bans all of {entry}: {why2}" if why2 else None
        return why

    def _ban_plan(self, ip: str, ttl: float | None, reason: str, origin: str, allow_net: bool,
                  detail: dict[str, Any] | None, refusals: list[tuple[dict[str, Any], dict[str, Any]]] | None = None
                  ) -> tuple[Ban, list[str], dict[str, Any]]:
        """Policy check and the exact change, nothing done yet: (ban, change, audit fields). A
        refusal's audit record is written now, or (``refusals``, with a state dir) left there as
        (record, fields) for the caller's one write."""
        target = str(parse_target(ip, allow_net=allow_net))
        why = self.why_refused(target, allow_net)
        if why:
            kw: dict[str, Any] = {"origin": origin, "reason": reason, "ok": False, "error": f"refused: {why}"}
            if refusals is not None and self.m.persist is not None and not self.m.dry_run:
                refusals.append((self.m.persist.record("ban", target, **kw), kw))
            else:
                self.audit("ban", target, **kw)
            raise Refused(f"refused: {why}")
        if ttl is not None and ttl > MAX_BAN_TTL:
            ttl = float(MAX_BAN_TTL)  # what the kernel set holds (recidive can ask for more)
        change = self.m.firewall.describe_ban(target, ttl)
        now = self.m.clock()
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
            self.m.firewall.ban(ban.ip, ttl)
            point("kernel ban done")
            self._keep_longer_members(ban)
        except Exception as e:
            self.void(rec, f"the firewall refused: {e}")
            raise

    def _keep_longer_members(self, ban: Ban) -> None:
        """A network ban never shortens a longer ban of one of its members (the set re-adds
        members with the network's timeout): put those back with their own."""
        if "/" not in ban.ip or ":" in ban.ip:
            return
        import ipaddress
        net = ipaddress.ip_network(ban.ip)
        now = self.m.clock()
        for b in list(self.m.store.bans.values()):
            if "/" in b.ip or ":" in b.ip or ipaddress.ip_address(b.ip) not in net:
                continue
            if ban.expires is not None and (b.expires is None or b.expires > ban.expires):
                self.m.firewall.ban(b.ip, None if b.expires is None else b.expires - now)

    def _ban_fw(self, ip: str, ttl: float | None, reason: str, origin: str,
                allow_net: bool = False, detail: dict[str, Any] | None = None,
                close: bool = True) -> ActionResult:
        """Policy check, audit record (written ahead), firewall change, then (``close``) the
        address's open connections are closed. Runs on the firewall thread (or the CLI's)."""
        ban, change, extra = self._ban_plan(ip, ttl, reason, origin, allow_net, detail)
        target, ttl = ban.ip, extra["ttl"]
        if self.m.dry_run:
            return ActionResult(True, f"dry run: would ban {target}"
                                + ("" if ttl is None else f" for {fmt_duration(ttl)}"), tuple(change))
        rec = self.audit("ban", target, origin=origin, reason=reason, change=change, **extra)
        self._ban_kernel(ban, rec)
        closed = self._close_conns([target]).get(target, 0) if close else 0
        if closed:
            ban = replace(ban, closed=closed)
            self.audit("close", target, origin=origin, reason="open connections closed at the ban",
                        closed=closed)
        if self.m.persist is not None:
            if origin in ("auto", "campaign") and self.m.running:
                self.m.io_thread.submit(self._history_io, ban)
            else:
                try:
                    self.m.persist.add_history(ban)
                except OSError:
                    pass  # recidive history only; the audit record and bans.json are what count
        left = "permanently" if ttl is None else f"for {fmt_duration(ttl)}"
        return ActionResult(True, f"banned {target} {left}" + _closed_text(closed), tuple(change), ban)

    def _ban_many_ahead(self, ips: list[str], ttl: float | None, reason: str, origin: str,
                        allow_net: bool) -> list[Any]:
        """Firewall thread, a mass ban with a state dir: every audit record (refusals too) in one
        write with one fsync, durable before the first kernel change; then the kernel, one
        entry at a time; a ``void`` record (one more write) for each that failed; the ban
        history in one write. Results in the order of ``ips``: ActionResult or the exception."""
        persist = self.m.persist
        assert persist is not None
        out: list[Any] = [None] * len(ips)
        refusals: list[tuple[dict[str, Any], dict[str, Any]]] = []
        plans = []
        for i, ip in enumerate(ips):
            try:
                plans.append((i, *self._ban_plan(ip, ttl, reason, origin, allow_net, None, refusals)))
            except (Refused, FirewallError, ValueError) as e:
                out[i] = e
        recs = [persist.record("ban", ban.ip, origin=origin, reason=reason, change=change, **extra)
                for _, ban, change, extra in plans]
        persist.write_audit([r for r, _ in refusals] + recs)  # raises: no ban without its record
        for rec, kw in refusals:
            self._remember(rec, "ban", str(rec["target"]), kw)
        voids: list[dict[str, Any]] = []
        done: list[Ban] = []
        for (i, ban, change, extra), rec in zip(plans, recs, strict=True):
            try:
                point("kernel ban")
                self.m.firewall.ban(ban.ip, extra["ttl"])
                point("kernel ban done")
                self._keep_longer_members(ban)
            except Exception as e:  # noqa: BLE001 - one entry's failure is its result; the others go on
                voids.append(persist.record("void", ban.ip, origin=origin, reason=f"the firewall refused: {e}",
                                            voids=rec["id"]))
                out[i] = e
                continue
            self._remember(rec, "ban", ban.ip, dict(origin=origin, reason=reason, change=change, **extra))
            done.append(ban)
            left = "permanently" if extra["ttl"] is None else f"for {fmt_duration(extra['ttl'])}"
            out[i] = ActionResult(True, f"banned {ban.ip} {left}", tuple(change), ban)
        if voids:
            try:
                persist.write_audit(voids)
            except OSError as e:
                self.m.say_once(f"the audit log holds {len(voids)} bans that did not happen ({e}); "
                                f"the disk refused the note")
        try:
            persist.add_history_many(done)
        except OSError:
            pass  # recidive history only; the audit records and bans.json are what count
        return self._closed_after(out)

    def _close_conns(self, targets: list[str]) -> dict[str, int]:
        """Firewall thread, right after bans: close the addresses' open connections (a session
        opened before the ban would go on guessing). Best effort, never fails a ban."""
        try:
            return self.m.firewall.close_connections(targets) if targets else {}
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
                self.audit("close", r.ban.ip, **kw)
                r = ActionResult(r.ok, r.message + _closed_text(n), r.change, replace(r.ban, closed=n))
            out.append(r)
        return out

    def _history_io(self, ban: Ban) -> None:
        try:
            if self.m.persist is not None:
                self.m.persist.add_history(ban)
        except OSError as e:
            self.m.store.note(f"ban history: {e}")

    def _unban_fw(self, ip: str, origin: str, reason: str = "", **extra: Any) -> ActionResult:
        target = str(parse_target(ip, allow_net=True))
        change = list(self.m.firewall.describe_unban(target))
        inside = self._net_ban_of(target)
        if inside is not None:
            raise Conflict(f"{target} is inside the network ban {inside}: lift the network with "
                           f"`popwatch unban --net {inside}` (and ban the rest again if needed)")
        if self.m.dry_run:
            return ActionResult(True, f"dry run: would unban {target}", tuple(change))
        prev = self.m.store.bans.get(target)
        if prev is not None:
            extra.setdefault("prev", {"expires": prev.expires, "reason": prev.reason, "origin": prev.origin,
                                      "created": prev.created})
        rec = self.audit("unban", target, origin=origin, reason=reason, change=change, **extra)
        try:
            point("kernel unban")
            self.m.firewall.unban(target)
            point("kernel unban done")
            self._keep_members(target)
        except Exception as e:
            self.void(rec, f"the firewall refused: {e}")
            raise
        also = sorted(ip for ip in self.same_entry(target) if ip != target)
        note = f" (its {self.ban_entry(target, '/' in target)} also covered {', '.join(also)})" if also else ""
        return ActionResult(True, f"unbanned {target}{note}", tuple(change))

    def _keep_members(self, net_text: str) -> None:
        """Lifting an IPv4 network ban removes every member from the set: members banned on
        their own stay banned, with their own time."""
        if "/" not in net_text or ":" in net_text:
            return
        import ipaddress
        net = ipaddress.ip_network(net_text)
        now = self.m.clock()
        for b in list(self.m.store.bans.values()):
            if "/" in b.ip or ":" in b.ip or ipaddress.ip_address(b.ip) not in net:
                continue
            if b.expires is None or b.expires > now:
                self.m.firewall.ban(b.ip, None if b.expires is None else b.expires - now)

    def _net_ban_of(self, target: str) -> str | None:
        """The recorded IPv4 network ban that holds ``target`` (an address), if any."""
        if "/" in target or ":" in target:
            return None
        import ipaddress
        addr = ipaddress.ip_address(target)
        for ip in self.m.store.bans:
            if "/" in ip and ":" not in ip and addr in ipaddress.ip_network(ip):
                return ip
        return None

    def same_entry(self, target: str) -> list[str]:
        """Recorded bans that are the same kernel entry as ``target`` (two addresses of one /64)."""
        entry = self.ban_entry(target, "/" in target)
        return [ip for ip in self.m.store.bans if ip == target or self.ban_entry(ip, "/" in ip) == entry]

    def _limit_fw(self, limit: PortLimit, origin: str, reason: str = "", **extra: Any) -> ActionResult:
        if self.m.dry_run:
            change = tuple(self.m.firewall.describe_limit(limit))
            return ActionResult(True, f"dry run: would set port {limit.port} to {limit.describe()}", change)
        prev = self.m.store.limits.get(limit.port) or self.m.firewall.limits().get(limit.port)
        if prev is not None:
            extra.setdefault("prev_limit", prev.to_json())
        rec = self.audit("limit", str(limit.port), origin=origin, reason=reason, change=[limit.describe()],
                          limit=limit.to_json(), **extra)
        try:
            point("kernel limit")
            self.m.firewall.set_limit(limit)
            point("kernel limit done")
        except Exception as e:
            self.void(rec, f"the firewall refused: {e}")
            raise
        return ActionResult(True, f"port {limit.port}: {limit.describe()}")

    def _after_ban(self, r: ActionResult) -> ActionResult:
        if r.ban is not None:
            self.m.store.set_ban(r.ban)
            if ":" in r.ban.ip:
                if len(self.ban_entries) > 200_000:
                    self.ban_entries.clear()
                self.ban_entries[self.ban_entry(r.ban.ip, "/" in r.ban.ip)] = r.ban.ip
            if r.ban.origin != "auto":
                self.m.autoban.note_ban(r.ban.ip, r.ban.created)
            self.save_bans()
        return r

    def _after_unban(self, ip: str, r: ActionResult) -> ActionResult:
        if not self.m.dry_run:
            for same in self.same_entry(str(parse_target(ip, allow_net=True))):
                self.m.store.remove_ban(same)  # the kernel entry is gone for all of them
            self.save_bans()
        return r

    def fire(self, decisions: list[Decision]) -> None:
        """Hand crossings to the firewall thread now; the store follows on the loop."""
        todo = []
        entries: set[str] = set()
        nets = NetIndex()  # the batch's network bans: an address inside one is the same incident
        for d in decisions:
            if "/" in d.ip and d.ip not in self.pending:
                nets.add(d.ip)
        for d in decisions:  # one ban per kernel entry: two addresses of one /64 are one incident
            if d.ip in self.pending:
                continue
            e = self.ban_entry(d.ip, "/" in d.ip) if ":" in d.ip else d.ip
            inside = nets and any(n != d.ip for n in nets.holders(d.ip))
            if e in entries or inside:
                if d.origin == "auto":
                    self.m.autoban.cancel(d.ip)
                continue
            entries.add(e)
            todo.append(d)
        if not todo:
            return
        for d in todo:
            self.pending.add(d.ip)
            if "/" in d.ip:
                self.pending_nets.add(d.ip)
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:  # sync callers (tests, one-shot tools): do it in line
            self._auto_done(todo, self._auto_job(todo))
            return
        fut: Future[list[Any]] = self.m.fw_thread.submit(self._auto_job, todo)
        fut.add_done_callback(lambda f: loop.call_soon_threadsafe(self._auto_done_future, todo, f))

    def _auto_job(self, todo: list[Decision]) -> list[Any]:
        """Firewall thread: ban each decision; results are ActionResult or an exception. With a
        state dir, the batch's audit records are written ahead with one fsync, then the kernel."""
        if self.m.persist is not None and not self.m.dry_run:
            return self._auto_job_ahead(todo)
        out: list[Any] = []
        for d in todo:
            try:
                r = self._ban_fw(d.ip, d.bantime, d.reason, d.origin, "/" in d.ip, d.detail, close=False)
                self.m.auto_latency.append((d.ip, d.event_ts, d.mono, time.monotonic()))
                out.append(r)
            except (Refused, FirewallError, ValueError, OSError) as e:
                out.append(e)
        return self._closed_after(out)

    def _auto_job_ahead(self, todo: list[Decision]) -> list[Any]:
        assert self.m.persist is not None
        out: list[Any] = [None] * len(todo)
        plans = []
        for i, d in enumerate(todo):
            try:
                plans.append((i, d, *self._ban_plan(d.ip, d.bantime, d.reason, d.origin, "/" in d.ip, d.detail)))
            except (Refused, FirewallError, ValueError, OSError) as e:
                out[i] = e
        recs = [self.m.persist.record("ban", ban.ip, origin=d.origin, reason=d.reason, change=change, **extra)
                for _, d, ban, change, extra in plans]
        try:
            self.m.persist.write_audit(recs)
        except OSError as e:
            self.m.say_once(f"auto-ban cannot act: {e} (no ban without its audit record)")
            for i, *_ in plans:
                out[i] = e
            return out
        voids: list[dict[str, Any]] = []
        for (i, d, ban, change, extra), rec in zip(plans, recs, strict=False):
            ttl = extra["ttl"]
            try:
                point("kernel ban")
                self.m.firewall.ban(ban.ip, ttl)
            except (FirewallError, ValueError, OSError) as e:
                voids.append(self.m.persist.record("void", ban.ip, origin=d.origin, reason=f"the firewall refused: {e}",
                                                 voids=rec["id"]))
                out[i] = e
                continue
            self.notify("ban", ban.ip, dict(origin=d.origin, reason=d.reason, change=change, **extra))
            self.m.auto_latency.append((d.ip, d.event_ts, d.mono, time.monotonic()))
            self.m.io_thread.submit(self._history_io, ban)
            left = "permanently" if ttl is None else f"for {fmt_duration(ttl)}"
            out[i] = ActionResult(True, f"banned {ban.ip} {left}", tuple(change), ban)
        try:
            self.m.persist.write_audit(voids)
        except OSError as e:
            self.m.say_once(f"audit log: cannot note failed auto-bans: {e}")
        return self._closed_after(out)

    def _auto_done_future(self, todo: list[Decision], fut: Future[list[Any]]) -> None:
        try:
            results = fut.result()
        except Exception as e:  # noqa: BLE001 - executor shut down, etc.
            results = [e] * len(todo)
        self._auto_done(todo, results)

    def _auto_done(self, todo: list[Decision], results: list[Any]) -> None:
        for d, r in zip(todo, results, strict=False):
            self.pending.discard(d.ip)
            if "/" in d.ip:
                self.pending_nets.discard(d.ip)
            if isinstance(r, ActionResult):
                if r.ban is not None:
                    self._after_ban(r)
                else:  # dry run: say what would have been done, exactly
                    self.m.store.note(f"{r.message} ({d.reason}): {'; '.join(r.change)}")
                    for cb in self.m.on_dry_run:
                        cb(r)
            else:
                if d.origin == "auto":
                    self.m.autoban.cancel(d.ip)
                self.m.store.note(f"{d.origin}-ban of {d.ip} failed: {r}")

    def _prev_of(self, ip: str, allow_net: bool) -> Ban | None:
        try:
            return self.m.store.bans.get(str(parse_target(ip, allow_net=allow_net)))
        except ValueError:
            return None

    def _rollback(self, r: ActionResult, prev: Ban | None, e: OSError) -> StateDirError:
        """bans.json could not be written after the kernel changed: put the kernel back as it
        was (and say so in the audit log), so the kernel and the state never disagree."""
        target = r.ban.ip if r.ban is not None else ""
        try:
            if prev is None:
                self.m.firewall.unban(target)
                self.m.store.remove_ban(target)
            else:
                now = self.m.clock()
                self.m.firewall.ban(prev.ip, None if prev.expires is None else max(1.0, prev.expires - now))
                self.m.store.set_ban(prev)
            undone = "the kernel change was undone"
        except (FirewallError, ValueError) as err:
            undone = f"undoing the kernel change failed too ({err}): the kernel has it, bans.json not"
        recs = [x for x in self.m.persist.read_audit() if x.get("target") == target] if self.m.persist else []
        if recs:
            self.void(recs[-1], f"rolled back: {e}")
        self.saved = dict(self.m.store.bans)
        return StateDirError(e.errno, f"{e}; {undone}")

    def _recent_successes(self) -> dict[str, float]:
        now = self.m.clock()
        return {ip: t for ip, t in self.m.autoban.successes.items()
                if self.m.autoban.recent_success(ip, now) is not None}

    def _undo_target(self, include_auto: bool) -> dict[str, Any] | None:
        recs = self.m.persist.read_audit() if self.m.persist is not None else list(self.log)
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
            now = self.m.clock()
            if exp is not None and exp <= now:
                if not self.m.dry_run:
                    self.audit("undo", target, origin="undo", reason=f"{why}: that ban would have expired "
                                f"already; nothing to restore", undoes=rid)
                return "none", ActionResult(True, f"nothing to undo: the ban of {target} would have expired")
            ttl = None if exp is None else exp - now
            r = self._ban_fw(target, ttl, prev.get("reason") or why, "undo", "/" in target,
                             {"undoes": rid})
            if r.ban is not None and self.m.persist is not None:
                # mark the undo on the ban's audit record's twin: a separate link record
                self.audit("undo", target, origin="undo", reason=why, undoes=rid)
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
        elif kind == "limit" and not self.m.dry_run:
            lim = rec["prev_limit"]
            self.m.store.set_limit(PortLimit(int(lim["port"]), lim["mode"], Rate.parse(lim["rate"]),
                                           int(lim["burst"])))
        what = f"undid {rec['action']} {target}: {r.message}"
        return ActionResult(r.ok, what if not self.m.dry_run else r.message, r.change, r.ban)


def _closed_text(n: int) -> str:
    return f"; closed {n} open connection{'' if n == 1 else 's'}" if n else ""
