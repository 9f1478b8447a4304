"""A small network-namespace lab for popwatch's kernel tests (and the later daemon/hydra lab).

Picture (every address is a documentation address; no namespace has a default route)::

    <p>-c0  203.0.113.10  2001:db8:1::10 --\\
    <p>-c1  203.0.113.11  2001:db8:2::11 ---+-- br0 in <p>-sw (no addresses, IPv6 off)
    <p>-c2  203.0.113.12  2001:db8:3::12 --/        |
                                        eth0  <p>-srv  192.0.2.1/24  2001:db8::1/64

The server has on-link routes for 203.0.113.0/24, 198.51.100.0/24 and 2001:db8::/32 only; the
clients have on-link routes for 192.0.2.0/24 and 2001:db8::/64 only. Each client's IPv6 address
is in its own /64, so per-source limits (``--hashlimit-srcmask 64``) see them as different
sources. ``<p>`` is unique per lab (pid + random), so parallel runs never collide.

Use it as a context manager: namespaces and every process the lab started (tracked by PID) are
removed on exit, also when the test failed::

    with Lab() as lab:
        lab.listen()                                   # TCP 110/143/22 in the server ns
        r = lab.burst("c0", 110, count=20)             # 20 connects, 0.5 s timeout each
        assert r.ok == 20

Everything is run with argument lists, bounded in count and time.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tests.deadline import readline_within

SERVER_V4 = "192.0.2.1"
SERVER_V6 = "2001:db8::1"
#: the only ranges lab traffic may go to (RFC 5737 / RFC 3849)
DOC_NETS = tuple(ipaddress.ip_network(n) for n in
                 ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"))
REPO = Path(__file__).resolve().parents[2]


def is_doc_address(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in n for n in DOC_NETS)


@dataclass(frozen=True)
class Client:
    """One client namespace: its short name (``c0``), namespace and addresses."""

    key: str
    ns: str
    v4: str
    v6: str


@dataclass
class BurstResult:
    """What a connect burst saw: accepted connections, timeouts (dropped SYNs), resets."""

    ok: int = 0
    timeout: int = 0
    refused: int = 0
    other: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.ok + self.timeout + self.refused + self.other


# A listener: accepts and closes at once on every port given, v4 and v6; exits by itself.
_LISTENER = r"""
import selectors, socket, sys, time
ports = [int(p) for p in sys.argv[1].split(",")]
deadline = time.monotonic() + float(sys.argv[2])
sel = selectors.DefaultSelector()
for port in ports:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port)); s.listen(512); s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while time.monotonic() < deadline:
    for key, _ in sel.select(timeout=0.5):
        try:
            c, _ = key.fileobj.accept(); c.close()
        except OSError:
            pass
"""

# A bounded burst of TCP connects: each attempt is one SYN (0.5 s timeout < the 1 s retransmit).
_BURST = r"""
import json, socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
timeout, interval, max_s = float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
r = {"ok": 0, "timeout": 0, "refused": 0, "other": 0}
t0 = time.monotonic()
for i in range(count):
    if time.monotonic() - t0 > max_s:
        break
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port)); r["ok"] += 1
    except socket.timeout:
        r["timeout"] += 1
    except ConnectionRefusedError:
        r["refused"] += 1
    except OSError:
        r["other"] += 1
    finally:
        s.close()
    if interval:
        time.sleep(interval)
r["seconds"] = time.monotonic() - t0
print(json.dumps(r))
"""


class Burst:
    """A burst running in the background (see :meth:`Lab.start_burst`)."""

    def __init__(self, lab: "Lab", proc: subprocess.Popen[str], limit: float) -> None:
        self._lab, self._proc, self._limit = lab, proc, limit

    def result(self) -> BurstResult:
        try:
            out, err = self._proc.communicate(timeout=self._limit + 10)
        finally:
            self._lab._forget(self._proc)
        if self._proc.returncode != 0:
            raise RuntimeError(f"burst failed: {err.strip()}")
        d = json.loads(out)
        return BurstResult(d["ok"], d["timeout"], d["refused"], d["other"], d["seconds"])


@dataclass
class Lab:
    """Server + clients joined by a bridge, each in its own network namespace."""

    clients: int = 3
    prefix: str = "pwfw"
    name: str = field(default="")
    server: str = field(init=False, default="")
    switch: str = field(init=False, default="")
    hosts: dict[str, Client] = field(init=False, default_factory=dict)
    _procs: list[subprocess.Popen[str]] = field(init=False, default_factory=list)
    _made: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if not self.name:
            self.name = f"{self.prefix}-{os.getpid()}-{secrets.token_hex(3)}"
        self.server = f"{self.name}-srv"
        self.switch = f"{self.name}-sw"
        for i in range(self.clients):
            key = f"c{i}"
            self.hosts[key] = Client(key, f"{self.name}-{key}", f"203.0.113.{10 + i}",
                                     f"2001:db8:{i + 1:x}::{10 + i}")

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Lab":
        try:
            self.up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20)

    def _add_ns(self, ns: str) -> None:
        self._ip("netns", "add", ns)
        self._made.append(ns)
        self._ip("-n", ns, "link", "set", "lo", "up")

    def up(self) -> None:
        """Create the namespaces, the bridge and the addresses."""
        self._add_ns(self.switch)
        self.run(self.switch, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
        self._ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        self._ip("-n", self.switch, "link", "set", "br0", "up")
        self._add_ns(self.server)
        self._plug(self.server, "vsrv")
        self._ip("-n", self.server, "addr", "add", f"{SERVER_V4}/24", "dev", "eth0")
        self._ip("-n", self.server, "-6", "addr", "add", f"{SERVER_V6}/64", "dev", "eth0", "nodad")
        for net in ("203.0.113.0/24", "198.51.100.0/24"):
            self._ip("-n", self.server, "route", "add", net, "dev", "eth0")
        self._ip("-n", self.server, "-6", "route", "add", "2001:db8::/32", "dev", "eth0")
        for c in self.hosts.values():
            self._add_ns(c.ns)
            self._plug(c.ns, f"v{c.key}")
            self._ip("-n", c.ns, "addr", "add", f"{c.v4}/24", "dev", "eth0")
            self._ip("-n", c.ns, "-6", "addr", "add", f"{c.v6}/64", "dev", "eth0", "nodad")
            self._ip("-n", c.ns, "route", "add", "192.0.2.0/24", "dev", "eth0")
            self._ip("-n", c.ns, "-6", "route", "add", "2001:db8::/64", "dev", "eth0")

    def _plug(self, ns: str, port: str) -> None:
        self._ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self._ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        self._ip("-n", ns, "link", "set", "eth0", "up")

    def close(self) -> None:
        """Stop every process the lab started (by PID), then delete its namespaces."""
        for p in list(self._procs):
            self.stop(p)
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        self._made.clear()

    # ------------------------------------------------------------------ running things
    def run(self, ns: str, argv: Sequence[str], *, check: bool = True, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside namespace ``ns`` and wait for it (bounded by ``timeout``)."""
        cp = subprocess.run(["ip", "netns", "exec", ns, *argv], input=input, capture_output=True,
                            text=True, timeout=timeout)
        if check and cp.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {ns}: exit {cp.returncode}: {cp.stderr.strip()}")
        return cp

    def popen(self, ns: str, argv: Sequence[str], **kw: object) -> subprocess.Popen[str]:
        """Start ``argv`` inside ``ns``; the lab stops it (by PID) on close."""
        env = dict(os.environ, PYTHONPATH=str(REPO))
        p: subprocess.Popen[str] = subprocess.Popen(  # type: ignore[call-overload]
            ["ip", "netns", "exec", ns, *argv], text=True, env=env, cwd=str(REPO), **kw)
        self._procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[str]) -> None:
        """Stop one process this lab started: SIGTERM by PID, then SIGKILL."""
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGTERM)
                p.wait(timeout=5)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=5)
        for s in (p.stdin, p.stdout, p.stderr):
            if s is not None:
                s.close()
        self._forget(p)

    def _forget(self, p: subprocess.Popen[str]) -> None:
        if p in self._procs:
            self._procs.remove(p)

    # ------------------------------------------------------------------ traffic
    def listen(self, ports: Sequence[int] = (110, 143, 22), *, max_seconds: float = 600) -> subprocess.Popen[str]:
        """A TCP listener in the server ns that accepts and closes; returns its process."""
        p = self.popen(self.server, [sys.executable, "-c", _LISTENER, ",".join(map(str, ports)),
                                     str(max_seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert p.stdout is not None
        try:
            line = readline_within(p.stdout, 30, "the listener")
        except TimeoutError:
            line = ""
        if line.strip() != "ready":
            self.stop(p)
            raise RuntimeError("listener did not start")
        return p

    def start_burst(self, client: str, port: int, count: int, *, family: int = 4,
                    timeout: float = 0.5, interval: float = 0.0, max_seconds: float = 30.0,
                    target: str | None = None) -> Burst:
        """Start ``count`` sequential connects from ``client`` to the server (bounded by
        ``max_seconds``); collect with ``.result()``."""
        host = target or (SERVER_V4 if family == 4 else SERVER_V6)
        if not is_doc_address(host):
            raise ValueError(f"{host} is not a documentation address: refusing to send traffic")
        if not 1 <= count <= 10000 or max_seconds > 300:
            raise ValueError("bursts are bounded: 1-10000 connects, at most 300 s")
        c = self.hosts[client]
        p = self.popen(c.ns, [sys.executable, "-c", _BURST, host, str(port), str(count), str(timeout),
                              str(interval), str(max_seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return Burst(self, p, max_seconds + count * timeout)

    def burst(self, client: str, port: int, count: int, **kw: object) -> BurstResult:
        """Like :meth:`start_burst`, waiting for the result."""
        return self.start_burst(client, port, count, **kw).result()  # type: ignore[arg-type]


def cleanup_stale(prefix: str = "pwfw-") -> list[str]:
    """Delete namespaces left by a crashed run of *this* suite whose creating pid is gone."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    removed = []
    for line in out.splitlines():
        ns = line.split()[0] if line.split() else ""
        parts = ns.split("-")
        if ns.startswith(prefix) and len(parts) > 2 and parts[1].isdigit():
            if not Path(f"/proc/{parts[1]}").exists():
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
                removed.append(ns)
    return removed
