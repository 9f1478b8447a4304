"""Start-up restore of saved bans: bulk (``ban_many``) vs one ``ban()`` per ban, same run.

Run as root: ``python benchmarks/restore_bulk.py [--backends nft,nftables] [--bans 5000]``.
Everything happens in a network namespace this script creates and deletes (``pwrstbench-*``);
the host's tables are never touched. Documentation addresses only; no packets are sent.

Measured per backend, in one process, against the real kernel:
  * kernel only: ``ban_many(items)`` (nftables: one transaction; nft: one batch of netlink
    ipset adds) vs one ``ban(ip, ttl)`` per item - the path start-up used before;
  * the whole start-up restore (``Monitor.reconcile``: read the kernel, the audit records,
    bans.json) with the bulk path vs the same code with the firewall's ``ban_many`` hidden,
    which makes it restore one by one (the old behaviour).
benchmarks/restore.py measures 300k bans on ``nft``; this one puts ``nft`` and ``nftables``
side by side.
Each figure is checked: every ban is in the kernel afterwards. Ratio = one-by-one / bulk.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.firewall import population, run  # noqa: E402


class OneByOne:
    """The firewall without its bulk call: Monitor.reconcile then bans one by one."""

    def __init__(self, fw: Any) -> None:
        self._fw = fw

    def __getattr__(self, name: str) -> Any:
        if name == "ban_many":
            raise AttributeError(name)
        return getattr(self._fw, name)


def inner(backend: str, n: int) -> dict[str, Any]:
    from popwatch.model import PortLimit
    from popwatch.firewall.detect import make_firewall
    from popwatch.model import Ban
    from popwatch.monitor import Monitor
    from popwatch.parse import Parser
    from popwatch.persist import Persist
    from popwatch.store import StateStore

    lock = f"/tmp/pwrstbench-{os.getpid()}.lock"
    fw = make_firewall(backend, limits=[PortLimit(110)], exempt=[], lock_path=lock)
    fw.install([PortLimit(110)])
    items = population(n)
    sets = (["nft", "flush", "set", "inet", "popwatch", s] for s in ("ban4", "ban6", "ban6n")) \
        if backend == "nftables" else (["ipset", "flush", s] for s in ("popwatch4", "popwatch6"))
    flushes = list(sets)

    def flush() -> None:
        for argv in flushes:
            run(argv)
        assert len(fw.bans()) == 0

    res: dict[str, Any] = {"backend": backend, "bans": n}
    flush()
    t0 = time.perf_counter()
    for ip, ttl in items:
        fw.ban(ip, ttl)
    res["kernel_one_by_one_s"] = round(time.perf_counter() - t0, 3)
    assert len(fw.bans()) == n
    flush()
    t0 = time.perf_counter()
    fw.ban_many(items)
    res["kernel_bulk_s"] = round(time.perf_counter() - t0, 3)
    assert len(fw.bans()) == n
    now = time.time()
    for mode in ("one_by_one", "bulk"):
        flush()
        d = Path(tempfile.mkdtemp(prefix="pwrstbench-"))
        try:
            Persist(d).save_bans([Ban(ip, now - 60, now + ttl, "saved", "auto") for ip, ttl in items])
            own = make_firewall(backend, limits=[PortLimit(110)], exempt=[], lock_path=lock)  # mon.close() closes it
            mon = Monitor(store=StateStore(clock=time.time), parser=Parser(),
                          firewall=own if mode == "bulk" else OneByOne(own), persist=Persist(d))
            t0 = time.perf_counter()
            msgs = mon.reconcile()
            res[f"reconcile_{mode}_s"] = round(time.perf_counter() - t0, 3)
            mon.close()
            assert msgs[0].startswith(f"bans on start: {n} restored"), msgs[:3]
            assert len(fw.bans()) == n
        finally:
            shutil.rmtree(d, ignore_errors=True)
    fw.uninstall()
    fw.close()
    return res


def outer(backends: list[str], n: int) -> int:
    if os.geteuid() != 0:
        print("needs root (it creates a network namespace)", file=sys.stderr)
        return 3
    results = []
    for backend in backends:
        ns = f"pwrstbench-{os.getpid()}-{secrets.token_hex(2)}"
        run(["ip", "netns", "add", ns])
        try:
            cp = subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--inner", backend,
                                 "--bans", str(n)], capture_output=True, text=True, timeout=900,
                                env=dict(os.environ, PYTHONPATH=str(REPO)))
            if cp.returncode != 0:
                print(f"{backend}: exit {cp.returncode}\n{cp.stdout}{cp.stderr}", file=sys.stderr)
                return 1
            results.append(json.loads(cp.stdout))
        finally:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    print(f"start-up restore of {n:,} saved bans (one process per backend, real kernel in a netns)")
    print(f"{'backend':<10} | {'what':<40} | {'one by one':>11} | {'bulk':>8} | ratio")
    for r in results:
        for what, a, b in (("kernel (ban() each vs ban_many)", "kernel_one_by_one_s", "kernel_bulk_s"),
                           ("whole restore (Monitor.reconcile)", "reconcile_one_by_one_s", "reconcile_bulk_s")):
            print(f"{r['backend']:<10} | {what:<40} | {r[a]:>9.3f} s | {r[b]:>6.3f} s | "
                  f"{r[a] / max(r[b], 1e-6):.1f}x")
    print(json.dumps(results))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="nft,nftables")
    ap.add_argument("--bans", type=int, default=5000)
    ap.add_argument("--inner", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.inner:
        print(json.dumps(inner(a.inner, a.bans)))
        return 0
    return outer([b for b in a.backends.split(",") if b], a.bans)


if __name__ == "__main__":
    raise SystemExit(main())
