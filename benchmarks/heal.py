"""What the enforcement check adds to each counter poll, and what closing a banned address's
connections costs.

Run as root: ``python benchmarks/heal.py [--backends nft,legacy] [--samples 300]``.
Everything happens in a network namespace this script creates and deletes (``pwhealbench-*``);
the host's tables are never touched; addresses are documentation ranges; the only packets are
loopback connections inside that namespace.

Measured per backend, same run:
  * one counter poll (``counters()``, v4 + v6), the baseline;
  * one poll plus ``check_enforcement()`` (the per-poll price of noticing removed rules);
  * for comparison, a full ``iptables-save`` (what a naive check would read every poll);
  * ``repair()`` after ``iptables -F`` (time from detection to rules back);
  * ``close_connections()`` for one address among 200 open loopback connections
    (two socket dumps + one SOCK_DESTROY per connection).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def stats(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"median_ms": round(statistics.median(xs) * 1e3, 3),
            "p99_ms": round(xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1e3, 3), "n": len(xs)}


def timed(fn: Callable[[], Any], n: int, before: Callable[[], Any] | None = None) -> dict[str, float]:
    out = []
    for _ in range(n):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return stats(out)


def run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


def inner(backend: str, samples: int) -> dict[str, Any]:
    from popwatch.model import PortLimit, Rate

    lock = f"/tmp/pwhealbench-{os.getpid()}.lock"
    if backend == "nft":
        from popwatch.firewall.iptables import IptablesFirewall
        fw: Any = IptablesFirewall(flavour="nft", lock_path=lock)
        ipt, save = "iptables-nft", "iptables-nft-save"
    else:
        from popwatch.firewall.iptc_backend import IptcFirewall
        fw = IptcFirewall(lock_path=lock)
        ipt, save = "iptables-legacy", "iptables-legacy-save"
    run(["ip", "link", "set", "lo", "up"])
    for args in (["-A", "INPUT", "-i", "lo", "-j", "ACCEPT"], ["-A", "INPUT", "-p", "tcp", "--dport", "25", "-j", "ACCEPT"]):
        run([ipt, "-w", *args])
    fw.install([PortLimit(110, "per-source", Rate.parse("5/second"), 10),
                PortLimit(143, "global", Rate.parse("5/second"), 10), PortLimit(22)])
    res: dict[str, Any] = {"backend": backend}
    res["poll"] = timed(fw.counters, samples)

    def poll_and_check() -> None:
        fw.counters()
        assert fw.check_enforcement() == []
    res["poll_and_check"] = timed(poll_and_check, samples)
    res["iptables_save"] = timed(lambda: run([save]), max(20, samples // 5))

    def flush() -> None:
        run([ipt, "-w", "-F"])
        fw.counters()
        assert fw.check_enforcement()
    res["repair"] = timed(lambda: fw.repair({}), max(10, samples // 20), before=flush)

    # 200 loopback connections: 20 from the "banned" address, the rest from others
    run(["ip", "addr", "add", "203.0.113.10/32", "dev", "lo"])
    run(["ip", "addr", "add", "203.0.113.11/32", "dev", "lo"])
    lsn = socket.socket()
    lsn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsn.bind(("203.0.113.11", 8110))  # not a watched port: no limit in the way
    lsn.listen(512)
    held: list[socket.socket] = []

    def open_conns() -> None:
        for s in held:
            s.close()
        held.clear()
        for i in range(200):
            c = socket.socket()
            c.settimeout(2)
            c.bind(("203.0.113.10" if i < 20 else "203.0.113.11", 0))
            c.connect(("203.0.113.11", 8110))
            held.append(c)
            held.append(lsn.accept()[0])
    counts: list[int] = []
    res["close_20_of_200"] = timed(lambda: counts.append(fw.close_connections(["203.0.113.10"]).get("203.0.113.10", 0)),
                                   max(10, samples // 20), before=open_conns)
    res["closed_each_time"] = sorted(set(counts))
    fw.uninstall()
    return res


def outer(backends: list[str], samples: int) -> int:
    if os.geteuid() != 0:
        print("needs root (it creates a network namespace)", file=sys.stderr)
        return 3
    results = []
    for backend in backends:
        ns = f"pwhealbench-{os.getpid()}-{secrets.token_hex(2)}"
        run(["ip", "netns", "add", ns])
        try:
            cp = subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--inner", backend,
                                 "--samples", str(samples)], capture_output=True, text=True, timeout=600,
                                env=dict(os.environ, PYTHONPATH=str(REPO)))
            if cp.returncode != 0:
                print(cp.stderr, file=sys.stderr)
                return 1
            results.append(json.loads(cp.stdout))
        finally:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    for r in results:
        p, pc, s = r["poll"], r["poll_and_check"], r["iptables_save"]
        print(f"\n== backend {r['backend']}")
        print(f"counter poll:                  {p['median_ms']:.3f} ms median, {p['p99_ms']:.3f} ms p99")
        print(f"poll + check_enforcement:      {pc['median_ms']:.3f} ms median, {pc['p99_ms']:.3f} ms p99"
              f"   (+{pc['median_ms'] - p['median_ms']:.3f} ms, x{pc['median_ms'] / p['median_ms']:.2f} the poll)")
        print(f"baseline, a full iptables-save: {s['median_ms']:.3f} ms median"
              f"   (check is x{s['median_ms'] / max(1e-6, pc['median_ms'] - p['median_ms']):.0f} cheaper)")
        print(f"repair after iptables -F:      {r['repair']['median_ms']:.2f} ms median, {r['repair']['p99_ms']:.2f} ms p99")
        print(f"close 20 of 200 connections:   {r['close_20_of_200']['median_ms']:.2f} ms median "
              f"(closed {r['closed_each_time']} each time)")
    print(json.dumps(results))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="nft,legacy")
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--inner", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.inner:
        print(json.dumps(inner(a.inner, a.samples)))
        return 0
    return outer([b for b in a.backends.split(",") if b], a.samples)


if __name__ == "__main__":
    raise SystemExit(main())
