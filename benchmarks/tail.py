"""How fast a written line comes out of FileSource.batches(), and what following costs.

    python benchmarks/tail.py [--idle-seconds 30] [--probes 300] [--rate 20000]

Separate writer processes append to a temp file: a probe writer puts ``PROBE <monotonic_ns>``
lines at jittered ~20 ms intervals; for the load case a second writer appends sshd lines at
``--rate`` lines/s, one write() per line like a syslog daemon. Latency is the probe's arrival
time in the consumer minus its write time (CLOCK_MONOTONIC is system-wide). Idle CPU is the
process's user+system time (getrusage, all threads) while following a file nobody writes.
The polling fallback and a bare event loop are measured in the same run as baselines.

Targets (issue 4): median < 20 ms, p99 < 100 ms, idle CPU < 0.5 % of a core.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from popwatch.sources.tail import FileSource  # noqa: E402

PROBE_WRITER = r"""
import os, random, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
n, interval = int(sys.argv[2]), float(sys.argv[3])
for _ in range(n):
    time.sleep(interval * random.uniform(0.5, 1.5))
    os.write(fd, f"PROBE {time.monotonic_ns()} probe line\n".encode())
"""

LOAD_WRITER = r"""
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
rate = int(sys.argv[2])
tick = 0.01
per_tick = max(1, int(rate * tick))
line = ("2026-11-28T05:00:21.664766+00:00 mx sshd[23619]: Failed password for invalid user "
        "admin from 203.0.113.12 port 46396 ssh2\n").encode()
next_t = time.monotonic()
while True:
    for _ in range(per_tick):
        os.write(fd, line)
    next_t += tick
    d = next_t - time.monotonic()
    if d > 0:
        time.sleep(d)
"""


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


async def latency(path: str, *, use_inotify: bool, probes: int, rate: int) -> dict[str, float]:
    """Probe latencies in ms while ``rate`` other lines/s are written (0: idle)."""
    src = FileSource(path, use_inotify=use_inotify)
    lat: list[float] = []
    total = 0

    async def consume() -> None:
        nonlocal total
        async for batch in src.batches():
            now = time.monotonic_ns()
            total += len(batch)
            for ln in batch:
                if ln.text.startswith("PROBE "):
                    lat.append((now - int(ln.text.split()[1])) / 1e6)

    task = asyncio.create_task(consume())
    load: subprocess.Popen[bytes] | None = None
    probe: subprocess.Popen[bytes] | None = None
    try:
        await asyncio.sleep(0.3)
        if rate:
            load = subprocess.Popen([sys.executable, "-c", LOAD_WRITER, path, str(rate)])
            await asyncio.sleep(1.0)  # steady state
        t0, c0, n0 = time.monotonic(), cpu_seconds(), total
        probe = subprocess.Popen([sys.executable, "-c", PROBE_WRITER, path, str(probes), "0.02"])
        while probe.poll() is None:
            await asyncio.sleep(0.1)
        deadline = time.monotonic() + 5
        while len(lat) < probes and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        t1, c1, n1 = time.monotonic(), cpu_seconds(), total
    finally:
        for p in (load, probe):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait()
        await src.aclose()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return {
        "n": len(lat), "median": statistics.median(lat), "p99": pct(lat, 0.99), "max": max(lat),
        "lines_per_s": (n1 - n0) / (t1 - t0), "cpu_pct": 100 * (c1 - c0) / (t1 - t0),
    }


async def idle_cpu(path: str | None, seconds: float, use_inotify: bool = True) -> float:
    """Percent of one core used while following an idle file (``path`` None: no source)."""
    task = None
    src = None
    if path is not None:
        src = FileSource(path, use_inotify=use_inotify)

        async def consume() -> None:
            async for _ in src.batches():  # type: ignore[union-attr]
                pass

        task = asyncio.create_task(consume())
    await asyncio.sleep(0.5)
    c0, t0 = cpu_seconds(), time.monotonic()
    await asyncio.sleep(seconds)
    c1, t1 = cpu_seconds(), time.monotonic()
    if src is not None and task is not None:
        await src.aclose()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return 100 * (c1 - c0) / (t1 - t0)


async def catch_up(path: str, lines: int) -> tuple[float, float]:
    """Lines/s and MB/s when reading a backlog of ``lines`` lines (``from_start``)."""
    line = ("2026-11-28T05:00:21.664766+00:00 mx sshd[23619]: Failed password for invalid user "
            "admin from 203.0.113.12 port 46396 ssh2\n")
    with open(path, "w") as f:
        f.write(line * lines)
    size = os.path.getsize(path)
    src = FileSource(path, from_start=True)
    n = 0
    t0 = time.perf_counter()
    async for batch in src.batches():
        n += len(batch)
        if n >= lines:
            break
    dt = time.perf_counter() - t0
    await src.aclose()
    return n / dt, size / dt / 1e6


def show(name: str, r: dict[str, float]) -> None:
    print(f"{name:<34} n={r['n']:>4.0f}  median {r['median']:6.2f} ms  p99 {r['p99']:7.2f} ms  "
          f"max {r['max']:7.2f} ms  in {r['lines_per_s']:8.0f} lines/s  cpu {r['cpu_pct']:5.1f} %")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--idle-seconds", type=float, default=30.0)
    ap.add_argument("--probes", type=int, default=300)
    ap.add_argument("--rate", type=int, default=20000)
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {time.strftime('%Y-%m-%d %H:%M:%S')}")
    with tempfile.TemporaryDirectory(prefix="popwatch-bench-") as d:
        path = os.path.join(d, "auth.log")
        Path(path).touch()
        show("idle, inotify", await latency(path, use_inotify=True, probes=args.probes, rate=0))
        show(f"{args.rate} lines/s, inotify", await latency(path, use_inotify=True,
                                                            probes=args.probes, rate=args.rate))
        show("idle, polling fallback", await latency(path, use_inotify=False, probes=args.probes // 2, rate=0))
        show(f"{args.rate} lines/s, polling fallback", await latency(
            path, use_inotify=False, probes=args.probes // 2, rate=args.rate))
        lps, mbps = await catch_up(os.path.join(d, "backlog.log"), 500_000)
        print(f"catching up a 500k-line backlog: {lps:,.0f} lines/s ({mbps:.0f} MB/s)")
        s = args.idle_seconds
        print(f"idle CPU over {s:.0f} s, inotify follower:  {await idle_cpu(path, s):.3f} % of a core")
        print(f"idle CPU over {s / 3:.0f} s, polling follower:  "
              f"{await idle_cpu(path, s / 3, use_inotify=False):.3f} % of a core")
        print(f"idle CPU over {s / 3:.0f} s, bare event loop:   {await idle_cpu(None, s / 3):.3f} % of a core")


if __name__ == "__main__":
    asyncio.run(main())
