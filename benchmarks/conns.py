"""Cost of reading the socket table once per poll (popwatch/conns.py), by open connections.

    sudo python benchmarks/conns.py [--counts 100,1000,4000] [--reads 20]

In a throwaway network namespace lab (tests/netns/nslab.py, prefix ``pwconn-bench``): the server
namespace accepts and keeps every connection on port 110; a client namespace holds N connections
open (documentation addresses only). Inside the server namespace it times, per N, the median of
``--reads`` reads of: popwatch's /proc/net/tcp{,6} reader (the baseline, same process), its
netlink reader (sock_diag via pyroute2, the fallback), and ``established()`` (what the poll
calls: read + per-port summary). It prints milliseconds per read, the ratio to the baseline, and the share of
the 1 s poll interval (the read runs off the UI loop, in the poll's executor).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.netns.nslab import SERVER_V4, Lab

_SERVER = r"""
import selectors, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 110)); s.listen(4096)
import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
held = []
print("ready", flush=True)
s.settimeout(300)
while True:
    c, _ = s.accept(); held.append(c)
"""

_CLIENT = r"""
import resource, socket, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
host, n = sys.argv[1], int(sys.argv[2])
held = []
for _ in range(n):
    c = socket.create_connection((host, 110), timeout=5); held.append(c)
print("ready", flush=True)
sys.stdin.read()
"""

_TIME = r"""
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
from popwatch import conns
reads = int(sys.argv[2])
def med(f):
    ts = []
    for _ in range(reads):
        t = time.perf_counter(); r = f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1000, r
nl, pairs = med(conns._netlink_pairs)
pr, _ = med(conns._proc_pairs)
es, summ = med(lambda: conns.established((110, 143, 22)))
print(json.dumps({"netlink_ms": nl, "proc_ms": pr, "established_ms": es, "open_110": summ[110].established,
                  "sockets": len(pairs)}))
"""


def ready(p: subprocess.Popen[str]) -> None:
    assert p.stdout is not None
    if p.stdout.readline().strip() != "ready":
        raise RuntimeError("helper did not start")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="100,1000,4000")
    ap.add_argument("--reads", type=int, default=20)
    args = ap.parse_args()
    counts = [int(x) for x in args.counts.split(",")]
    if max(counts) > 10000 or args.reads > 200:
        raise SystemExit("bounded: at most 10000 connections, 200 reads")
    print(f"{'open':>6} {'netlink ms':>11} {'/proc ms':>9} {'ratio':>6} {'established() ms':>17} {'of 1 s poll':>12}")
    for n in counts:
        with Lab(clients=1, prefix="pwconn-bench") as lab:
            srv = lab.popen(lab.server, [sys.executable, "-c", _SERVER], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
            ready(srv)
            cli = lab.popen(lab.hosts["c0"].ns, [sys.executable, "-c", _CLIENT, SERVER_V4, str(n)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            ready(cli)
            r = json.loads(lab.run(lab.server, [sys.executable, "-c", _TIME, str(REPO), str(args.reads)],
                                   timeout=300).stdout)
            assert r["open_110"] == n, r
            print(f"{n:>6} {r['netlink_ms']:>11.2f} {r['proc_ms']:>9.2f} {r['netlink_ms'] / r['proc_ms']:>6.2f} "
                  f"{r['established_ms']:>17.2f} {r['established_ms'] / 1000:>12.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
