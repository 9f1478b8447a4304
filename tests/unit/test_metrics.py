"""Prometheus exporter: listen-address policy, the collector's values after real log lines and
actions, the firewall latency histogram, the HTTP endpoint, the textfile, and scrapes that run
while the loop ingests."""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from popwatch.model import PortLimit, Rate
from popwatch.firewall.sim import SimFirewall
from popwatch.metrics import Metrics, MetricsError, parse_listen
from popwatch.model import CounterSample, RawLine, SourceHealth
from popwatch.monitor import Monitor
from popwatch.parse import Parser
from popwatch.policy import Protector, Refused
from popwatch.store import StateStore
from popwatch.actions import run_sync
from tests.helpers import Clock

LINES = [
    # imap: 3 failed attempts in one dovecot summary
    "2026-11-28T05:33:06.157468+00:00 mx dovecot: imap-login: Disconnected: Connection closed (auth failed, "
    "3 attempts in 18 secs): user=<test>, method=LOGIN, rip=203.0.113.11, lip=192.0.2.1, session=<4WTJgU9h1tDLAHEL>",
    # ssh: two invalid users
    "2026-11-28T05:32:47.714838+00:00 mx sshd[27160]: Invalid user test from 203.0.113.12 port 43000",
    "2026-11-28T05:32:47.715032+00:00 mx sshd[27158]: Invalid user admin from 203.0.113.12 port 42992",
    # pop3 over IPv6: 3 attempts
    "2026-11-28T05:33:05.048197+00:00 mx dovecot: pop3-login: Disconnected: Aborted login by logging out (auth "
    "failed, 3 attempts in 18 secs): user=<root>, method=PLAIN, rip=2001:db8::20, lip=2001:db8::1, "
    "session=<dLzBgU9h8JwgAQ24AAAAAAAAAAAAAAAg>",
    # a probe (no attempt) and a login: events, not failures
    "2026-11-28T05:32:47.541048+00:00 mx dovecot: pop3-login: Disconnected: Aborted login by logging out (no auth "
    "attempts in 0 secs): user=<>, rip=203.0.113.10, lip=192.0.2.1, session=<C9jBgU9h+rzLAHEK>",
    "2026-11-28T05:33:55.000000+00:00 mx dovecot: imap-login: Login: user=<test>, method=LOGIN, rip=198.51.100.7, "
    "lip=192.0.2.1, mpid=31697, session=<qdXlgk9hJqfLAHEL>",
]


def make() -> tuple[Monitor, SimFirewall, Metrics]:
    clock = Clock(1_795_844_000.0)
    sim = SimFirewall(clock=clock)
    mon = Monitor(store=StateStore(clock=clock), parser=Parser(now=clock), firewall=sim,
                  protector=Protector(allow=["192.0.2.0/24"]), mono=clock)
    mon.start_firewall([PortLimit(110, "global", Rate.parse("2/second"), 7), PortLimit(22)])
    return mon, sim, Metrics(mon, process=False)


def scrape(m: Metrics, http: bool = False) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(m.http_registry if http else m.registry).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def val(d: dict, name: str, **labels: str) -> float:
    return d[(name, tuple(sorted(labels.items())))]


def feed(mon: Monitor, lines: list[str]) -> None:
    mon.ingest([RawLine(t, "mail.log", i + 1) for i, t in enumerate(lines)])


@pytest.mark.parametrize("spec,want", [
    ("9177", ("127.0.0.1", 9177)),
    ("127.0.0.1:9100", ("127.0.0.1", 9100)),
    ("localhost:9100", ("127.0.0.1", 9100)),
    ("[::1]:9177", ("::1", 9177)),
    ("127.0.0.53:80", ("127.0.0.53", 80)),
])
def test_listen_addresses(spec: str, want: tuple[str, int]) -> None:
    assert parse_listen(spec) == want


@pytest.mark.parametrize("spec", ["0.0.0.0:9177", "192.0.2.1:9177", "[::]:9177", ":9177x", "::1:9177",
                                  "127.0.0.1:0", "127.0.0.1:70000", "mail.example:9177"])
def test_bad_or_public_listen_addresses_are_refused(spec: str) -> None:
    with pytest.raises(MetricsError):
        parse_listen(spec)


def test_public_bind_needs_the_explicit_flag() -> None:
    assert parse_listen("0.0.0.0:9177", allow_remote=True) == ("0.0.0.0", 9177)
    with pytest.raises(MetricsError, match="--metrics-allow-remote"):
        parse_listen("0.0.0.0:9177")


def test_failures_events_attackers_from_real_lines() -> None:
    mon, _, m = make()
    feed(mon, LINES)
    d = scrape(m)
    assert val(d, "popwatch_auth_failures_total", service="imap", kind="auth_failed") == 3
    assert val(d, "popwatch_auth_failures_total", service="pop3", kind="auth_failed") == 3
    assert val(d, "popwatch_auth_failures_total", service="ssh", kind="invalid_user") == 2
    assert ("popwatch_auth_failures_total", (("kind", "probe"), ("service", "pop3"))) not in d
    assert val(d, "popwatch_auth_events_total", service="pop3", kind="probe") == 1
    assert val(d, "popwatch_auth_events_total", service="imap", kind="success") == 1
    assert val(d, "popwatch_events_total") == 6
    assert val(d, "popwatch_failures_total") == 8
    assert val(d, "popwatch_lines_total") == 6
    # 203.0.113.11, .12, 2001:db8::20 failed, .10 probed; the login alone does not count
    assert val(d, "popwatch_attackers") == 4
    # the exporter's own count agrees with the store's
    assert sum(v for (n, _), v in d.items() if n == "popwatch_auth_failures_total") == mon.store.failures_total


def test_bans_unbans_by_origin_and_refusals() -> None:
    mon, sim, m = make()
    run_sync(mon.actions.ban("203.0.113.11", ttl=600, origin="cli"))
    run_sync(mon.actions.ban("203.0.113.12", ttl=None, origin="key"))
    with pytest.raises(Refused):
        run_sync(mon.actions.ban("192.0.2.5", origin="key"))  # allow-listed
    run_sync(mon.actions.unban("203.0.113.11", origin="key"))
    d = scrape(m)
    assert val(d, "popwatch_bans_total", origin="cli") == 1
    assert val(d, "popwatch_bans_total", origin="key") == 1
    assert val(d, "popwatch_bans_total", origin="auto") == 0
    assert val(d, "popwatch_unbans_total", origin="key") == 1
    assert val(d, "popwatch_unbans_total", origin="cli") == 0
    assert val(d, "popwatch_bans_refused_total", origin="key") == 1
    assert val(d, "popwatch_bans_active", origin="key") == 1
    assert val(d, "popwatch_bans_active", origin="cli") == 0


def test_auto_bans_are_counted_as_auto() -> None:
    clock = Clock(1_795_844_000.0)
    sim = SimFirewall(clock=clock)
    from popwatch.config import PolicyConfig

    mon = Monitor(store=StateStore(clock=clock), parser=Parser(now=clock), firewall=sim, mono=clock,
                  policy=PolicyConfig(auto_ban=True, maxretry=3, findtime=3600.0), auto_ban=True)
    m = Metrics(mon, process=False)
    feed(mon, [LINES[0]])  # 3 attempts from 203.0.113.11: crosses maxretry=3
    d = scrape(m)
    assert "203.0.113.11" in mon.store.bans
    assert val(d, "popwatch_bans_total", origin="auto") == 1
    assert val(d, "popwatch_bans_active", origin="auto") == 1


def test_ports_limits_and_counters() -> None:
    mon, sim, m = make()
    for _ in range(20):
        sim.connect("203.0.113.50", 110)
    mon.store.add_counters(CounterSample(1.0, sim.counters(), sim.banned_dropped()))
    d = scrape(m)
    c = sim.counters()[110]
    assert c.passed + c.dropped == 20 and c.dropped > 0
    assert val(d, "popwatch_port_passed_packets_total", port="110") == c.passed
    assert val(d, "popwatch_port_dropped_packets_total", port="110") == c.dropped
    assert val(d, "popwatch_port_limit_per_second", port="110", mode="global") == 2.0
    assert val(d, "popwatch_port_limit_burst", port="110", mode="global") == 7
    assert val(d, "popwatch_port_limit_burst", port="22", mode="count") == 0
    run_sync(mon.actions.set_limit(PortLimit(110, "per-source", Rate.parse("10/minute"), 3), origin="cli"))
    d = scrape(m)
    assert val(d, "popwatch_port_limit_per_second", port="110", mode="per-source") == pytest.approx(1 / 6)
    assert ("popwatch_port_limit_burst", (("mode", "global"), ("port", "110"))) not in d
    assert val(d, "popwatch_limit_changes_total", origin="cli") == 1


def test_sources_health() -> None:
    mon, _, m = make()
    mon.store.set_source(SourceHealth("/var/log/mail.log", "following", "", 120))
    mon.store.set_source(SourceHealth("/var/log/auth.log", "denied", "permission denied", 0))
    d = scrape(m)
    assert val(d, "popwatch_source_up", source="/var/log/mail.log") == 1
    assert val(d, "popwatch_source_up", source="/var/log/auth.log") == 0
    assert val(d, "popwatch_source_state", source="/var/log/auth.log", state="denied") == 1
    assert val(d, "popwatch_source_lines_total", source="/var/log/mail.log") == 120


def test_firewall_latency_histogram_and_identity() -> None:
    mon, sim, m = make()
    assert isinstance(mon.firewall, SimFirewall) and mon.firewall is sim
    run_sync(mon.actions.ban("203.0.113.11", ttl=60, origin="cli"))
    run_sync(mon.actions.ban("203.0.113.12", ttl=60, origin="cli"))
    run_sync(mon.actions.unban("203.0.113.12", origin="cli"))
    sim.counters()
    d = scrape(m)
    assert val(d, "popwatch_firewall_op_seconds_count", op="ban") == 2
    assert val(d, "popwatch_firewall_op_seconds_count", op="unban") == 1
    assert val(d, "popwatch_firewall_op_seconds_count", op="counters") == 1
    assert val(d, "popwatch_firewall_op_seconds_count", op="set_limit") == 0
    # wrapping twice (a second exporter) does not double count
    Metrics(mon, process=False)
    run_sync(mon.actions.ban("203.0.113.13", ttl=60, origin="cli"))
    assert val(scrape(m), "popwatch_firewall_op_seconds_count", op="ban") == 3


def test_events_per_second_from_successive_scrapes() -> None:
    mon, _, m = make()
    t = [100.0]
    m.collector.mono = lambda: t[0]
    assert val(scrape(m), "popwatch_events_per_second") == 0
    feed(mon, LINES * 10)  # 60 events
    t[0] += 2.0
    assert val(scrape(m), "popwatch_events_per_second") == pytest.approx(30.0)


def test_http_endpoint_on_loopback_has_process_metrics(tmp_path: Path) -> None:
    mon, _, _ = make()
    m = Metrics(mon, process=True)
    host, port = m.serve("127.0.0.1", 0)
    try:
        assert host == "127.0.0.1" and port > 0
        feed(mon, LINES)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'popwatch_auth_failures_total{kind="auth_failed",service="imap"} 3.0' in body
        assert "process_cpu_seconds_total" in body
    finally:
        m.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_textfile_is_written_atomically_and_without_process_metrics(tmp_path: Path) -> None:
    mon, _, m = make()
    path = tmp_path / "popwatch.prom"
    m.start_textfile(str(path), interval=0.05)
    try:
        first = path.read_text()
        assert "popwatch_events_total 0.0" in first
        assert "process_" not in first
        feed(mon, LINES)
        for _ in range(100):
            if "popwatch_events_total 6.0" in path.read_text():
                break
            threading.Event().wait(0.05)
        assert "popwatch_events_total 6.0" in path.read_text()
    finally:
        m.close()
    # no temp files left behind (node_exporter reads *.prom only, but do not litter)
    assert [p.name for p in tmp_path.iterdir()] == ["popwatch.prom"]


def test_textfile_in_a_missing_directory_fails_at_start(tmp_path: Path) -> None:
    _, _, m = make()
    with pytest.raises(OSError):
        m.start_textfile(str(tmp_path / "nope" / "popwatch.prom"))


async def test_scrapes_while_the_loop_ingests_never_fail() -> None:
    """Scrapes on another thread read the store while the loop writes it (new IPs, bans)."""
    mon, _, m = make()
    errors: list[BaseException] = []
    stop = threading.Event()

    def scraper() -> None:
        while not stop.is_set():
            try:
                scrape(m)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
                return
    th = threading.Thread(target=scraper)
    th.start()
    try:
        for i in range(300):
            ip = f"198.18.{i // 250}.{i % 250 + 1}"
            feed(mon, [LINES[1].replace("203.0.113.12", ip).replace("27160", str(1000 + 3 * i + j))
                       for j in range(3)])
            if i % 10 == 0:
                await mon.actions.ban(ip, ttl=60)
            mon.store.set_source(SourceHealth(f"src{i}", "following", "", i))
            await asyncio.sleep(0)
    finally:
        stop.set()
        th.join(5)
    assert not errors
    d = scrape(m)
    assert val(d, "popwatch_attackers") == 300
    assert val(d, "popwatch_bans_total", origin="key") == 30


def test_describing_a_ban_is_not_timed_as_a_ban() -> None:
    """The kernel backends' describe_ban runs ban() in recording mode: not a firewall operation."""
    clock = Clock(1_795_844_000.0)

    class DescribingSim(SimFirewall):
        # like IptablesFirewall.describe_ban: it calls the backend's own ban() (here for real)
        def describe_ban(self, ip: str, ttl: float | None = None, *, net: bool | None = None) -> list[str]:
            self.ban(ip, ttl)
            self.unban(ip)
            return [f"ban {ip}"]

    sim = DescribingSim(clock=clock)
    mon = Monitor(store=StateStore(clock=clock), parser=Parser(now=clock), firewall=sim, mono=clock)
    m = Metrics(mon, process=False)
    run_sync(mon.actions.ban("203.0.113.11", ttl=60, origin="cli"))
    d = scrape(m)
    assert "203.0.113.11" in sim.bans()
    assert val(d, "popwatch_firewall_op_seconds_count", op="ban") == 1
    assert val(d, "popwatch_firewall_op_seconds_count", op="unban") == 0
