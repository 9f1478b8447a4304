"""The CrowdSec bridge: push popwatch's bans to the LAPI, pull the fleet's decisions into the
store (and, with ``apply``, into this host's ban set); its Prometheus metric families."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..config import CrowdSecConfig
from ..model import SourceHealth
from ..policy import Refused
from .client import Lapi, LapiError, go_duration, lapi_time, parse_go_duration, scope_of

if TYPE_CHECKING:
    from ..monitor import Monitor

#: ban origins never pushed: they came from the fleet, or were pushed when first made
NO_PUSH = frozenset({"crowdsec", "kernel", "reconcile", "restore"})
#: unbans by these origins delete the decision on the LAPI (a person changed their mind)
UNBAN_PUSH = frozenset({"key", "cli", "undo"})
#: what a permanent local ban becomes on the LAPI (CrowdSec decisions always have a duration)
PERMANENT = 365 * 86400.0
OUTBOX_MAX = 10_000
#: seconds the bridge may spend sending what is queued when popwatch stops
FLUSH_TIMEOUT = 3.0
BACKOFF_MIN, BACKOFF_MAX = 1.0, 60.0
PUSH_NAME, PULL_NAME = "crowdsec push", "crowdsec pull"

@dataclass(frozen=True, slots=True)
class FleetDecision:
    value: str
    scope: str
    origin: str
    scenario: str
    expires: float
    id: int

    @property
    def label(self) -> str:
        """``popwatch/auto`` for popwatch's own pushes, else the origin (cscli, crowdsec, CAPI)."""
        return self.scenario if self.scenario.startswith("popwatch/") else self.origin


# ----------------------------------------------------------------------------- bridge

class CrowdSecBridge:
    """Push local bans to the LAPI, pull the fleet's decisions into the store."""

    def __init__(self, cfg: CrowdSecConfig, monitor: Monitor, *, lapi: Lapi | None = None,
                 hostname: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.monitor = monitor
        self.store = monitor.store
        self.lapi = lapi or Lapi(cfg.url, timeout=cfg.timeout)
        self.host = hostname or socket.gethostname()
        self.clock = clock
        self.outbox: deque[tuple[str, str, float | None, str, str]] = deque()
        self.dropped = 0
        self.pushed = 0
        self.push_errors = 0
        self.pull_errors = 0
        self.push_ok: bool | None = None
        self.pull_ok: bool | None = None
        #: active ban decisions by address/CIDR (the longest one when there are several)
        self.decisions: dict[str, FleetDecision] = {}
        self._by_id: dict[int, FleetDecision] = {}
        self.in_kernel: dict[str, bool] = {}
        #: fleet addresses ``apply`` will not ban here (protected): address -> why
        self.not_applied: dict[str, str] = {}
        #: fleet addresses whose ban failed for a reason that may pass (retried every pull)
        self.apply_errors: dict[str, str] = {}
        self._token: tuple[str, float] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._applied: set[str] = set()
        #: bans the push side knows of (queued, or there when popwatch started): see scan_store
        self.seen: dict[str, float] = dict.fromkeys(self.store.bans, time.monotonic())
        #: addresses a person unbanned here: not applied again while their decision lasts
        self.unbanned_here: set[str] = set()

    # -------------------------------------------------------------- wiring
    def attach(self) -> None:
        """Hook into the Monitor: actions feed the push queue; the bridge's tasks run while
        ``monitor.run()`` runs (on its loop, TUI or headless)."""
        self.monitor.on_action.append(self.on_action)
        inner = self.monitor.run

        async def run_with_bridge() -> None:
            task = asyncio.create_task(self.run(), name="crowdsec")
            try:
                await inner()
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                await self.flush(FLUSH_TIMEOUT)
        self.monitor.run = run_with_bridge  # type: ignore[method-assign]  # the bridge wraps the run loop it belongs to
        if self.cfg.push:
            self._health(PUSH_NAME, "waiting", f"{self.cfg.url} (not yet contacted)")
        if self.cfg.pull:
            self._health(PULL_NAME, "waiting", f"{self.cfg.url} (not yet contacted)")

    def on_action(self, action: str, target: str, info: dict[str, Any]) -> None:
        """Monitor.on_action (firewall thread or loop): queue, never block."""
        if info.get("ok", True) is False:
            return
        origin = str(info.get("origin") or "")
        if not self.cfg.push:
            if action == "unban" and origin in UNBAN_PUSH:
                self.unbanned_here.add(target)
            return
        if action == "ban" and origin not in NO_PUSH:
            self._queue(("ban", target, info.get("ttl"), str(info.get("reason") or ""), origin))
        elif action == "unban" and origin in UNBAN_PUSH:
            self.unbanned_here.add(target)
            if self.cfg.push_unbans:
                self._queue(("unban", target, None, "", origin))

    def _queue(self, item: tuple[str, str, float | None, str, str]) -> None:
        if len(self.outbox) >= OUTBOX_MAX:
            with contextlib.suppress(IndexError):
                self.outbox.popleft()
                self.dropped += 1
        self.outbox.append(item)
        if item[0] == "ban":
            self.seen[item[1]] = time.monotonic()
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # loop closed: the queue waits for the next run
                loop.call_soon_threadsafe(wake.set)

    def _health(self, name: str, state: str, detail: str) -> None:
        self.store.set_source(SourceHealth(name, state, detail))

    def _transition(self, which: str, ok: bool, message: str) -> None:
        """Note a change of push/pull state once (not every retry)."""
        attr = f"{which}_ok"
        if getattr(self, attr) != ok:
            setattr(self, attr, ok)
            self.store.note(message)

    # -------------------------------------------------------------- tasks
    async def run(self) -> None:
        """Push and pull until cancelled; never raises otherwise."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if self.outbox:
            self._wake.set()
        jobs = []
        if self.cfg.push:
            jobs.append(self._push_loop())
        if self.cfg.pull:
            jobs.append(self._pull_loop())
        try:
            await asyncio.gather(*jobs)
        finally:
            self._loop = None

    async def _push_loop(self) -> None:
        assert self._wake is not None
        backoff = BACKOFF_MIN
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 5.0)
            self._wake.clear()
            self.scan_store()
            while self.outbox:
                batch = [self.outbox.popleft() for _ in range(min(100, len(self.outbox)))]
                try:
                    n = await asyncio.to_thread(self._push_sync, batch)
                except LapiError as e:
                    self.outbox.extendleft(reversed(batch))
                    while len(self.outbox) > OUTBOX_MAX:
                        self.outbox.pop()
                        self.dropped += 1
                    self.push_errors += 1
                    state = "denied" if e.auth else "error"
                    if e.status == 401 and "not validated" in str(e):
                        state = "waiting"
                    self._health(PUSH_NAME, state, f"{e}; {len(self.outbox)} queued, retry in {backoff:.0f}s")
                    self._transition("push", False, f"CrowdSec push failing: {e} (local bans unaffected)")
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                except Exception as e:  # noqa: BLE001 - a bug here must not stop popwatch
                    self._health(PUSH_NAME, "error", f"{e.__class__.__name__}: {e}")
                    await asyncio.sleep(BACKOFF_MAX)
                    continue
                backoff = BACKOFF_MIN
                self.pushed += n
                self._health(PUSH_NAME, "following", f"{self.cfg.url}: {self.pushed} bans pushed")
                self._transition("push", True, f"CrowdSec push: connected to {self.cfg.url} as "
                                               f"{self.cfg.machine_id}")

    def scan_store(self) -> None:
        """Queue bans that reached the store without an action here: a ``popwatch ban`` from the
        command line while ``watch`` runs is adopted from the kernel with its saved record
        (origin cli). Bans present at start-up are not sent (they were when they were made)."""
        if not self.cfg.push:
            return
        bans, seen, now = self.store.bans, self.seen, time.monotonic()
        for ip in [ip for ip in list(bans) if ip not in seen]:
            b = bans[ip]
            seen[ip] = now
            if b.origin not in NO_PUSH:
                left = None if b.expires is None else max(1.0, b.expires - self.clock())
                self._queue(("ban", ip, left, b.reason, b.origin))
        # forget lifted bans (a later ban of the same address is new), but not one that is
        # still on its way from the firewall thread to the store
        # (list(...) copies in one step: _queue adds from the firewall thread)
        for ip, t in list(seen.items()):
            if ip not in bans and now - t > 30.0:
                seen.pop(ip, None)

    async def flush(self, timeout: float) -> None:
        """Best effort on the way out: send what is queued within ``timeout`` seconds."""
        if not self.cfg.push or not self.outbox:
            return
        batch = list(self.outbox)[:100]
        try:
            await asyncio.wait_for(asyncio.to_thread(self._push_sync, batch), timeout)
        except (TimeoutError, LapiError, asyncio.CancelledError, RuntimeError):
            return
        for _ in batch:
            with contextlib.suppress(IndexError):
                self.outbox.popleft()
        self.pushed += sum(1 for b in batch if b[0] == "ban")

    def _jwt(self, renew: bool = False) -> str:
        c = self.cfg
        assert c.machine_id and c.password
        if not renew and self._token is not None and self._token[1] - 60 > time.time():
            return self._token[0]
        scen = ["popwatch/key", "popwatch/auto", "popwatch/cli", "popwatch/undo"]
        try:
            try:
                self._token = self.lapi.login(c.machine_id, c.password, scen)
            except LapiError as e:
                if not (c.register and e.status == 401 and "not found" in str(e)):
                    raise
                self.lapi.register(c.machine_id, c.password)
                self._token = self.lapi.login(c.machine_id, c.password, scen)
        except LapiError as e:
            if e.status == 401 and "not validated" in str(e):
                raise LapiError(f"machine {c.machine_id!r} is registered but not validated: run "
                                f"`cscli machines validate {c.machine_id}` on the LAPI host", 401) from None
            raise
        return self._token[0]

    def _push_sync(self, batch: list[tuple[str, str, float | None, str, str]]) -> int:
        """Worker thread: send bans as alerts, unbans as decision deletions, in order (a ban
        lifted and made again in one batch ends banned). Returns how many bans went out."""
        runs: list[list[tuple[str, str, float | None, str, str]]] = []
        for item in batch:
            if runs and runs[-1][0][0] == item[0] == "ban":
                runs[-1].append(item)
            else:
                runs.append([item])
        token = self._jwt()
        for run in runs:
            for attempt in (0, 1):
                try:
                    if run[0][0] == "ban":
                        self.lapi.post_alerts(token, [self.alert(self.wire(t), ttl, reason, origin)
                                                      for _, t, ttl, reason, origin in run])
                    else:
                        self.lapi.delete_decisions(token, *scope_of(self.wire(run[0][1])))
                    break
                except LapiError as e:
                    if e.status != 401 or attempt == 1:  # 401: the JWT expired; log in again once
                        raise
                    token = self._jwt(renew=True)
        return sum(1 for b in batch if b[0] == "ban")

    def wire(self, target: str) -> str:
        """What a local ban covers, as the fleet should ban it: an IPv6 address is banned here
        as its /64 (``ipv6_prefix``), so that is what is sent."""
        try:
            return str(self.monitor.actions.ban_entry(target, "/" in target))
        except Exception:  # noqa: BLE001 - keep the address as it is
            return target

    def alert(self, target: str, ttl: float | None, reason: str, origin: str) -> dict[str, Any]:
        """One alert with one ban decision, as the LAPI (1.4+) takes it."""
        scope, value = scope_of(target)
        now = lapi_time(self.clock())
        scenario = f"popwatch/{origin or 'cli'}"
        why = (reason or f"{origin} ban").replace("\n", " ")[:200]
        source: dict[str, Any] = {"scope": scope, "value": value}
        if scope == "Ip":
            source["ip"] = value
        else:
            source["range"] = value
        return {
            "scenario": scenario, "scenario_hash": "", "scenario_version": __version__,
            "message": f"popwatch on {self.host}: {why}",
            "events_count": 1, "start_at": now, "stop_at": now, "capacity": 0, "leakspeed": "0",
            "simulated": False, "remediation": True,
            "events": [{"timestamp": now, "meta": [{"key": "reason", "value": why},
                                                   {"key": "popwatch_host", "value": self.host},
                                                   {"key": "popwatch_origin", "value": origin}]}],
            "source": source,
            "decisions": [{"duration": go_duration(PERMANENT if ttl is None else float(ttl)),
                           "origin": "crowdsec", "scenario": scenario, "scope": scope, "type": "ban",
                           "value": value}],
        }

    async def _pull_loop(self) -> None:
        c = self.cfg
        assert c.bouncer_key
        startup = True
        backoff = BACKOFF_MIN
        while True:
            try:
                new, deleted = await asyncio.to_thread(self.lapi.stream, c.bouncer_key, startup)
            except LapiError as e:
                self.pull_errors += 1
                self._health(PULL_NAME, "denied" if e.auth else "error", f"{e}; retry in {backoff:.0f}s")
                self._transition("pull", False, f"CrowdSec pull failing: {e}")
                startup = True  # resynchronise from scratch once it answers again
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            except Exception as e:  # noqa: BLE001 - anything else from the LAPI is shown and retried
                self._health(PULL_NAME, "error", f"{e.__class__.__name__}: {e}")
                await asyncio.sleep(BACKOFF_MAX)
                continue
            backoff = BACKOFF_MIN
            self.merge(new, deleted, startup)
            startup = False
            try:
                await self._verify_and_apply()
            except Exception as e:  # noqa: BLE001 - keep pulling
                self.store.note(f"CrowdSec: checking decisions against the kernel failed: {e}")
            self.publish()
            self._health(PULL_NAME, "following", f"{c.url}: {len(self.decisions)} fleet bans, "
                         f"{sum(self.in_kernel.values())} in this host's set")
            self._transition("pull", True, f"CrowdSec pull: following {c.url} decisions")
            await asyncio.sleep(c.pull_interval)

    def merge(self, new: list[dict[str, Any]], deleted: list[dict[str, Any]], startup: bool) -> None:
        """Apply one stream answer to :attr:`decisions` (ban decisions on Ip/Range scopes)."""
        now = self.clock()
        by_id = self._by_id
        if startup:
            by_id.clear()
        for d in deleted:
            i = d.get("id")
            if isinstance(i, int):
                by_id.pop(i, None)
            else:  # no id: every decision on that value
                for k in [k for k, fd in by_id.items() if fd.value == str(d.get("value", ""))]:
                    del by_id[k]
        for d in new:
            if str(d.get("type", "")).lower() != "ban":
                continue
            scope = str(d.get("scope", ""))
            try:
                if scope.lower() == "ip":
                    value, scope = str(ipaddress.ip_address(str(d.get("value")))), "Ip"
                elif scope.lower() == "range":
                    value, scope = str(ipaddress.ip_network(str(d.get("value")), strict=False)), "Range"
                else:
                    continue
                left = parse_go_duration(str(d.get("duration", "0s")))
            except ValueError:
                continue
            if left <= 0:
                continue
            i = d.get("id")
            if not isinstance(i, int):
                i = -1 - len(by_id)  # no id (not seen from a real LAPI): keep it apart
            by_id[i] = FleetDecision(value, scope, str(d.get("origin", "")), str(d.get("scenario", "")),
                                     now + left, i)
        for k in [k for k, fd in by_id.items() if fd.expires <= now]:
            del by_id[k]
        out: dict[str, FleetDecision] = {}
        for fd in by_id.values():  # one per address: the one that lasts longest
            cur = out.get(fd.value)
            if cur is None or fd.expires > cur.expires:
                out[fd.value] = fd
        self.decisions = out

    async def _verify_and_apply(self) -> None:
        mon = self.monitor
        if self.cfg.apply:
            await self._apply()
        kernel = await mon.fw_thread.run(mon.firewall.bans) if mon.firewall.can_write else {}
        out: dict[str, bool] = {}
        for v, fd in self.decisions.items():
            e = mon.actions.ban_entry(v, fd.scope == "Range")
            out[v] = v in kernel or e in kernel
        self.in_kernel = out

    async def _apply(self) -> None:
        """``apply = true``: ban fleet addresses in popwatch's own set; lift what we applied."""
        mon, now = self.monitor, self.clock()
        for v, fd in list(self.decisions.items()):
            if (fd.scope != "Ip" or v in self.store.bans or v in self.not_applied or v in self.unbanned_here
                    or fd.origin not in self.cfg.apply_origins):
                continue
            try:
                r = await mon.actions.ban(v, ttl=max(1.0, fd.expires - now), reason=f"fleet: {fd.scenario}"[:200],
                                   origin="crowdsec")
                if r.ban is not None:
                    self._applied.add(v)
                    self.apply_errors.pop(v, None)
            except (Refused, ValueError) as e:  # protected, or not an address we can ban: for good
                self.not_applied[v] = str(e)
                self.store.note(f"CrowdSec decision on {v} not applied here: {e}")
            except Exception as e:  # noqa: BLE001 - FirewallError, OSError: try again next pull
                if v not in self.apply_errors:
                    self.store.note(f"CrowdSec decision on {v}: banning it here failed ({e}); retrying")
                self.apply_errors[v] = str(e)
        for v in list(self._applied):
            if v not in self.decisions:
                self._applied.discard(v)
                b = self.store.bans.get(v)
                if b is not None and b.origin == "crowdsec":
                    with contextlib.suppress(Exception):
                        await mon.actions.unban(v, origin="crowdsec")
        for v in [v for v in self.not_applied if v not in self.decisions]:
            del self.not_applied[v]
        self.unbanned_here.intersection_update(self.decisions)
        for v in [v for v in self.apply_errors if v not in self.decisions]:
            del self.apply_errors[v]

    def publish(self) -> None:
        """Give the rows their "banned fleet-wide (label)" (on the loop)."""
        out = {}
        for v, fd in self.decisions.items():
            lab = fd.label
            if not self.in_kernel.get(v, False):
                lab += "; not in this host's set"
            out[v] = lab
        self.store.set_fleet_bans(out)

    # -------------------------------------------------------------- metrics
    def metric_families(self) -> Iterator[Any]:
        """For :class:`popwatch.metrics.PopwatchCollector.extra`."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily("popwatch_crowdsec_up", "1 when the last LAPI call of this direction "
                               "worked", labels=["direction"])
        if self.cfg.push:
            up.add_metric(["push"], 1 if self.push_ok else 0)
        if self.cfg.pull:
            up.add_metric(["pull"], 1 if self.pull_ok else 0)
        yield up
        yield CounterMetricFamily("popwatch_crowdsec_pushed_bans", "Bans sent to the LAPI", value=self.pushed)
        yield GaugeMetricFamily("popwatch_crowdsec_push_queue", "Bans waiting to be sent", value=len(self.outbox))
        yield CounterMetricFamily("popwatch_crowdsec_push_dropped", "Queued bans dropped (queue full)",
                                  value=self.dropped)
        g = GaugeMetricFamily("popwatch_crowdsec_fleet_bans", "Active fleet ban decisions, by whether this "
                              "host's kernel set has them", labels=["in_kernel"])
        ink = dict(self.in_kernel)
        n_in = sum(1 for v in list(self.decisions) if ink.get(v))
        g.add_metric(["true"], n_in)
        g.add_metric(["false"], len(self.decisions) - n_in)
        yield g
