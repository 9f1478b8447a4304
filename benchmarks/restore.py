"""Restoring saved bans after a reboot: ``bans.json`` with N bans -> the kernel's ban sets,
through :meth:`Monitor.reconcile` (one audit record, one bulk ``ban_many``), against the
baseline of the same reconcile with one ``Firewall.ban`` per entry (netlink), in the same run.

    sudo python benchmarks/restore.py [--bans 300000]

Everything happens in a throwaway network namespace (``pwrestore-<pid>``) with the real
``nft`` backend (iptables-nft + ipset); the host's tables are never touched. Addresses are
IPv6 documentation space (2001:db8::/32, one /64 each) and 198.51.100.0/24 + 203.0.113.0/24.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(n: int, sample: int) -> None:
    sys.path.insert(0, str(REPO))
    from popwatch.model import PortLimit, Rate
    from popwatch.firewall.iptables import IptablesFirewall
    from popwatch.model import Ban
    from popwatch.monitor import Monitor
    from popwatch.persist import Persist
    from popwatch.store import StateStore

    fw = IptablesFirewall(flavour="nft", exempt=[], lock_path=tempfile.mktemp(prefix="pwrestore-lock-"))
    fw.install([PortLimit(110, "count", Rate.parse("1/second"), 5)])
    now = time.time()
    bans = [Ban(f"2001:db8:{i >> 16:x}:{i & 0xffff:x}::1", now, now + 3600, "saved", "auto") for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="pwrestore-", dir="/var/tmp") as d:
        p = Persist(Path(d))
        p.save_bans(bans)
        mon = Monitor(store=StateStore(clock=time.time), parser=None, firewall=fw, persist=p)
        t0 = time.perf_counter()
        msgs = mon.reconcile()
        dt = time.perf_counter() - t0
        have = len(fw.bans())
        print(f"restore {n} saved bans (reconcile, bulk): {dt:6.2f} s  -> {have} in the kernel")
        for m in msgs[:3]:
            print(f"  {m}")
        for s in ("popwatch4", "popwatch6"):
            subprocess.run(["ipset", "flush", s], check=True)
        fw.ban_many = None  # type: ignore[method-assign]  # baseline: the same reconcile, one ban at a time
        mon = Monitor(store=StateStore(clock=time.time), parser=None, firewall=fw, persist=p)
        t0 = time.perf_counter()
        mon.reconcile()
        base = time.perf_counter() - t0
        print(f"baseline, same reconcile with one netlink ban per entry: {base:6.2f} s -> "
              f"{len(fw.bans())} in the kernel")
        print(f"bulk restore: {base / dt:.1f}x faster than one ban at a time")
    fw.uninstall()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bans", type=int, default=300_000)
    ap.add_argument("--sample", type=int, default=5000)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.bans, a.sample)
        return
    if os.geteuid() != 0:
        raise SystemExit("run as root (it builds a throwaway network namespace)")
    ns = f"pwrestore-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--child", "--bans", str(a.bans),
                        "--sample", str(a.sample)], check=True, timeout=900,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    main()
