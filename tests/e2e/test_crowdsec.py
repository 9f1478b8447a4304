"""The CrowdSec bridge against a real CrowdSec Local API (Debian's ``crowdsec`` 1.4.6).

Each test starts its own LAPI (``crowdsec -no-cs -no-capi``: API only, no agent, no Central
API) with its own config directory and sqlite database on a free loopback port, and drives it
with ``cscli -c <config>``. The LAPI is stopped by PID and its directory removed also when the
test fails.

* in-process: popwatch registers as a machine (validated with ``cscli machines validate``),
  pushes bans that ``cscli decisions list`` shows, deletes them on unban, pulls decisions made
  with ``cscli decisions add``, applies them, and keeps banning locally while the LAPI is down.
* in a network namespace: ``popwatch watch`` with the real kernel backend auto-bans from a log
  file and pushes the ban; a ``cscli decisions add`` lands in popwatch's kernel ipset.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest

from popwatch import crowdsec as cs
from popwatch.crowdsec import CrowdSecBridge, CrowdSecConfig
from popwatch.firewall.sim import SimFirewall
from popwatch.monitor import Monitor
from popwatch.parse import Parser
from popwatch.policy import Protector
from popwatch.store import StateStore
from popwatch.actions import run_sync
from tests.conftest import need_tools
from tests.netns.nslab import cleanup_stale

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LapiServer:
    """A CrowdSec LAPI of our own: config dir, sqlite DB, loopback port; optional netns."""

    def __init__(self, d: Path, netns: str | None = None, host: str = "127.0.0.1") -> None:
        self.d = d
        self.netns = netns
        self.port = free_port()
        self.url = f"http://{host}:{self.port}/"
        self.cfg = d / "config.yaml"
        self.proc: subprocess.Popen[bytes] | None = None
        for sub in ("data", "hub", "notifications"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "hub" / ".index.json").write_text("{}")
        (d / "simulation.yaml").write_text("simulation: off\n")
        (d / "profiles.yaml").write_text(
            "name: default_ip_remediation\nfilters:\n - Alert.Remediation == true && Alert.GetScope() == \"Ip\"\n"
            "decisions:\n - type: ban\n   duration: 4h\non_success: break\n")
        self.cfg.write_text(f"""\
common:
  daemonize: false
  log_media: stdout
  log_level: warning
  working_dir: {d}
config_paths:
  config_dir: {d}/
  data_dir: {d}/data/
  simulation_path: {d}/simulation.yaml
  hub_dir: {d}/hub/
  index_path: {d}/hub/.index.json
  notification_dir: {d}/notifications/
  plugin_dir: /usr/lib/crowdsec/plugins/
cscli:
  output: human
db_config:
  type: sqlite
  db_path: {d}/data/crowdsec.db
  use_wal: false
api:
  client:
    insecure_skip_verify: false
    credentials_path: {d}/local_api_credentials.yaml
  server:
    log_level: warning
    listen_uri: {host}:{self.port}
    profiles_path: {d}/profiles.yaml
    trusted_ips:
      - 127.0.0.1
prometheus:
  enabled: false
""")
        # cscli's own machine (cscli decisions add/list talk to the LAPI with it)
        self.cscli("machines", "add", "cscli-admin", "--password", secrets.token_hex(16),
                   "-f", str(d / "local_api_credentials.yaml"), "--force")

    def _wrap(self, argv: Sequence[str]) -> list[str]:
        return (["ip", "netns", "exec", self.netns] if self.netns else []) + list(argv)

    def cscli(self, *args: str) -> str:
        r = subprocess.run(self._wrap(["cscli", "-c", str(self.cfg), "--error", *args]), capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0, f"cscli {' '.join(args)}: {r.stderr.strip()}"
        return r.stdout

    def decisions(self) -> list[dict[str, Any]]:
        """``cscli decisions list -o json`` flattened to decisions with their alert's scenario."""
        out = json.loads(self.cscli("decisions", "list", "-o", "json") or "null") or []
        return [{**d, "alert_scenario": a.get("scenario"), "message": a.get("message")}
                for a in out for d in a.get("decisions") or []]

    def start(self) -> None:
        log = (self.d / "lapi.log").open("ab")
        self.proc = subprocess.Popen(self._wrap(["crowdsec", "-c", str(self.cfg), "-no-cs", "-no-capi"]),
                                     stdout=log, stderr=subprocess.STDOUT)
        end = time.monotonic() + 20
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"crowdsec exited: {(self.d / 'lapi.log').read_text()[-2000:]}")
            if self.up():
                return
            time.sleep(0.1)
        raise AssertionError("the LAPI did not answer within 20 s")

    def up(self) -> bool:
        if self.netns:
            r = subprocess.run(self._wrap(["python3", "-c", f"import urllib.request as u\ntry: u.urlopen("
                                           f"'{self.url}v1/heartbeat', timeout=1)\nexcept Exception as e: "
                                           f"raise SystemExit(0 if getattr(e, 'code', 0) == 401 else 1)"]),
                               capture_output=True, timeout=10)
            return r.returncode == 0
        try:
            urllib.request.urlopen(f"{self.url}v1/heartbeat", timeout=1)
        except urllib.error.HTTPError as e:
            return e.code == 401  # answering: it wants a JWT
        except OSError:
            return False
        return True

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


@pytest.fixture
def lapi() -> Iterator[LapiServer]:
    need_tools("crowdsec", "cscli")
    d = Path(tempfile.mkdtemp(prefix="pw-lapi-"))
    srv = None
    try:
        srv = LapiServer(d)
        srv.start()
        yield srv
    finally:
        if srv is not None:
            srv.stop()
        shutil.rmtree(d, ignore_errors=True)


async def until(what: str, fn: Callable[[], Any], timeout: float = 15.0, every: float = 0.1) -> Any:
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        last = fn()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


@pytest.mark.daemons
async def test_real_lapi_push_pull_apply_and_outage(lapi: LapiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cs.bridge, "BACKOFF_MAX", 1.0)
    key = lapi.cscli("bouncers", "add", "popwatch-mx1-pull", "-o", "raw").strip()
    assert key
    cfg = CrowdSecConfig(url=lapi.url, machine_id="popwatch-mx1", password=secrets.token_hex(12),
                         register=True, bouncer_key=key, pull_interval=1.0, apply=True, timeout=3.0)
    sim = SimFirewall(clock=time.time)
    mon = Monitor(store=StateStore(clock=time.time), parser=Parser(now=time.time), firewall=sim,
                  protector=Protector(allow=["192.0.2.0/24"]), poll_interval=0.2)
    bridge = CrowdSecBridge(cfg, mon, hostname="mx1")
    bridge.attach()
    task = asyncio.create_task(mon.run())
    loop = asyncio.get_running_loop()

    def cscli(*a: str) -> Any:
        return loop.run_in_executor(None, lambda: lapi.cscli(*a))

    def decisions() -> Any:
        return loop.run_in_executor(None, lapi.decisions)
    try:
        # --- push: popwatch registers itself; nothing goes out until the admin validates it
        r = await mon.actions.ban("203.0.113.50", ttl=3600, reason="dictionary attack on pop3", origin="key")
        assert r.ok and "203.0.113.50" in sim.bans()
        await until("the registration", lambda: "cscli machines validate popwatch-mx1"
                    in mon.store.sources[cs.PUSH_NAME].detail)
        assert mon.store.sources[cs.PUSH_NAME].state == "waiting"
        await cscli("machines", "validate", "popwatch-mx1")
        run_sync(mon.actions.ban("203.0.113.51", ttl=600, reason="from the command line", origin="cli"))

        async def pushed() -> dict[str, dict[str, Any]]:
            return {d["value"]: d for d in await decisions()}
        got: dict[str, dict[str, Any]] = {}
        end = time.monotonic() + 20
        while time.monotonic() < end and not {"203.0.113.50", "203.0.113.51"} <= got.keys():
            await asyncio.sleep(0.3)
            got = await pushed()
        assert {"203.0.113.50", "203.0.113.51"} <= got.keys(), got
        d50, d51 = got["203.0.113.50"], got["203.0.113.51"]
        assert (d50["scenario"], d50["type"], d50["scope"], d50["origin"]) == ("popwatch/key", "ban", "Ip", "crowdsec")
        assert d51["scenario"] == "popwatch/cli"
        assert "dictionary attack on pop3" in d50["message"] and "mx1" in d50["message"]
        assert 3000 < cs.parse_go_duration(d50["duration"]) <= 3600
        assert 500 < cs.parse_go_duration(d51["duration"]) <= 600
        # a person's unban lifts it fleet-wide
        await mon.actions.unban("203.0.113.51", origin="key")
        end = time.monotonic() + 15
        while time.monotonic() < end and "203.0.113.51" in got:
            await asyncio.sleep(0.3)
            got = await pushed()
        assert "203.0.113.51" not in got and "203.0.113.50" in got

        # --- pull: our own push comes back as fleet-wide, in our set
        await until("our push in the stream", lambda: mon.store.fleet_bans.get("203.0.113.50") == "popwatch/key")
        # a decision made by another host's admin reaches the rows and, with apply, our set
        await cscli("decisions", "add", "--ip", "198.51.100.77", "--duration", "2h", "--reason", "fleet: smtp")
        await until("the cscli decision", lambda: "198.51.100.77" in sim.bans())
        assert mon.store.bans["198.51.100.77"].origin == "crowdsec"
        left = sim.bans()["198.51.100.77"]
        assert left is not None and 7000 < left <= 7200
        await until("marked in the kernel", lambda: mon.store.fleet_bans.get("198.51.100.77") == "cscli")
        # it is not pushed back (origin crowdsec)
        assert [d for d in await decisions() if d["value"] == "198.51.100.77"][0]["origin"] == "cscli"
        # a protected address is never applied, but still shown as fleet-wide
        await cscli("decisions", "add", "--ip", "192.0.2.10", "--duration", "1h")
        await until("the protected one", lambda: "192.0.2.10" in mon.store.fleet_bans)
        assert "192.0.2.10" not in sim.bans()
        assert mon.store.fleet_bans["192.0.2.10"] == "cscli; not in this host's set"
        # a range decision is shown (the bouncer enforces ranges)
        await cscli("decisions", "add", "--range", "198.18.7.0/24", "--duration", "1h")
        await until("the range", lambda: "198.18.7.0/24" in mon.store.fleet_bans)
        # the admin deletes the decision: popwatch lifts what it applied
        await cscli("decisions", "delete", "--ip", "198.51.100.77")
        await until("lifted", lambda: "198.51.100.77" not in sim.bans())
        assert "198.51.100.77" not in mon.store.fleet_bans

        # --- outage: the LAPI goes down; local bans go on, the header says so, and the queued
        # ban is delivered when it is back
        await loop.run_in_executor(None, lapi.stop)
        r = await mon.actions.ban("203.0.113.60", ttl=900, reason="during the outage", origin="key")
        assert r.ok and "203.0.113.60" in sim.bans()
        await until("push error shown", lambda: mon.store.sources[cs.PUSH_NAME].state == "error")
        await until("pull error shown", lambda: mon.store.sources[cs.PULL_NAME].state == "error")
        assert any("CrowdSec push failing" in n for n in mon.store.notes)
        await loop.run_in_executor(None, lapi.start)
        end = time.monotonic() + 20
        while time.monotonic() < end and "203.0.113.60" not in got:
            await asyncio.sleep(0.3)
            got = await pushed()
        assert "203.0.113.60" in got
        await until("push healthy", lambda: mon.store.sources[cs.PUSH_NAME].state == "following")
        await until("pull healthy", lambda: mon.store.sources[cs.PULL_NAME].state == "following")
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        mon.close()


# ----------------------------------------------------------------------- kernel, in a netns

MAIL_FAIL = ("{ts} mx dovecot: pop3-login: Disconnected: Aborted login by logging out (auth failed, "
             "{n} attempts in 18 secs): user=<root>, method=PLAIN, rip={ip}, lip=192.0.2.1, session=<{sid}>")


BOUNCER = """\
mode: iptables
pid_dir: {d}/
update_frequency: 1s
daemonize: false
log_mode: stdout
log_level: info
api_url: {url}
api_key: {key}
insecure_skip_verify: false
disable_ipv6: true
deny_action: DROP
deny_log: false
supported_decisions_types:
  - ban
blacklists_ipv4: crowdsec-blacklists
blacklists_ipv6: crowdsec6-blacklists
ipset_type: nethash
iptables_chains:
  - INPUT
prometheus:
  enabled: false
"""


def ns_run(ns: str, *argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, timeout=20)


def stop_proc(p: subprocess.Popen[bytes] | None, grace: float = 15.0) -> None:
    if p is not None and p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


@pytest.mark.daemons
def test_watch_in_a_netns_pushes_auto_bans_a_second_host_enforces_them() -> None:
    """Two hosts, each a network namespace, linked by a veth pair (192.0.2.1 <-> 192.0.2.2):

    * mx1 runs the LAPI and ``popwatch watch`` (real kernel backend, [crowdsec] push + pull +
      apply). An auto-ban from its log file reaches ``cscli decisions list``; ``cscli decisions
      add`` lands in popwatch's ipset and leaves it on ``cscli decisions delete``.
    * mx2 runs ``crowdsec-firewall-bouncer`` against mx1's LAPI, and the ban popwatch pushed is
      in mx2's kernel set (``crowdsec-blacklists``).
    """
    need_tools("crowdsec", "cscli", "ip", "ipset", "iptables")
    cleanup_stale("pwcs-")  # namespaces of a crashed earlier run (its pid is gone)
    tag = f"{os.getpid()}-{secrets.token_hex(2)}"
    ns1, ns2 = f"pwcs-{tag}-1", f"pwcs-{tag}-2"
    d = Path(tempfile.mkdtemp(prefix="pw-lapi-ns-"))
    srv: LapiServer | None = None
    pw: subprocess.Popen[bytes] | None = None
    bouncer: subprocess.Popen[bytes] | None = None
    made: list[str] = []
    try:
        for ns in (ns1, ns2):
            subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
            made.append(ns)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, timeout=10)
        subprocess.run(["ip", "link", "add", "pwcs0", "netns", ns1, "type", "veth", "peer", "name", "pwcs1",
                        "netns", ns2], check=True, timeout=10)
        for ns, dev, addr in ((ns1, "pwcs0", "192.0.2.1/24"), (ns2, "pwcs1", "192.0.2.2/24")):
            subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", dev], check=True, timeout=10)
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True, timeout=10)
        srv = LapiServer(d / "lapi", netns=ns1, host="192.0.2.1")
        srv.start()
        key = srv.cscli("bouncers", "add", "popwatch-mx1", "-o", "raw").strip()
        key2 = srv.cscli("bouncers", "add", "firewall-mx2", "-o", "raw").strip()
        password = secrets.token_hex(12)
        srv.cscli("machines", "add", "popwatch-mx1", "--password", password, "-f", str(d / "unused.yaml"))
        log = d / "mail.log"
        log.write_text("")
        conf = d / "popwatch.toml"
        conf.write_text(f"""\
ports = [110]
[policy]
auto_ban = true
maxretry = 3
findtime = "1d"
bantime = "30m"
[crowdsec]
url = "{srv.url}"
machine_id = "popwatch-mx1"
password = "{password}"
bouncer_key = "{key}"
pull_interval = "1s"
apply = true
""")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("SSH_CLIENT", None)
        env.pop("SSH_CONNECTION", None)
        pw = subprocess.Popen(["ip", "netns", "exec", ns1, sys.executable, "-m", "popwatch", "watch", "--no-tui",
                               "--config", str(conf), "--state-dir", str(d / "state"), "--log", str(log),
                               "--backend", "nft", "--duration", "90", "--metrics", "127.0.0.1:9177",
                               "--metrics-textfile", str(d / "popwatch.prom")], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=(d / "popwatch.err").open("wb"))
        (d / "bouncer").mkdir()
        (d / "bouncer" / "bouncer.yaml").write_text(BOUNCER.format(d=d / "bouncer", url=srv.url, key=key2))
        bouncer = subprocess.Popen(["ip", "netns", "exec", ns2, "crowdsec-firewall-bouncer", "-c",
                                    str(d / "bouncer" / "bouncer.yaml")], stdout=(d / "bouncer.log").open("wb"),
                                   stderr=subprocess.STDOUT)

        def why() -> str:
            prom = d / "popwatch.prom"
            state = [l for l in (prom.read_text() if prom.exists() else "").splitlines()
                     if l.startswith(("popwatch_source", "popwatch_crowdsec", "popwatch_bans"))]
            return (f"popwatch: {(d / 'popwatch.err').read_text()[-2000:]}\n" + "\n".join(state) + "\n"
                    f"bouncer: {(d / 'bouncer.log').read_text()[-2000:]}")

        def wait(what: str, fn: Callable[[], Any], timeout: float = 25.0) -> Any:
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                assert pw is not None and pw.poll() is None, why()
                assert bouncer is not None and bouncer.poll() is None, why()
                v = fn()
                if v:
                    return v
                time.sleep(0.3)
            raise AssertionError(f"timed out waiting for {what}; {why()}")

        def in_set(ns: str, name: str, ip: str) -> bool:
            return ns_run(ns, "ipset", "test", name, ip).returncode == 0
        # popwatch is up when its set exists; the bouncer when its set does
        wait("popwatch's ipset", lambda: ns_run(ns1, "ipset", "list", "-n", "popwatch4").returncode == 0)
        wait("the bouncer's ipset", lambda: ns_run(ns2, "ipset", "list", "-n", "crowdsec-blacklists").returncode == 0)
        time.sleep(0.5)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
        with log.open("a") as f:
            f.write(MAIL_FAIL.format(ts=ts, n=4, ip="203.0.113.70", sid="AAAABBBBCCCC") + "\n")
        wait("the auto-ban in mx1's kernel", lambda: in_set(ns1, "popwatch4", "203.0.113.70"))
        got = wait("the pushed auto-ban", lambda: [x for x in srv.decisions() if x["value"] == "203.0.113.70"])
        assert got[0]["scenario"] == "popwatch/auto"
        assert 1500 < cs.parse_go_duration(got[0]["duration"]) <= 1800
        # the other host's bouncer enforces it
        wait("the ban in mx2's kernel", lambda: in_set(ns2, "crowdsec-blacklists", "203.0.113.70"))
        rules = ns_run(ns2, "iptables", "-S", "INPUT").stdout.decode()
        assert "crowdsec-blacklists" in rules and "DROP" in rules, rules
        assert not in_set(ns2, "crowdsec-blacklists", "203.0.113.71")
        # the fleet's decision lands in popwatch's kernel set on mx1, and leaves it again
        assert not in_set(ns1, "popwatch4", "198.51.100.88")
        srv.cscli("decisions", "add", "--ip", "198.51.100.88", "--duration", "1h", "--reason", "fleet")
        wait("the fleet decision in mx1's kernel", lambda: in_set(ns1, "popwatch4", "198.51.100.88"))
        srv.cscli("decisions", "delete", "--ip", "198.51.100.88")
        wait("the fleet decision lifted", lambda: not in_set(ns1, "popwatch4", "198.51.100.88"))
        assert in_set(ns1, "popwatch4", "203.0.113.70")
        # the same run's metrics (mx1's loopback): the real backend's latencies, the bridge's state
        r = ns_run(ns1, sys.executable, "-c", "import urllib.request as u; print(u.urlopen("
                   "'http://127.0.0.1:9177/metrics', timeout=5).read().decode())")
        assert r.returncode == 0, r.stderr
        text = r.stdout.decode()
        for want in ('popwatch_bans_total{origin="auto"} 1.0', 'popwatch_bans_total{origin="crowdsec"} 1.0',
                     'popwatch_unbans_total{origin="crowdsec"} 1.0', 'popwatch_crowdsec_up{direction="push"} 1.0',
                     'popwatch_crowdsec_up{direction="pull"} 1.0', "popwatch_crowdsec_pushed_bans_total 1.0",
                     'popwatch_auth_failures_total{kind="auth_failed",service="pop3"} 4.0',
                     'popwatch_source_up{source="crowdsec push"} 1.0'):
            assert want in text, (want, text)
        n_ban = [l for l in text.splitlines() if l.startswith('popwatch_firewall_op_seconds_count{op="ban"}')]
        assert n_ban and float(n_ban[0].split()[-1]) == 2, n_ban
        # a clean stop writes the textfile one last time
        stop_proc(pw)
        assert pw.returncode == 0, why()
        assert "popwatch_events_total 1.0" in (d / "popwatch.prom").read_text()
    finally:
        stop_proc(pw)
        stop_proc(bouncer)
        if srv is not None:
            srv.stop()
        for ns in made:
            subprocess.run(["ip", "netns", "delete", ns], timeout=10)
        shutil.rmtree(d, ignore_errors=True)
