"""Prometheus metrics: ``watch --metrics 127.0.0.1:9177`` and ``--metrics-textfile PATH``.

Nothing here runs per event beyond O(1) dictionary increments: a custom collector reads the
store (and a few counters kept by callbacks) at scrape time. The store is written on the
Monitor's loop while scrapes run on the HTTP server's thread; the collector only takes C-level
copies of the store's dicts (``dict(d)``, ``list(d.values())``), which CPython does under the
GIL without running Python code, so a scrape never sees a dict change size under it.

Metric names (all ``popwatch_``): auth failures by service and kind, events and events/s,
distinct attacker addresses, active bans (by origin), bans/unbans by origin, per-port
passed/dropped packets and the current rule, source health, firewall operation latency.
Addresses are never labels (unbounded cardinality, and they are in the event stream anyway).
"""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server, write_to_textfile
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from .firewall.base import TIMED_OPS
from .model import FAILURE_KINDS, AuthEvent

if TYPE_CHECKING:
    from .monitor import Monitor

DEFAULT_PORT = 9177  # also in commands/watch.py (METRICS_PORT), kept there to keep the CLI light
#: source states that mean "reading" (others: waiting, denied, error, stopped)
HEALTHY = frozenset({"following", "journal", "replay"})
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_FAILS = frozenset(str(k) for k in FAILURE_KINDS)


class MetricsError(ValueError):
    """A bad ``--metrics`` address; the message is one line for the admin."""


def parse_listen(spec: str, *, allow_remote: bool = False) -> tuple[str, int]:
    """``9177``, ``127.0.0.1:9177``, ``[::1]:9177``, ``localhost:9177`` -> (host, port).

    Only loopback unless ``allow_remote`` (``--metrics-allow-remote``): the endpoint has no
    authentication, so exposing it is a decision the admin makes explicitly."""
    s = spec.strip()
    host, port_s = "127.0.0.1", s
    if s.startswith("["):
        end = s.find("]")
        if end < 0 or not s[end + 1:].startswith(":"):
            raise MetricsError(f"bad --metrics {spec!r}: expected [ADDR]:PORT for IPv6")
        host, port_s = s[1:end], s[end + 2:]
    elif ":" in s:
        if s.count(":") > 1:
            raise MetricsError(f"bad --metrics {spec!r}: write IPv6 addresses as [ADDR]:PORT")
        host, port_s = s.rsplit(":", 1)
    try:
        port = int(port_s)
    except ValueError:
        raise MetricsError(f"bad --metrics {spec!r}: port must be a number") from None
    if not 1 <= port <= 65535:
        raise MetricsError(f"bad --metrics {spec!r}: port must be 1-65535")
    if host in ("", "localhost"):
        host = "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise MetricsError(f"bad --metrics {spec!r}: {host!r} is not an IP address") from None
    if not addr.is_loopback and not allow_remote:
        raise MetricsError(f"refusing to serve metrics on {host} (not loopback): the endpoint has no "
                           f"authentication; add --metrics-allow-remote if that is what you want")
    return host, port


class PopwatchCollector(Collector):
    """Reads the Monitor's store and the bridge's counters at scrape time."""

    def __init__(self, monitor: Monitor, *, mono: Callable[[], float] = time.monotonic) -> None:
        self.monitor = monitor
        self.store = monitor.store
        self.mono = mono
        #: (service, kind) -> failed attempts; (service, kind) -> events
        self.failures: dict[tuple[str, str], int] = {}
        self.events: dict[tuple[str, str], int] = {}
        #: (action, origin) -> count, from Monitor.on_action
        self.actions: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._eps: deque[tuple[float, int]] = deque(maxlen=64)
        #: extra gauges from other parts (the CrowdSec bridge): name -> (help, fn -> {labels: value})
        self.extra: list[Callable[[], Iterable[Metric]]] = []

    # -------------------------------------------------------- monitor callbacks
    def on_events(self, events: list[AuthEvent]) -> None:
        """Monitor.on_events: one dict increment per event (the loop's thread)."""
        f, e, fails = self.failures, self.events, _FAILS
        for ev in events:
            k = (str(ev.service), str(ev.kind))
            e[k] = e.get(k, 0) + 1
            if ev.attempts and k[1] in fails:
                f[k] = f.get(k, 0) + ev.attempts

    def on_action(self, action: str, target: str, info: dict[str, Any]) -> None:
        """Monitor.on_action: count bans, unbans, limit changes, expiries by origin (any thread)."""
        if info.get("ok", True) is False:
            action = action + "_refused"
        k = (action, str(info.get("origin") or "unknown"))
        with self._lock:
            self.actions[k] = self.actions.get(k, 0) + 1

    # ------------------------------------------------------------------ scrape
    def _events_per_s(self, total: int) -> float:
        """Events per second over the last ~10-60 s of scrapes (0 until two scrapes)."""
        now = self.mono()
        q = self._eps
        q.append((now, total))
        while len(q) > 2 and now - q[1][0] >= 10.0:
            q.popleft()
        while len(q) > 2 and now - q[0][0] > 60.0:
            q.popleft()
        t0, n0 = q[0]
        return (total - n0) / (now - t0) if now - t0 > 0.05 else 0.0

    def collect(self) -> Iterator[Metric]:
        st = self.store
        now = st.clock()
        c = CounterMetricFamily("popwatch_auth_failures", "Failed authentication attempts by service and kind",
                                labels=["service", "kind"])
        for (svc, kind), n in sorted(dict(self.failures).items()):
            c.add_metric([svc, kind], n)
        yield c
        c = CounterMetricFamily("popwatch_auth_events", "Parsed auth events (failures, logins, probes) "
                                "by service and kind", labels=["service", "kind"])
        for (svc, kind), n in sorted(dict(self.events).items()):
            c.add_metric([svc, kind], n)
        yield c
        total = st.events_total
        yield CounterMetricFamily("popwatch_events", "Auth events taken into the store", value=total)
        yield CounterMetricFamily("popwatch_failures", "Failed attempts counted (all services)",
                                  value=st.failures_total)
        yield CounterMetricFamily("popwatch_lines", "Log lines read", value=self.monitor.lines_in)
        yield GaugeMetricFamily("popwatch_events_per_second", "Auth events per second (recent average)",
                                value=round(self._events_per_s(total), 6))
        yield GaugeMetricFamily("popwatch_attackers", "Distinct addresses with failures or probes",
                                value=st.n_attackers)
        bans = list(st.bans.values())
        g = GaugeMetricFamily("popwatch_bans_active", "Active bans by origin", labels=["origin"])
        by_origin: dict[str, int] = {o: 0 for o in ("key", "auto", "cli")}
        for b in bans:
            if b.expires is None or b.expires > now:
                by_origin[b.origin] = by_origin.get(b.origin, 0) + 1
        for o, n in sorted(by_origin.items()):
            g.add_metric([o], n)
        yield g
        with self._lock:
            actions = dict(self.actions)
        for action, name, help_ in (
                ("ban", "bans", "Bans made, by origin (key, auto, cli, undo, crowdsec)"),
                ("unban", "unbans", "Bans lifted, by origin"),
                ("ban_refused", "bans_refused", "Bans refused by policy (protected address), by origin"),
                ("limit", "limit_changes", "Port rule changes, by origin"),
                ("expire", "ban_expiries", "Bans that timed out while popwatch ran")):
            c = CounterMetricFamily(f"popwatch_{name}", help_, labels=["origin"])
            seen = {o: n for (a, o), n in actions.items() if a == action}
            if action in ("ban", "unban"):
                for o in ("key", "auto", "cli"):
                    seen.setdefault(o, 0)
            for o, n in sorted(seen.items()):
                c.add_metric([o], n)
            yield c
        yield from self._ports()
        yield from self._sources()
        yield from self._campaigns(now)
        for fn in list(self.extra):
            yield from fn()

    def _campaigns(self, now: float) -> Iterator[Metric]:
        """Campaigns (popwatch.campaigns): active ones by kind, and start/update/end/alert events."""
        camp = self.monitor.campaigns
        if camp is None:
            return
        g = GaugeMetricFamily("popwatch_campaigns_active", "Campaigns under way, by kind (user: one user name "
                              "from many addresses; slow: one address over a long window)", labels=["kind"])
        by: dict[str, int] = {"user": 0, "slow": 0}
        for r in camp.rows(now, k=100000, ended=False):
            by[r.kind] = by.get(r.kind, 0) + 1
        for k, n in sorted(by.items()):
            g.add_metric([k], n)
        yield g
        c = CounterMetricFamily("popwatch_campaign_events", "Campaign starts, updates, ends and alerts "
                                "(a successful login from a source, or from a new address for a target)",
                                labels=["event"])
        counts = dict(camp.counts)
        for e in ("start", "update", "end", "alert"):
            c.add_metric([e], counts.get(e, 0))
        yield c

    def _ports(self) -> Iterator[Metric]:
        st = self.store
        limits = dict(st.limits)
        totals = st.port_totals()
        passed = CounterMetricFamily("popwatch_port_passed_packets", "New connections passed by popwatch's "
                                     "rule (cumulative kernel counter)", labels=["port"])
        dropped = CounterMetricFamily("popwatch_port_dropped_packets", "New connections dropped by the "
                                      "port's rate limit (cumulative kernel counter)", labels=["port"])
        rate = GaugeMetricFamily("popwatch_port_limit_per_second", "The port's rate limit in tokens per "
                                 "second (0: count only)", labels=["port", "mode"])
        burst = GaugeMetricFamily("popwatch_port_limit_burst", "The port's burst (0: count only)",
                                  labels=["port", "mode"])
        for port in sorted(set(limits) | set(totals)):
            p = str(port)
            t = totals.get(port)
            if t is not None:
                passed.add_metric([p], t.passed)
                dropped.add_metric([p], t.dropped)
            lim = limits.get(port)
            if lim is not None:
                counting = lim.mode == "count"
                rate.add_metric([p, lim.mode], 0.0 if counting else lim.rate.per_second)
                burst.add_metric([p, lim.mode], 0 if counting else lim.burst)
        yield passed
        yield dropped
        yield rate
        yield burst
        last = st.last_sample
        if last is not None:
            yield CounterMetricFamily("popwatch_banned_dropped_packets", "Packets dropped by the ban match",
                                      value=last.banned_dropped)

    def _sources(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("popwatch_source_up", "1 when the log source is being read, else 0",
                               labels=["source"])
        state = GaugeMetricFamily("popwatch_source_state", "The source's state (1 for the current one)",
                                  labels=["source", "state"])
        lines = CounterMetricFamily("popwatch_source_lines", "Lines read from the source", labels=["source"])
        for h in list(self.store.sources.values()):
            up.add_metric([h.name], 1 if h.state in HEALTHY else 0)
            state.add_metric([h.name, h.state], 1)
            lines.add_metric([h.name], h.lines)
        yield up
        yield state
        yield lines


class Metrics:
    """The exporter for one Monitor: an HTTP endpoint and/or a node_exporter textfile."""

    def __init__(self, monitor: Monitor, *, process: bool = True) -> None:
        self.monitor = monitor
        self.collector = PopwatchCollector(monitor)
        #: what the textfile gets: popwatch's own metrics only (node_exporter has process_*)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.latency = Histogram("popwatch_firewall_op_seconds", "Firewall operation latency by operation",
                                 ["op"], registry=self.registry, buckets=LATENCY_BUCKETS)
        for op in TIMED_OPS:
            self.latency.labels(op)
        #: what the HTTP endpoint serves: the above plus this process's CPU/memory
        self.http_registry = CollectorRegistry(auto_describe=False)
        self.http_registry.register(_Union(self.registry))
        if process:
            ProcessCollector(registry=self.http_registry)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._textfile: str | None = None
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self.textfile_errors = 0
        monitor.on_events.append(self.collector.on_events)
        monitor.on_action.append(self.collector.on_action)
        monitor.firewall.add_timer(self._observe)

    def _observe(self, op: str, seconds: float) -> None:
        self.latency.labels(op).observe(seconds)

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) actually bound (port 0 picks a free one), or None."""
        if self._server is None:
            return None
        return self._server.server_address[0], self._server.server_address[1]

    def serve(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> tuple[str, int]:
        """Start the HTTP endpoint on a daemon thread. Raises OSError (address in use, ...)."""
        self._server, self._thread = start_http_server(port, host, registry=self.http_registry)
        return self.address  # type: ignore[return-value]  # address is set once serve() bound the server

    def write_textfile(self, path: str | None = None) -> None:
        """Write the metrics atomically (temp file in the same directory, then rename)."""
        p = path or self._textfile
        if p is None:
            raise ValueError("no textfile path")
        write_to_textfile(p, self.registry)

    def start_textfile(self, path: str, interval: float = 10.0) -> None:
        """Rewrite ``path`` every ``interval`` seconds (and once now, so errors show at start)."""
        self._textfile = os.fspath(path)
        self.write_textfile()

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.write_textfile()
                except OSError as e:
                    self.textfile_errors += 1
                    if self.textfile_errors == 1:
                        self.monitor.store.note(f"metrics textfile {path}: {e}")
        self._writer = threading.Thread(target=loop, name="popwatch-metrics-textfile", daemon=True)
        self._writer.start()

    def close(self) -> None:
        """Stop the endpoint and the writer; write the textfile one last time."""
        self._stop.set()
        if self._writer is not None:
            self._writer.join(timeout=5)
            self._writer = None
        if self._textfile is not None:
            try:
                self.write_textfile()
            except OSError:
                pass
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class _Union(Collector):
    """Serve another registry's metrics from this one."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()


# ----------------------------------------------------------------------- command line

def start_exporters(monitor: Monitor, args: Any, cfg: Any = None) -> Callable[[], None]:
    """Start what the options and config ask for: the metrics endpoint/textfile and the CrowdSec
    bridge (``[crowdsec]``). Returns the function that stops them. Raises
    :class:`popwatch.cli.UsageError` for a bad address or one that cannot be bound."""
    from .cli import UsageError

    listen = getattr(args, "metrics", None)
    textfile = getattr(args, "metrics_textfile", None)
    try:
        where = parse_listen(listen, allow_remote=bool(getattr(args, "metrics_allow_remote", False))) \
            if listen else None
    except MetricsError as e:
        raise UsageError(str(e)) from None
    metrics: Metrics | None = None
    if where is not None or textfile:
        metrics = Metrics(monitor)
    bridge = None
    cs = getattr(cfg, "crowdsec", None) if cfg is not None else None
    if cs is not None:
        from .crowdsec import CrowdSecBridge

        bridge = CrowdSecBridge(cs, monitor)
        bridge.attach()
        if metrics is not None:
            metrics.collector.extra.append(bridge.metric_families)
    if metrics is not None:
        what = ""
        try:
            if where is not None:
                what = f"{where[0]}:{where[1]}"
                metrics.serve(*where)
            if textfile:
                what = textfile
                metrics.start_textfile(textfile)
        except OSError as e:
            metrics.close()
            raise UsageError(f"metrics: cannot use {what}: {e.strerror or e}") from None

    def stop() -> None:
        if metrics is not None:
            metrics.close()
    return stop
