"""What the write-ahead audit log costs auto-ban: bans per second through the Monitor's real
path (parse -> auto-ban -> audit -> firewall), three ways in the same run:

* baseline: no state dir (no audit file at all);
* write-ahead, batched: the batch's records in one write + one fsync, then the kernel (what
  popwatch does);
* write-ahead, one fsync per record (what "durable before the action" costs done naively).

And the TUI's mass ban (``B``, campaign ``x``/``X``: ``Actions.ban_many``), the same run:

* one job: every write-ahead record in one write + one fsync, the history in one (what
  ``ban_many`` does);
* one ban at a time: ``_ban_fw`` per address (an audit fsync and a history fsync each: what
  ``ban_many`` did before).

    python benchmarks/audit.py [--bans 20000] [--batch 2000] [--mass 500]

The firewall is the simulated one (the benchmark is about the disk, not the kernel: see
benchmarks/firewall.py for the netlink cost of a ban). The state dir is a temp dir on the same
filesystem as /var/tmp (a real disk with fsync, not tmpfs, when /var/tmp is one).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from popwatch.config import PolicyConfig
from popwatch.firewall.sim import SimFirewall
from popwatch.model import RawLine
from popwatch.monitor import Monitor
from popwatch.parse import Parser
from popwatch.persist import Persist
from popwatch.store import StateStore


def lines(n: int) -> list[RawLine]:
    out = []
    for i in range(n):
        a, b = divmod(i, 65536)
        ip = f"2001:db8:{a:x}:{b:x}::1"
        out.append(RawLine(f"Dec  7 05:00:00 mail sshd[7]: Failed password for root from {ip} port 22 ssh2",
                           "bench", i + 1))
    return out


async def run(mode: str, batch: list[RawLine], step: int) -> tuple[float, int, int]:
    pol = PolicyConfig()
    pol.maxretry, pol.auto_ban = 1, True
    tmp = Path(tempfile.mkdtemp(prefix="pw-audit-bench-", dir="/var/tmp"))
    try:
        persist = None if mode == "none" else Persist(tmp / "state")
        if mode == "per-record" and persist is not None:  # the naive way: one fsync per record
            write = persist.write_audit
            persist.write_audit = lambda recs: [write([r]) for r in recs]  # type: ignore[method-assign]
        store = StateStore(clock=time.time)
        mon = Monitor(store=store, parser=Parser(now=time.time), firewall=SimFirewall(), persist=persist,
                      policy=pol)
        mon.running = True  # the running path (firewall thread, batched records)
        t0 = time.perf_counter()
        for i in range(0, len(batch), step):
            mon.ingest(batch[i:i + step])
            await asyncio.sleep(0)
        deadline = time.monotonic() + 300
        while len(store.bans) < len(batch) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        dt = time.perf_counter() - t0
        fsyncs = 0
        if persist is not None:
            fsyncs = sum(1 for r in persist.read_audit() if r["action"] == "ban")
        mon.fw_thread.drain()
        mon.io_thread.shutdown(wait=True)
        return dt, len(store.bans), fsyncs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def mass(mode: str, n: int) -> tuple[float, int]:
    """A mass ban of ``n`` addresses through the TUI's path (:meth:`Actions.ban_many`), or
    through the former one (``_ban_fw`` per address, on the firewall thread); seconds, bans."""
    from popwatch.actions import ActionResult

    ips = [f"2001:db8:{i >> 16:x}:{i & 0xffff:x}::1" for i in range(n)]
    tmp = Path(tempfile.mkdtemp(prefix="pw-audit-bench-", dir="/var/tmp"))
    try:
        mon = Monitor(store=StateStore(clock=time.time), parser=Parser(now=time.time), firewall=SimFirewall(),
                      persist=Persist(tmp / "state"), policy=PolicyConfig())
        mon.running = True  # bans.json by the poll, as in the TUI
        a = mon.actions
        t0 = time.perf_counter()
        if mode == "one job":
            done, _ = await a.ban_many(ips, ttl=3600, reason="bench", origin="key")
        else:
            def job() -> list[ActionResult]:
                return a._closed_after([a._ban_fw(ip, 3600, "bench", "key", False, close=False) for ip in ips])
            done = [a._after_ban(r) for r in await mon.fw_thread.run(job)]
        dt = time.perf_counter() - t0
        mon.fw_thread.drain()
        mon.io_thread.shutdown(wait=True)
        return dt, len(done)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bans", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=2000, help="lines per ingest call (the sources' slice)")
    ap.add_argument("--mass", type=int, default=500, help="addresses in the TUI mass ban (0: skip it)")
    a = ap.parse_args()
    batch = lines(min(a.bans, 200_000))
    res = {}
    for mode in ("none", "batched", "per-record"):
        dt, n, recs = asyncio.run(run(mode, batch, a.batch))
        res[mode] = dt
        print(f"{mode:<11} {n:>7} bans in {dt:6.2f} s = {n / dt:>8.0f} bans/s   audit records {recs}")
    base = res["none"]
    print(f"write-ahead batched:    {res['batched'] / base:5.2f}x the time without an audit log")
    print(f"write-ahead per record: {res['per-record'] / base:5.2f}x the time without an audit log "
          f"({res['per-record'] / res['batched']:.1f}x batched)")
    if a.mass:
        got = {}
        for mode in ("one at a time", "one job"):
            dt, n = asyncio.run(mass(mode, a.mass))
            got[mode] = dt
            print(f"mass ban, {mode:<13} {n:>6} bans in {dt:6.3f} s = {n / dt:>8.0f} bans/s")
        print(f"mass ban: one job takes {got['one job'] / got['one at a time']:.2f}x the time of one at a time "
              f"({got['one at a time'] / got['one job']:.1f}x faster)")


if __name__ == "__main__":
    main()
