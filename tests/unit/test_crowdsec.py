"""CrowdSec bridge against a small fake LAPI on loopback: config validation, Go durations, the
alert popwatch sends, push with login/registration/JWT renewal, pull of the decision stream,
the kernel check, ``apply``, and failures (down, slow, bad credentials) that never block a
local ban. The real LAPI is in tests/e2e/test_crowdsec.py."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from popwatch import crowdsec as cs
from popwatch.config import ConfigError, load
from popwatch.crowdsec import CrowdSecBridge, CrowdSecConfig, Lapi, LapiError, from_table, parse_go_duration
from popwatch.firewall.sim import SimFirewall
from popwatch.metrics import Metrics
from popwatch.monitor import Monitor
from popwatch.parse import Parser
from popwatch.policy import Protector
from popwatch.store import StateStore
from popwatch.actions import run_sync


# ------------------------------------------------------------------ fake LAPI

class FakeLapi:
    """Just enough of the LAPI 1.4 API: watchers, login, alerts, decisions, stream."""

    def __init__(self) -> None:
        self.machines: dict[str, list[Any]] = {}  # id -> [password, validated]
        self.tokens: set[str] = set()
        self.alerts: list[dict[str, Any]] = []
        self.decisions: dict[int, dict[str, Any]] = {}
        self.keys = {"bkey"}
        self.sent: dict[str, set[int]] = {}  # bouncer key -> decision ids it has seen
        self.gone: dict[str, list[dict[str, Any]]] = {}
        self.delay = 0.0
        self.next_id = 0
        self.calls: list[str] = []
        self.lock = threading.Lock()
        fake = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _send(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> Any:
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n) or b"null")

            def do_POST(self) -> None:  # noqa: N802
                fake.handle(self, "POST")

            def do_GET(self) -> None:  # noqa: N802
                fake.handle(self, "GET")

            def do_DELETE(self) -> None:  # noqa: N802
                fake.handle(self, "DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_decision(self, value: str, *, scope: str = "Ip", origin: str = "cscli", duration: str = "4h",
                     scenario: str = "manual", type_: str = "ban") -> int:
        with self.lock:
            i = self.next_id = self.next_id + 1
            self.decisions[i] = {"id": i, "value": value, "scope": scope, "origin": origin,
                                 "duration": duration, "scenario": scenario, "type": type_}
            return i

    def delete_decision(self, i: int) -> None:
        with self.lock:
            d = self.decisions.pop(i)
            for k in self.sent:
                if i in self.sent[k]:
                    self.gone.setdefault(k, []).append(d)

    def handle(self, h: Any, method: str) -> None:
        if self.delay:
            time.sleep(self.delay)
        u = urlsplit(h.path)
        self.calls.append(f"{method} {u.path}")
        body = h._body() if method == "POST" else None
        with self.lock:
            if u.path == "/v1/watchers" and method == "POST":
                if body["machine_id"] in self.machines:
                    return h._send(403, {"message": "user already exist"})
                self.machines[body["machine_id"]] = [body["password"], False]
                return h._send(201, None)
            if u.path == "/v1/watchers/login":
                m = self.machines.get(body["machine_id"])
                if m is None:
                    return h._send(401, {"code": 401, "message": "ent: machine not found"})
                if m[0] != body["password"]:
                    return h._send(401, {"code": 401, "message": "incorrect Username or Password"})
                if not m[1]:
                    return h._send(401, {"code": 401, "message": f"machine {body['machine_id']} not validated"})
                tok = f"tok{len(self.tokens)}"
                self.tokens.add(tok)
                return h._send(200, {"code": 200, "expire": "2099-01-01T00:00:00Z", "token": tok})
            if u.path in ("/v1/alerts", "/v1/decisions") and method in ("POST", "DELETE"):
                auth = h.headers.get("Authorization", "")
                if auth.removeprefix("Bearer ") not in self.tokens:
                    return h._send(401, {"code": 401, "message": "Token is expired"})
                if method == "POST":
                    ids = []
                    for a in body:
                        self.alerts.append(a)
                        ids.append(str(len(self.alerts)))
                        for d in a["decisions"]:
                            i = self.next_id = self.next_id + 1
                            self.decisions[i] = {**d, "id": i}
                    return h._send(201, ids)
                q = parse_qs(u.query)
                val = (q.get("ip") or q.get("range"))[0]
                ids = [i for i, d in self.decisions.items() if d["value"] == val]
                for i in ids:
                    d = self.decisions.pop(i)
                    for k in self.sent:
                        if i in self.sent[k]:
                            self.gone.setdefault(k, []).append(d)
                return h._send(200, {"nbDeleted": str(len(ids))})
            if u.path == "/v1/decisions/stream":
                key = h.headers.get("X-Api-Key")
                if key not in self.keys:
                    return h._send(403, {"message": "access forbidden"})
                startup = parse_qs(u.query).get("startup") == ["true"]
                seen = self.sent.setdefault(key, set())
                if startup:
                    seen.clear()
                    self.gone[key] = []
                new = [d for i, d in self.decisions.items() if i not in seen]
                seen.update(d["id"] for d in new)
                gone, self.gone[key] = self.gone.get(key, []), []
                return h._send(200, {"new": new or None, "deleted": gone or None})
        h._send(404, {"message": "not found"})


@pytest.fixture
def lapi() -> Any:
    f = FakeLapi()
    yield f
    f.close()


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cs.bridge, "BACKOFF_MIN", 0.05)
    monkeypatch.setattr(cs.bridge, "BACKOFF_MAX", 0.2)


def make(cfg: CrowdSecConfig, allow: list[str] | None = None) -> tuple[Monitor, SimFirewall, CrowdSecBridge]:
    sim = SimFirewall(clock=time.time)
    mon = Monitor(store=StateStore(clock=time.time), parser=Parser(now=time.time), firewall=sim,
                  protector=Protector(allow=allow or []), poll_interval=0.05)
    b = CrowdSecBridge(cfg, mon, hostname="mx1")
    b.attach()
    return mon, sim, b


async def until(what: str, fn: Any, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if fn():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Running:
    """``async with Running(mon)``: monitor.run() (with the bridge) as a task."""

    def __init__(self, mon: Monitor) -> None:
        self.mon = mon
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.mon.run())
        await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.task is not None
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass


# ------------------------------------------------------------------ config and helpers

def test_config_table_and_secret_files(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "key").write_text("bouncerkey\n")
    p = tmp_path / "c.toml"
    p.write_text(f'[crowdsec]\nurl = "http://127.0.0.1:8080"\nmachine_id = "mx1-popwatch"\n'
                 f'password_file = "{tmp_path / "pw"}"\nbouncer_key_file = "{tmp_path / "key"}"\n'
                 f'pull_interval = "30s"\napply = true\n')
    c = load(p, required=True).crowdsec
    assert isinstance(c, CrowdSecConfig)
    assert (c.url, c.machine_id, c.password, c.bouncer_key) == ("http://127.0.0.1:8080/", "mx1-popwatch",
                                                                 "s3cret", "bouncerkey")
    assert c.push and c.pull and c.apply and c.pull_interval == 30 and not c.register


@pytest.mark.parametrize("table,msg", [
    ({"url": "ftp://x"}, "url"),
    ({"machine_id": "a b", "password": "x"}, "machine_id"),
    ({"machine_id": "mx1"}, "go together"),
    ({}, "nothing to do"),
    ({"bouncer_key": "k", "pull_interval": "0.1s"}, "pull_interval"),
    ({"bouncer_key": "k", "colour": 1}, "unknown key"),
    ({"machine_id": "m", "password": "p", "apply": True}, "apply needs bouncer_key"),
    ({"bouncer_key": "k", "apply": "yes"}, "apply"),
    ({"bouncer_key": "k", "bouncer_key_file": "/x"}, "not both"),
    ({"bouncer_key_file": "/nonexistent/key"}, "bouncer_key_file"),
])
def test_config_errors_name_the_key(table: dict[str, Any], msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        from_table(table)


def test_config_without_crowdsec_is_none(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("ports = [110]\n")
    assert load(p, required=True).crowdsec is None


@pytest.mark.parametrize("text,secs", [("4h", 14400), ("3h59m58.5s", 14398.5), ("-16.733434ms", -0.016733434),
                                       ("59m57.851572171s", 3597.851572171), ("0s", 0), ("1h0m0s", 3600),
                                       ("250µs", 0.00025), ("0", 0)])
def test_go_durations(text: str, secs: float) -> None:
    assert parse_go_duration(text) == pytest.approx(secs)


@pytest.mark.parametrize("text", ["", "4", "h", "1x", "1h 2m", "--1s"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)


def test_alert_shape() -> None:
    _, _, b = make(CrowdSecConfig(machine_id="mx1", password="p"))
    a = b.alert("203.0.113.5", 3600.0, "5 failures in 10m (pop3)", "auto")
    assert a["scenario"] == "popwatch/auto" and a["source"] == {"scope": "Ip", "value": "203.0.113.5",
                                                                 "ip": "203.0.113.5"}
    assert a["decisions"] == [{"duration": "3600s", "origin": "crowdsec", "scenario": "popwatch/auto",
                               "scope": "Ip", "type": "ban", "value": "203.0.113.5"}]
    assert "mx1" in a["message"] and "5 failures in 10m (pop3)" in a["message"]
    r = b.alert("2001:db8:1::/64", None, "", "key")["decisions"][0]
    assert (r["scope"], r["value"], r["duration"]) == ("Range", "2001:db8:1::/64", f"{int(cs.PERMANENT)}s")


# ------------------------------------------------------------------ push

async def test_push_bans_by_every_path_but_not_fleet_ones(lapi: FakeLapi) -> None:
    lapi.machines["mx1"] = ["pw", True]
    mon, sim, b = make(CrowdSecConfig(url=lapi.url, machine_id="mx1", password="pw"))
    async with Running(mon):
        await mon.actions.ban("203.0.113.1", ttl=600, reason="brute force", origin="key")
        run_sync(mon.actions.ban("203.0.113.2", ttl=60, origin="cli"))
        await mon.actions.ban("203.0.113.3", ttl=60, origin="crowdsec")  # came from the fleet: not sent back
        await until("two alerts", lambda: len(lapi.alerts) == 2)
        await until("push health", lambda: mon.store.sources[cs.PUSH_NAME].state == "following")
    got = {a["source"]["value"]: a for a in lapi.alerts}
    assert set(got) == {"203.0.113.1", "203.0.113.2"}
    assert got["203.0.113.1"]["scenario"] == "popwatch/key"
    assert got["203.0.113.1"]["decisions"][0]["duration"] == "600s"
    assert "brute force" in got["203.0.113.1"]["message"]
    assert got["203.0.113.2"]["scenario"] == "popwatch/cli"
    assert b.pushed == 2 and not b.outbox


async def test_a_persons_unban_deletes_the_decision(lapi: FakeLapi) -> None:
    lapi.machines["mx1"] = ["pw", True]
    mon, _, _ = make(CrowdSecConfig(url=lapi.url, machine_id="mx1", password="pw"))
    async with Running(mon):
        await mon.actions.ban("203.0.113.1", ttl=600, origin="key")
        await until("decision", lambda: len(lapi.decisions) == 1)
        await mon.actions.unban("203.0.113.1", origin="key")
        await until("deleted", lambda: not lapi.decisions)
    assert "DELETE /v1/decisions" in lapi.calls


async def test_expired_jwt_logs_in_again(lapi: FakeLapi) -> None:
    lapi.machines["mx1"] = ["pw", True]
    mon, _, b = make(CrowdSecConfig(url=lapi.url, machine_id="mx1", password="pw"))
    async with Running(mon):
        await mon.actions.ban("203.0.113.1", ttl=600, origin="key")
        await until("first", lambda: len(lapi.alerts) == 1)
        lapi.tokens.clear()  # the LAPI restarted with a new secret: old JWTs are refused
        await mon.actions.ban("203.0.113.2", ttl=600, origin="key")
        await until("second", lambda: len(lapi.alerts) == 2)
    assert lapi.calls.count("POST /v1/watchers/login") == 2
    assert b.push_errors == 0


async def test_register_then_wait_for_validation(lapi: FakeLapi) -> None:
    mon, _, b = make(CrowdSecConfig(url=lapi.url, machine_id="mx9", password="pw9", register=True))
    async with Running(mon):
        r = await mon.actions.ban("203.0.113.1", ttl=600, origin="key")
        assert r.ok and "203.0.113.1" in mon.store.bans  # local ban done, LAPI or not
        await until("registered", lambda: "mx9" in lapi.machines)
        await until("waiting", lambda: "cscli machines validate mx9" in mon.store.sources[cs.PUSH_NAME].detail)
        assert mon.store.sources[cs.PUSH_NAME].state == "waiting"
        assert not lapi.alerts and len(b.outbox) == 1
        lapi.machines["mx9"][1] = True  # the admin ran `cscli machines validate mx9`
        await until("pushed after validation", lambda: len(lapi.alerts) == 1)
    assert lapi.calls.count("POST /v1/watchers") == 1


async def test_bad_password_is_denied_and_local_bans_go_on(lapi: FakeLapi) -> None:
    lapi.machines["mx1"] = ["right", True]
    mon, sim, b = make(CrowdSecConfig(url=lapi.url, machine_id="mx1", password="wrong"))
    async with Running(mon):
        for i in range(3):
            await mon.actions.ban(f"203.0.113.{i + 1}", ttl=600, origin="key")
        await until("denied", lambda: mon.store.sources.get(cs.PUSH_NAME, None) is not None
                    and mon.store.sources[cs.PUSH_NAME].state == "denied")
    assert len(sim.bans()) == 3 and not lapi.alerts and len(b.outbox) == 3
    assert any("CrowdSec push failing" in n and "incorrect" in n for n in mon.store.notes)


async def test_lapi_down_then_up_retries_with_backoff(lapi: FakeLapi) -> None:
    lapi.machines["mx1"] = ["pw", True]
    url = lapi.url
    lapi.close()  # nothing listens there now
    mon, sim, b = make(CrowdSecConfig(url=url, machine_id="mx1", password="pw"))
    async with Running(mon):
        await mon.actions.ban("203.0.113.1", ttl=600, origin="key")
        assert "203.0.113.1" in sim.bans()  # applied at once; the push is retried behind it
        await until("errors", lambda: b.push_errors >= 3)
        assert mon.store.sources[cs.PUSH_NAME].state == "error" and len(b.outbox) == 1
        notes = [n for n in mon.store.notes if "CrowdSec push failing" in n]
        assert len(notes) == 1  # said once, not on every retry
        # the LAPI comes back on the same port
        from http.server import ThreadingHTTPServer
        lapi.server = ThreadingHTTPServer(("127.0.0.1", lapi.port), lapi.server.RequestHandlerClass)
        lapi.thread = threading.Thread(target=lapi.server.serve_forever, args=(0.05,), daemon=True)
        lapi.thread.start()
        await until("delivered", lambda: len(lapi.alerts) == 1, timeout=5)
        await until("healthy", lambda: mon.store.sources[cs.PUSH_NAME].state == "following")


async def test_slow_lapi_never_delays_a_local_ban(lapi: FakeLapi) -> None:
    lapi.machines["mx1"] = ["pw", True]
    lapi.delay = 3.0
    mon, sim, b = make(CrowdSecConfig(url=lapi.url, machine_id="mx1", password="pw", timeout=2.0))
    async with Running(mon):
        for i in range(5):
            await mon.actions.ban(f"203.0.113.{i + 1}", ttl=600, origin="key")
        # every local ban is in while the first push is still waiting for the LAPI (it cannot
        # time out before 2 s, nor be answered before 3 s): no ban waited for a push
        assert len(sim.bans()) == 5 and b.push_errors == 0 and not lapi.alerts
        await until("timeouts", lambda: b.push_errors >= 1)
        assert "timed out" in mon.store.sources[cs.PUSH_NAME].detail
    assert len(sim.bans()) == 5


def test_outbox_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cs.bridge, "OUTBOX_MAX", 3)
    _, _, b = make(CrowdSecConfig(machine_id="m", password="p"))
    for i in range(5):
        b.on_action("ban", f"203.0.113.{i}", {"origin": "auto", "ttl": 60})
    assert [x[1] for x in b.outbox] == ["203.0.113.2", "203.0.113.3", "203.0.113.4"] and b.dropped == 2
    b.on_action("ban", "203.0.113.9", {"origin": "key", "ok": False})  # refused: nothing to send
    b.on_action("expire", "203.0.113.2", {"origin": "kernel"})
    assert len(b.outbox) == 3


# ------------------------------------------------------------------ pull

async def test_pull_marks_rows_and_checks_the_kernel(lapi: FakeLapi) -> None:
    mon, sim, b = make(CrowdSecConfig(url=lapi.url, bouncer_key="bkey", pull_interval=1.0))
    lapi.add_decision("198.51.100.44", origin="cscli")
    lapi.add_decision("198.18.5.0/24", scope="Range", origin="cscli")
    lapi.add_decision("198.51.100.45", type_="captcha")
    lapi.add_decision("203.0.113.9", origin="crowdsec", scenario="popwatch/auto")
    run_sync(mon.actions.ban("203.0.113.9", ttl=600, origin="auto"))  # pushed by us, in our set
    b.cfg.pull_interval = 0.05
    async with Running(mon):
        await until("fleet bans", lambda: len(mon.store.fleet_bans) == 3)
        assert mon.store.fleet_bans == {
            "198.51.100.44": "cscli; not in this host's set",
            "198.18.5.0/24": "cscli; not in this host's set",
            "203.0.113.9": "popwatch/auto",
        }
        assert mon.store.sources[cs.PULL_NAME].state == "following"
        lapi.delete_decision(1)
        await until("deleted", lambda: "198.51.100.44" not in mon.store.fleet_bans)
        lapi.add_decision("198.51.100.46", duration="300ms")
        await until("new", lambda: "198.51.100.46" in mon.store.fleet_bans)
        await until("expired locally", lambda: "198.51.100.46" not in mon.store.fleet_bans, timeout=3)


async def test_pull_with_a_bad_key_is_denied(lapi: FakeLapi) -> None:
    mon, _, b = make(CrowdSecConfig(url=lapi.url, bouncer_key="nope", pull_interval=0.05))
    async with Running(mon):
        await until("denied", lambda: cs.PULL_NAME in mon.store.sources
                    and mon.store.sources[cs.PULL_NAME].state == "denied")
        await until("retried", lambda: b.pull_errors >= 2)
    assert not mon.store.fleet_bans


async def test_apply_bans_fleet_addresses_locally_but_never_protected_ones(lapi: FakeLapi) -> None:
    mon, sim, b = make(CrowdSecConfig(url=lapi.url, bouncer_key="bkey", pull_interval=0.05, apply=True),
                       allow=["192.0.2.0/24"])
    i1 = lapi.add_decision("198.51.100.44", duration="1h")
    lapi.add_decision("192.0.2.10", duration="1h")  # our office: protected
    async with Running(mon):
        await until("applied", lambda: "198.51.100.44" in sim.bans())
        assert mon.store.bans["198.51.100.44"].origin == "crowdsec"
        left = sim.bans()["198.51.100.44"]
        assert left is not None and 3500 < left <= 3600
        await until("in kernel", lambda: mon.store.fleet_bans.get("198.51.100.44") == "cscli")
        assert "192.0.2.10" not in sim.bans()
        assert mon.store.fleet_bans["192.0.2.10"] == "cscli; not in this host's set"
        assert any("192.0.2.10 not applied here: refused" in n for n in mon.store.notes), mon.store.notes
        lapi.delete_decision(i1)
        await until("lifted", lambda: "198.51.100.44" not in sim.bans())


async def test_pull_metrics(lapi: FakeLapi) -> None:
    mon, sim, b = make(CrowdSecConfig(url=lapi.url, bouncer_key="bkey", pull_interval=0.05))
    m = Metrics(mon, process=False)
    m.collector.extra.append(b.metric_families)
    lapi.add_decision("198.51.100.44")
    async with Running(mon):
        await until("pulled", lambda: b.pull_ok)
    from prometheus_client import generate_latest

    text = generate_latest(m.registry).decode()
    assert 'popwatch_crowdsec_up{direction="pull"} 1.0' in text
    assert 'popwatch_crowdsec_fleet_bans{in_kernel="false"} 1.0' in text


def test_lapi_client_errors_carry_the_status(lapi: FakeLapi) -> None:
    c = Lapi(lapi.url, timeout=2)
    with pytest.raises(LapiError) as e:
        c.stream("wrong", True)
    assert e.value.status == 403 and e.value.auth
    with pytest.raises(LapiError) as e:
        c.login("ghost", "x", [])
    assert e.value.status == 401 and "not found" in str(e.value)
    lapi.close()
    with pytest.raises(LapiError) as e:
        Lapi(lapi.url, timeout=1).stream("bkey", True)
    assert e.value.status is None


async def test_apply_skips_community_lists_and_respects_a_local_unban(lapi: FakeLapi) -> None:
    mon, sim, b = make(CrowdSecConfig(url=lapi.url, bouncer_key="bkey", pull_interval=0.05, apply=True))
    lapi.add_decision("198.51.100.1", origin="CAPI", scenario="crowdsecurity/ssh-bf")
    lapi.add_decision("198.51.100.2", origin="lists", scenario="firehol")
    lapi.add_decision("198.51.100.3", origin="crowdsec", scenario="popwatch/auto")  # another popwatch host
    async with Running(mon):
        await until("applied", lambda: "198.51.100.3" in sim.bans())
        await until("all shown", lambda: len(mon.store.fleet_bans) == 3)
        assert "198.51.100.1" not in sim.bans() and "198.51.100.2" not in sim.bans()
        assert mon.store.fleet_bans["198.51.100.1"] == "CAPI; not in this host's set"
        assert mon.store.fleet_bans["198.51.100.3"] == "popwatch/auto"
        # the admin here disagrees: the unban sticks while the decision lasts (no push here)
        await mon.actions.unban("198.51.100.3", origin="key")
        pulls = lapi.calls.count("GET /v1/decisions/stream")
        await until("several pulls after the unban",
                    lambda: lapi.calls.count("GET /v1/decisions/stream") >= pulls + 3)
        assert "198.51.100.3" not in sim.bans()
        assert mon.store.fleet_bans["198.51.100.3"] == "popwatch/auto; not in this host's set"


def test_apply_origins_config() -> None:
    c = from_table({"bouncer_key": "k", "apply": True, "apply_origins": ["crowdsec", "cscli", "CAPI"]})
    assert c.apply_origins == ("crowdsec", "cscli", "CAPI")
    assert from_table({"bouncer_key": "k"}).apply_origins == ("crowdsec", "cscli")
    with pytest.raises(ConfigError, match="apply_origins"):
        from_table({"bouncer_key": "k", "apply_origins": "CAPI"})


async def test_apply_retries_a_failed_kernel_ban(lapi: FakeLapi) -> None:
    from popwatch.firewall.base import FirewallError

    mon, sim, b = make(CrowdSecConfig(url=lapi.url, bouncer_key="bkey", pull_interval=0.05, apply=True))
    real_ban = sim.ban
    fails = [2]

    def flaky_ban(ip: str, ttl: float | None = None) -> None:
        if fails[0]:
            fails[0] -= 1
            raise FirewallError("ipset: Kernel error received: resource busy")
        real_ban(ip, ttl)
    sim.ban = flaky_ban  # type: ignore[method-assign]
    lapi.add_decision("198.51.100.5")
    async with Running(mon):
        await until("applied after the errors", lambda: "198.51.100.5" in sim.bans())
    assert fails == [0] and not b.apply_errors and not b.not_applied
    assert sum("banning it here failed" in n for n in mon.store.notes) == 1


async def test_a_command_line_ban_adopted_while_running_is_pushed(lapi: FakeLapi) -> None:
    """``popwatch ban`` from another process: the running watch adopts it from the kernel (with
    its saved record, origin cli) and the bridge sends it; bans there at start are not sent."""
    from popwatch.model import Ban

    lapi.machines["mx1"] = ["pw", True]
    sim = SimFirewall(clock=time.time)
    mon = Monitor(store=StateStore(clock=time.time), parser=Parser(now=time.time), firewall=sim,
                  poll_interval=0.05)
    now = time.time()
    mon.store.set_ban(Ban("203.0.113.1", now, now + 600, "restored", "auto"))  # from before the start
    b = CrowdSecBridge(CrowdSecConfig(url=lapi.url, machine_id="mx1", password="pw"), mon, hostname="mx1")
    b.attach()
    async with Running(mon):
        mon.store.set_ban(Ban("203.0.113.2", now, now + 300, "typed by hand", "cli"))  # what the sync does
        mon.store.set_ban(Ban("203.0.113.3", now, None, "found in the kernel", "kernel"))
        b._wake.set()  # type: ignore[union-attr]  (the loop also scans every 5 s)
        await until("pushed", lambda: len(lapi.alerts) == 1)
        # a positive marker for "nothing else is pushed": a later ban is, and alone
        await mon.actions.ban("203.0.113.4", ttl=600, origin="key")
        await until("the later ban pushed", lambda: len(lapi.alerts) == 2)
    a = lapi.alerts[0]
    assert a["source"]["value"] == "203.0.113.2" and a["scenario"] == "popwatch/cli"
    assert 290 <= int(a["decisions"][0]["duration"].rstrip("s")) <= 300
    assert [x["source"]["value"] for x in lapi.alerts] == ["203.0.113.2", "203.0.113.4"]


async def test_queued_bans_are_flushed_when_popwatch_stops(lapi: FakeLapi) -> None:
    lapi.machines["mx1"] = ["pw", True]
    mon, sim, b = make(CrowdSecConfig(url=lapi.url, machine_id="mx1", password="pw"))
    b.on_action("ban", "203.0.113.9", {"origin": "auto", "ttl": 60, "reason": "r"})  # before run()
    await b.flush(3.0)
    assert [a["source"]["value"] for a in lapi.alerts] == ["203.0.113.9"] and not b.outbox


async def test_an_ipv6_ban_is_pushed_as_the_network_it_covers_here(lapi: FakeLapi) -> None:
    import ipaddress

    lapi.machines["mx1"] = ["pw", True]
    mon, sim, b = make(CrowdSecConfig(url=lapi.url, machine_id="mx1", password="pw"))
    # the kernel backends' ban_key: an IPv6 address is banned as its /64
    sim.ban_key = lambda ip, net=None: (str(ipaddress.ip_network(f"{ip}/64", strict=False))  # type: ignore
                                        if ":" in ip and "/" not in ip else ip)
    async with Running(mon):
        await mon.actions.ban("2001:db8:7::5", ttl=600, origin="key")
        await until("pushed", lambda: len(lapi.alerts) == 1)
        await mon.actions.unban("2001:db8:7::5", origin="key")
        await until("deleted", lambda: not lapi.decisions)
    d = lapi.alerts[0]["decisions"][0]
    assert (d["scope"], d["value"]) == ("Range", "2001:db8:7::/64")


async def test_unban_then_ban_again_in_one_batch_ends_banned(lapi: FakeLapi) -> None:
    lapi.machines["mx1"] = ["pw", True]
    mon, _, b = make(CrowdSecConfig(url=lapi.url, machine_id="mx1", password="pw"))
    b.on_action("ban", "203.0.113.9", {"origin": "key", "ttl": 60})
    b.on_action("unban", "203.0.113.9", {"origin": "key"})
    b.on_action("ban", "203.0.113.9", {"origin": "cli", "ttl": 120})
    assert await asyncio.to_thread(b._push_sync, list(b.outbox)) == 2
    assert [(d["value"], d["scenario"]) for d in lapi.decisions.values()] == [("203.0.113.9", "popwatch/cli")]


def test_config_doc_loads_when_uncommented_and_names_every_key() -> None:
    import re
    import tomllib

    from popwatch.config import from_dict

    lines = cs.CONFIG_DOC.splitlines()
    unc = "\n".join(l[2:] if re.match(r"^# (\[[a-z0-9.]+\]$|[a-z_]+ = )", l) else l for l in lines)
    c = from_dict(tomllib.loads(unc)).crowdsec
    assert c.push and c.pull and c.apply_origins == cs.APPLY_ORIGINS
    for k in cs.KEYS:
        assert f"# {k} = " in cs.CONFIG_DOC or k in cs.CONFIG_DOC, k
