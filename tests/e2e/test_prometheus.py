"""A real Prometheus server (Debian's ``prometheus``) scrapes popwatch on loopback and its query
API returns the series and values popwatch exported.

Three targets: a Monitor in this process fed with real log lines and actions (exact values),
``popwatch demo --no-tui --metrics`` as a subprocess (the command-line wiring), and Debian's
``prometheus-node-exporter`` serving the in-process Monitor's ``--metrics-textfile`` output. Prometheus gets
its own config, storage directory and a free loopback port; it is stopped by PID and its
directory removed also when the test fails.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

from popwatch.config import PolicyConfig
from popwatch.model import PortLimit, Rate
from popwatch.firewall.sim import SimFirewall
from popwatch.metrics import Metrics
from popwatch.model import CounterSample, RawLine, SourceHealth
from popwatch.monitor import Monitor
from popwatch.parse import Parser
from popwatch.policy import Protector
from popwatch.store import StateStore
from popwatch.actions import run_sync
from tests.conftest import need_tools

ROOT = Path(__file__).resolve().parents[2]

LINES = [
    "2026-11-28T05:33:06.157468+00:00 mx dovecot: imap-login: Disconnected: Connection closed (auth failed, "
    "3 attempts in 18 secs): user=<test>, method=LOGIN, rip=203.0.113.11, lip=192.0.2.1, session=<4WTJgU9h1tDLAHEL>",
    "2026-11-28T05:32:47.714838+00:00 mx sshd[27160]: Invalid user test from 203.0.113.12 port 43000",
    "2026-11-28T05:32:47.715032+00:00 mx sshd[27158]: Invalid user admin from 203.0.113.12 port 42992",
    "2026-11-28T05:33:05.048197+00:00 mx dovecot: pop3-login: Disconnected: Aborted login by logging out (auth "
    "failed, 4 attempts in 18 secs): user=<root>, method=PLAIN, rip=2001:db8::20, lip=2001:db8::1, "
    "session=<dLzBgU9h8JwgAQ24AAAAAAAAAAAAAAAg>",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 20.0, every: float = 0.25) -> Any:
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        try:
            last = fn()
        except OSError as e:
            last = e
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


class Prom:
    """Query API of the Prometheus under test."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def query(self, q: str) -> list[dict[str, Any]]:
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, q: str) -> float | None:
        res = self.query(q)
        if not res:
            return None
        assert len(res) == 1, res
        return float(res[0]["value"][1])

    def wait_value(self, q: str, want: float, timeout: float = 20.0) -> None:
        wait_for(f"{q} == {want}", lambda: self.value(q) == want, timeout)


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.mark.daemons
def test_prometheus_scrapes_popwatch_and_queries_return_the_values() -> None:
    need_tools("prometheus", "prometheus-node-exporter")
    tmp = Path(tempfile.mkdtemp(prefix="pw-prom-"))
    procs: list[subprocess.Popen[Any]] = []
    metrics = None
    try:
        # --- target 1: a Monitor in this process, known input
        sim = SimFirewall(clock=time.time)
        mon = Monitor(store=StateStore(clock=time.time), parser=Parser(now=time.time), firewall=sim,
                      protector=Protector(allow=["192.0.2.0/24"]),
                      policy=PolicyConfig(maxretry=3, findtime=10 ** 9), auto_ban=True)
        mon.start_firewall([PortLimit(110, "global", Rate.parse("1/second"), 2), PortLimit(22)])
        metrics = Metrics(mon)
        p_mon = free_port()
        metrics.serve("127.0.0.1", p_mon)
        mon.ingest([RawLine(t, "/var/log/mail.log", i + 1) for i, t in enumerate(LINES)])
        run_sync(mon.actions.ban("198.51.100.7", ttl=600, reason="test", origin="cli"))
        run_sync(mon.actions.ban("198.51.100.8", ttl=600, reason="test", origin="key"))
        run_sync(mon.actions.unban("198.51.100.8", origin="key"))
        for _ in range(12):
            sim.connect("198.18.0.1", 110)
        mon.store.add_counters(CounterSample(time.monotonic(), sim.counters(), sim.banned_dropped()))
        mon.store.set_source(SourceHealth("/var/log/mail.log", "following", "", 4))
        mon.store.set_source(SourceHealth("/var/log/auth.log", "denied", "permission denied", 0))
        c110 = sim.counters()[110]
        assert c110.dropped > 0
        # the same metrics as a node_exporter textfile, rewritten every 0.5 s
        (tmp / "textfile").mkdir()
        metrics.start_textfile(str(tmp / "textfile" / "popwatch.prom"), interval=0.5)
        p_node = free_port()
        node = subprocess.Popen(["prometheus-node-exporter", "--collector.disable-defaults",
                                 "--collector.textfile", f"--collector.textfile.directory={tmp / 'textfile'}",
                                 f"--web.listen-address=127.0.0.1:{p_node}"], stdout=subprocess.DEVNULL,
                                stderr=(tmp / "node.log").open("w"))
        procs.append(node)

        # --- target 2: the demo from the command line
        p_demo = free_port()
        demo = subprocess.Popen([sys.executable, "-m", "popwatch", "demo", "--no-tui", "--speed", "5",
                                 "--duration", "60", "--metrics", f"127.0.0.1:{p_demo}"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=(tmp / "demo.err").open("w"))
        procs.append(demo)

        # --- Prometheus, 1 s scrapes, its own storage and port
        p_prom = free_port()
        (tmp / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n"
            "scrape_configs:\n"
            f"  - job_name: popwatch\n    static_configs:\n      - targets: ['127.0.0.1:{p_mon}']\n"
            f"  - job_name: demo\n    static_configs:\n      - targets: ['127.0.0.1:{p_demo}']\n"
            f"  - job_name: node\n    static_configs:\n      - targets: ['127.0.0.1:{p_node}']\n")
        prom = subprocess.Popen(["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{p_prom}",
                                 "--log.level=warn"], cwd=tmp, stdout=subprocess.DEVNULL,
                                stderr=(tmp / "prometheus.log").open("w"))
        procs.append(prom)
        q = Prom(p_prom)
        wait_for("prometheus to answer", lambda: prom.poll() is None and q.query("up") is not None, 30)
        wait_for("a scrape of popwatch", lambda: q.value('up{job="popwatch"}') == 1, 20)

        def v(expr: str) -> float | None:
            return q.value(expr)
        j = 'job="popwatch"'
        assert v(f'popwatch_auth_failures_total{{{j},service="imap",kind="auth_failed"}}') == 3
        assert v(f'popwatch_auth_failures_total{{{j},service="pop3",kind="auth_failed"}}') == 4
        assert v(f'popwatch_auth_failures_total{{{j},service="ssh",kind="invalid_user"}}') == 2
        assert v(f'sum(popwatch_auth_failures_total{{{j}}})') == 9
        assert v(f"popwatch_events_total{{{j}}}") == 4
        assert v(f"popwatch_attackers{{{j}}}") == 3
        # maxretry 3: the imap (3) and pop3 (4) addresses were auto-banned, not the ssh one (2)
        assert v(f'popwatch_bans_total{{{j},origin="auto"}}') == 2
        assert v(f'popwatch_bans_total{{{j},origin="cli"}}') == 1
        assert v(f'popwatch_bans_total{{{j},origin="key"}}') == 1
        assert v(f'popwatch_unbans_total{{{j},origin="key"}}') == 1
        assert v(f'sum(popwatch_bans_active{{{j}}})') == 3
        assert v(f'popwatch_port_dropped_packets_total{{{j},port="110"}}') == c110.dropped
        assert v(f'popwatch_port_passed_packets_total{{{j},port="110"}}') == c110.passed
        assert v(f'popwatch_port_limit_per_second{{{j},port="110",mode="global"}}') == 1
        assert v(f'popwatch_port_limit_burst{{{j},port="110"}}') == 2
        assert v(f'popwatch_source_up{{{j},source="/var/log/mail.log"}}') == 1
        assert v(f'popwatch_source_up{{{j},source="/var/log/auth.log"}}') == 0
        assert v(f'popwatch_firewall_op_seconds_count{{{j},op="ban"}}') == 4
        assert v(f'popwatch_firewall_op_seconds_bucket{{{j},op="ban",le="+Inf"}}') == 4
        assert v(f'process_cpu_seconds_total{{{j}}}') is not None

        # live: a change shows up in the next scrapes
        run_sync(mon.actions.set_limit(PortLimit(110, "per-source", Rate.parse("5/second"), 9), origin="key"))
        mon.ingest([RawLine(LINES[1].replace("27160", "27999"), "/var/log/auth.log", 9)])
        q.wait_value(f'popwatch_port_limit_burst{{{j},port="110",mode="per-source"}}', 9)
        q.wait_value(f'popwatch_auth_failures_total{{{j},service="ssh",kind="invalid_user"}}', 3)
        assert v(f'popwatch_limit_changes_total{{{j},origin="key"}}') == 1

        # the demo subprocess is scraped too, and its counters grow between scrapes
        wait_for("a scrape of the demo", lambda: q.value('up{job="demo"}') == 1, 20)
        wait_for("demo events", lambda: (v('popwatch_events_total{job="demo"}') or 0) > 0, 20)
        wait_for("the demo's failure rate", lambda: (v('sum(rate(popwatch_failures_total{job="demo"}[5s]))')
                                                     or 0) > 0, 20)
        assert v('popwatch_source_up{job="demo",source="demo"}') == 1

        # node_exporter serves the textfile: same values, no parse error, follows changes
        wait_for("a scrape of node_exporter", lambda: q.value('up{job="node"}') == 1, 20)
        assert v('node_textfile_scrape_error{job="node"}') == 0
        q.wait_value('popwatch_auth_failures_total{job="node",service="ssh",kind="invalid_user"}', 3)
        # the third ssh failure of 203.0.113.12 (above) crossed maxretry 3: a third auto-ban
        q.wait_value('popwatch_bans_total{job="node",origin="auto"}', 3)
        q.wait_value('popwatch_bans_total{job="popwatch",origin="auto"}', 3)
        assert v('popwatch_firewall_op_seconds_count{job="node",op="ban"}') == 5
        # node_exporter's own process_* only: the textfile leaves them out (they would clash)
        assert v('count(process_cpu_seconds_total{job="node"})') == 1
        assert "process_cpu_seconds_total" not in (tmp / "textfile" / "popwatch.prom").read_text()
    finally:
        for p in procs:
            stop(p)
        if metrics is not None:
            metrics.close()
        shutil.rmtree(tmp, ignore_errors=True)
