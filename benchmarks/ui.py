#!/usr/bin/env python3
"""UI responsiveness figures for issue 6 (printed, never asserted).

    python benchmarks/ui.py [--quick] [--skip-idle] [--idle-seconds 30]

1. Render tick with 100,000 attackers and 1,000 of them changing per tick, at 80x24 and
   160x50, sorted by failures and by rate: the store snapshot plus the widget updates
   (``refresh_view``), and the same plus the repaint (until the headless pilot is idle),
   against a baseline of the same app with 1,000 attackers. Also the cost of the naive full
   pass per tick it replaces.
2. Key latency while 50,000 lines/s are ingested through the real path (source -> Monitor ->
   parser -> store, bounded slices, gc.freeze in the poller) with 100,000 attackers in the
   store: time from a key event posted to the app until its action runs (``j``, cursor down),
   p50/p99 over a few hundred presses; also the ingest rate actually reached.
3. Idle CPU under tmux with a real terminal: the app on a finished replay (no new lines), the
   process's utime+stime from /proc/<pid>/stat over ``--idle-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import heapq
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import AsyncIterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from popwatch.model import PortLimit, Rate  # noqa: E402
from popwatch.firewall.sim import SimFirewall  # noqa: E402
from popwatch.model import AuthEvent, RawLine, SourceHealth  # noqa: E402
from popwatch.monitor import Monitor  # noqa: E402
from popwatch.parse import Parser  # noqa: E402
from popwatch.policy import Protector  # noqa: E402
from popwatch.sources.base import Source  # noqa: E402
from popwatch.sources.replay import ReplaySource  # noqa: E402
from popwatch.store import StateStore  # noqa: E402

T0 = 1_795_000_000.0
USERS = ["root", "admin", "test", "info", "sales", "oracle", "postgres", "guest", "support", "www"]
SERVICES = ["ssh", "pop3", "imap"]
LIMITS = [PortLimit(110, "global", Rate.of(1, 1), 1), PortLimit(143, "count"), PortLimit(22, "count")]


def ip_of(i: int) -> str:
    return f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q / 100 * len(v)))]


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_monitor(clock, sources=(), n_ips: int = 0) -> Monitor:  # noqa: ANN001
    store = StateStore(clock=clock)
    sim = SimFirewall(clock=clock)
    mon = Monitor(store=store, parser=Parser(now=clock), sources=list(sources), firewall=sim,
                  protector=Protector(allow=["192.0.2.0/24"]), mono=time.monotonic)
    mon.start_firewall(LIMITS)
    if n_ips:
        rng = random.Random(1)
        now = clock()
        batch = [AuthEvent(ts=now - rng.random() * 100, service=rng.choice(SERVICES), kind="auth_failed",
                           ip=ip_of(i), user=rng.choice(USERS), attempts=rng.randint(1, 9)) for i in range(n_ips)]
        for j in range(0, len(batch), 10_000):
            store.add_events(batch[j:j + 10_000])
    return mon


# ------------------------------------------------------------------ 1. render tick
async def render_tick(n_ips: int, size: tuple[int, int], sort: str, ticks: int) -> tuple[list[float], list[float]]:
    from popwatch.ui.app import make_app

    clock = Clock(T0)
    mon = make_monitor(clock, n_ips=n_ips)
    gc.collect()
    gc.freeze()  # as Monitor's poller does with the long-lived state in production
    app = make_app(mon, mode="demo", host="bench", run_monitor=False, tick=3600)
    rng = random.Random(2)
    view_ms: list[float] = []
    paint_ms: list[float] = []
    async with app.run_test(size=size) as pilot:
        app.sort = sort
        app.refresh_view(force=True)
        await pilot.pause()
        for _ in range(ticks):
            clock.t += 0.25
            changed = [AuthEvent(ts=clock.t, service=rng.choice(SERVICES), kind="auth_failed",
                                 ip=ip_of(rng.randrange(max(1, n_ips))), user=rng.choice(USERS))
                       for _ in range(1000)]
            mon.store.add_events(changed)
            t, c = time.perf_counter(), time.process_time()
            app.refresh_view(force=True)
            t1 = time.perf_counter()
            await pilot.pause()
            c2 = time.process_time()
            view_ms.append((t1 - t) * 1000)
            paint_ms.append((c2 - c) * 1000)  # CPU, not wall: pause() also sleeps
    return view_ms, paint_ms


def naive_full_pass_ms(n_ips: int, reps: int = 5) -> float:
    clock = Clock(T0)
    mon = make_monitor(clock, n_ips=n_ips)
    attackers = list(mon.store.attackers.values())
    t = time.perf_counter()
    for _ in range(reps):
        heapq.nlargest(200, attackers, key=lambda a: a.rate(clock.t))
    return (time.perf_counter() - t) / reps * 1000


# ------------------------------------------------------------------ 2. key latency
class FloodSource(Source):
    """``rate`` lines/s, in batches every ``period`` s: 20% sshd failures from 100,000 addresses,
    the rest realistic unrelated syslog traffic (cron, kernel, systemd, postfix)."""

    name = "flood"

    def __init__(self, clock: Clock, rate: int = 50_000, period: float = 0.05) -> None:
        self.clock = clock
        self.rate = rate
        self.period = period
        self.sent = 0
        rng = random.Random(5)
        noise = [
            "CRON[{p}]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)",
            "kernel: [12345.678901] [UFW BLOCK] IN=eth0 OUT= SRC=198.51.100.{o} DST=192.0.2.1 LEN=40 PROTO=TCP "
            "SPT=4444 DPT=23 WINDOW=1024 SYN URGP=0",
            "systemd[1]: Started session-{p}.scope - Session {p} of User root.",
            "postfix/smtpd[{p}]: connect from unknown[198.51.100.{o}]",
            "postfix/qmgr[{p}]: 4F2A{p}: removed",
            "dovecot: imap(alice)<{p}><abcdef>: Logged out in=120 out=4242",
        ]
        self.lines: list[str] = []
        for i in range(200_000):
            stamp = "2026-11-18T06:00:00.000000+00:00 mail1 "
            if rng.random() < 0.2:
                n = rng.randrange(100_000)
                self.lines.append(f"{stamp}sshd[{1000 + i % 60000}]: Failed password for {rng.choice(USERS)} "
                                  f"from {ip_of(n)} port {40000 + i % 20000} ssh2")
            else:
                self.lines.append(stamp + rng.choice(noise).format(p=1000 + i % 60000, o=i % 250))

    async def batches(self) -> AsyncIterator[list[RawLine]]:
        per = int(self.rate * self.period)
        start = time.monotonic()
        k = 0
        n = len(self.lines)
        while True:
            i = (k * per) % n
            chunk = self.lines[i:i + per]
            yield [RawLine(t, "flood", None) for t in chunk]
            self.sent += len(chunk)
            k += 1
            delay = start + k * self.period - time.monotonic()
            await asyncio.sleep(max(0.0, delay))

    def health(self) -> SourceHealth:
        return SourceHealth("flood", "following", "", self.sent)


async def key_latency(presses: int, rate: int, ingest_slice: int | None = None) -> dict[str, float]:
    from textual import events

    from popwatch.ui.app import make_app
    from popwatch.ui.widgets import AttackerTable

    import popwatch.monitor

    if ingest_slice is not None:
        popwatch.monitor.INGEST_SLICE = ingest_slice
    clock = Clock(T0)
    src = FloodSource(clock, rate=rate)
    mon = make_monitor(clock, sources=[src], n_ips=100_000)
    app = make_app(mon, mode="demo", host="bench", run_monitor=True)  # default tick (2 Hz)
    lat: list[float] = []
    sent_at: list[float] = []
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.query_one(AttackerTable)
        orig = table.action_cursor

        def probe(d: int) -> None:
            if sent_at:  # keys are handled in order: the oldest unanswered press is this one
                lat.append((time.perf_counter() - sent_at.pop(0)) * 1000)
            orig(d)

        table.action_cursor = probe  # type: ignore[method-assign]
        await asyncio.sleep(3.0)  # warm up: the flood is running, gc.freeze has happened
        lines0, t0 = mon.lines_in, time.perf_counter()
        for i in range(presses):
            clock.t += 0.01
            sent_at.append(time.perf_counter())
            key = "j" if (i // 20) % 2 == 0 else "k"
            app.post_message(events.Key(key, key))
            await asyncio.sleep(0.05 + random.random() * 0.02)
        for _ in range(100):
            if not sent_at:
                break
            await asyncio.sleep(0.05)
        lines_s = (mon.lines_in - lines0) / (time.perf_counter() - t0)
        await pilot.pause()
    mon.close()
    return {"p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99), "max": max(lat),
            "n": len(lat), "lines_s": lines_s, "ips": len(mon.store.attackers)}


# ------------------------------------------------------------------ 3. idle CPU
def idle_child(pidfile: str) -> None:
    """The app on a replay that has ended: nothing new arrives (run by the parent in tmux)."""
    from popwatch.demo import FrozenDemo
    from popwatch.ui.app import make_app

    demo = FrozenDemo()
    demo.advance(120)  # a screen full of attackers, then the scenario stops: its clock is frozen
    mon = demo.monitor
    mon.sources = [ReplaySource([], name="auth.log")]
    Path(pidfile).write_text(str(os.getpid()))
    make_app(mon, mode="demo", host="idle-bench", run_monitor=True).run()


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(seconds: float) -> float | None:
    if shutil.which("tmux") is None:
        print("  tmux not installed: skipped")
        return None
    pidfile = tempfile.mktemp(prefix="popwatch-idle-")
    session = f"popwatch-idle-{os.getpid()}"
    cmd = f"{sys.executable} {Path(__file__).resolve()} --idle-child {pidfile}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24", cmd], check=True,
                   env={**os.environ, "TERM": "xterm-256color"})
    try:
        for _ in range(100):
            if Path(pidfile).exists() and Path(pidfile).read_text():
                break
            time.sleep(0.1)
        pid = int(Path(pidfile).read_text())
        time.sleep(5.0)  # start-up done
        c0, t0 = cpu_of(pid), time.monotonic()
        time.sleep(seconds)
        c1, t1 = cpu_of(pid), time.monotonic()
        screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                text=True).stdout
        if "idle-bench" not in screen:
            print("  warning: the app's screen was not seen in tmux:\n" + screen)
        return (c1 - c0) / (t1 - t0) * 100
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
        Path(pidfile).unlink(missing_ok=True)


# ------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer ticks and presses")
    ap.add_argument("--skip-idle", action="store_true")
    ap.add_argument("--idle-seconds", type=float, default=30.0)
    ap.add_argument("--rate", type=int, default=50_000, help="lines/s for the key-latency run")
    ap.add_argument("--idle-child", metavar="PIDFILE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.idle_child:
        idle_child(args.idle_child)
        return 0
    ticks = 20 if args.quick else 60
    presses = 100 if args.quick else 400
    print(f"popwatch UI benchmark (python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")

    print("\n1. render tick: 1,000 attackers change per tick (ms; refresh_view = store snapshot + widgets"
          " (wall), +paint = CPU time of the whole tick until the headless pilot is idle)")
    print(f"  naive full pass per tick it replaces (nlargest by rate over 100k): {naive_full_pass_ms(100_000):.1f} ms")
    for n in (1_000, 100_000):
        for size in ((80, 24), (160, 50)):
            for sort in ("failures", "rate"):
                view, paint = asyncio.run(render_tick(n, size, sort, ticks))
                print(f"  {n:>7,} IPs {size[0]:>3}x{size[1]:<3} by {sort:<8}  refresh_view p50 {pct(view, 50):5.1f} "
                      f"p90 {pct(view, 90):5.1f} max {max(view):5.1f}   +paint p50 {pct(paint, 50):5.1f} "
                      f"p90 {pct(paint, 90):5.1f} max {max(paint):5.1f}")

    print(f"\n2. key latency while ingesting {args.rate:,} lines/s (100,000 attackers in the store)")
    import popwatch.monitor

    default_slice = popwatch.monitor.INGEST_SLICE
    for sl in (default_slice, 500):
        r = asyncio.run(key_latency(presses, args.rate, sl))
        print(f"  Monitor INGEST_SLICE={sl}{' (current)' if sl == default_slice else ''}: ingest reached "
              f"{r['lines_s']:,.0f} lines/s, {r['ips']:,} attackers")
        print(f"    key -> action: p50 {r['p50']:.1f} ms  p90 {r['p90']:.1f} ms  p99 {r['p99']:.1f} ms  "
              f"max {r['max']:.1f} ms  (n={r['n']})")
    popwatch.monitor.INGEST_SLICE = default_slice

    if not args.skip_idle:
        print(f"\n3. idle CPU under tmux (80x24, real terminal), replay ended, {args.idle_seconds:.0f} s")
        v = idle_cpu(args.idle_seconds)
        if v is not None:
            print(f"  {v:.2f}% of one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
