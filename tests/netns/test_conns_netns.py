"""popwatch.conns against the real kernel: established TCP connections in a server namespace,
from client namespaces that keep them open (as hydra does), read over netlink (sock_diag) and
from /proc/net/tcp{,6}; both must say the same."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import need_tools

from .nslab import REPO, SERVER_V4, SERVER_V6, Lab

pytestmark = pytest.mark.netns

# a dual-stack listener that never accepts: the kernel completes the handshakes (the accept
# queue), so the connections are ESTABLISHED in the server's socket table; IPv4 peers show as
# ::ffff:a.b.c.d on this socket
_SERVER = r"""
import socket, sys, time
socks = []
for port in map(int, sys.argv[1].split(",")):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port)); s.listen(64); socks.append(s)
print("ready", flush=True)
sys.stdin.read()  # until the test closes stdin (or the lab stops us)
"""

# hold n connections open to host:port until stdin closes (bounded by the lab's stop)
_HOLD = r"""
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
held = []
for _ in range(n):
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(3); s.connect((host, port)); held.append(s)
print("ready", flush=True)
sys.stdin.read()
"""

_READ = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from popwatch import conns
ports = (22, 110, 143)
out = {}
for name, pairs in (("netlink", conns._netlink_pairs()), ("proc", conns._proc_pairs())):
    out[name] = {p: [c.established, c.top_ip, c.top_n, c.sources] for p, c in conns.summarize(pairs, ports).items()}
out["established"] = {p: c.established for p, c in conns.established(ports).items()}
print(json.dumps(out))
"""


def start(lab: Lab, ns: str, code: str, *args: str) -> subprocess.Popen[str]:
    p = lab.popen(ns, [sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE)
    assert p.stdout is not None
    line = p.stdout.readline()
    if line.strip() != "ready":
        lab.stop(p)
        raise RuntimeError(f"{args}: did not start")
    return p


def read(lab: Lab) -> dict[str, Any]:
    out = json.loads(lab.run(lab.server, [sys.executable, "-c", _READ, str(REPO)], timeout=30).stdout)
    return {k: {int(p): v for p, v in d.items()} for k, d in out.items()}


@pytest.fixture
def lab() -> Any:
    need_tools("ip")
    with Lab() as lab:
        yield lab


def test_established_connections_per_port_and_top_source(lab: Lab) -> None:
    start(lab, lab.server, _SERVER, "110,143,22")
    before = read(lab)
    assert before["netlink"][110][0] == 0 and before["proc"][110][0] == 0
    c0 = lab.hosts["c0"]
    c1 = lab.hosts["c1"]
    a = start(lab, c0.ns, _HOLD, SERVER_V4, "110", "3")      # the hydra-like one: 3 kept open
    start(lab, c1.ns, _HOLD, SERVER_V6, "110", "1")          # one over IPv6
    start(lab, c1.ns, _HOLD, SERVER_V4, "22", "2")
    got = read(lab)
    for how in ("netlink", "proc"):
        assert got[how][110] == [4, c0.v4, 3, 2], (how, got)       # ::ffff: normalised away
        assert got[how][22] == [2, c1.v4, 2, 1], (how, got)
        assert got[how][143] == [0, "", 0, 0], (how, got)
    assert got["established"] == {110: 4, 22: 2, 143: 0}
    # the attacker hangs up: its connections leave the table
    assert a.stdin is not None
    a.stdin.close()
    a.wait(timeout=10)
    lab._forget(a)
    after = read(lab)
    for how in ("netlink", "proc"):
        assert after[how][110] == [1, c1.v6, 1, 1], (how, after)
