#!/usr/bin/env python3
"""Campaign detection figures (issue 15), printed, never asserted.

    python benchmarks/campaigns.py [--quick]

1. Memory of the campaign tracker (tracemalloc) after 100,000 distinct attacker addresses,
   in three shapes: one mailbox tried from all of them (one huge campaign), 50 user names
   (50 campaigns), and a new user name per address (the target table churns at its cap); next
   to the per-address auto-ban engine fed the same events (the same-process baseline), and
   the tracker's stated caps.
2. Ingest cost per event of the tracker, as a ratio to the auto-ban engine's.
3. Render tick at 160x50 with 100,000 attackers in the store and the tracker and 1,000 new
   failures per tick, campaigns panel on (default at that size) vs off (`c`): refresh_view
   wall time and the repaint CPU, p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from popwatch.autoban import AutoBan
from popwatch.campaigns import CampaignConfig, CampaignTracker
from popwatch.config import PolicyConfig
from popwatch.model import AuthEvent

T0 = 1_795_000_000.0


def ip_of(i: int) -> str:
    return f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"


def events(n: int, users) -> list[AuthEvent]:
    return [AuthEvent(T0 + i * 0.005, "pop3", "auth_failed", ip_of(i), users(i)) for i in range(n)]


def measure(make, evs: list[AuthEvent]) -> tuple[float, float, object]:
    """(MB held after feeding, under tracemalloc; us per event, in a second run without it)."""
    gc.collect()
    obj = make()
    t = time.perf_counter()
    for i in range(0, len(evs), 128):
        obj.feed(evs[i:i + 128])
    dt = time.perf_counter() - t
    del obj
    gc.collect()
    tracemalloc.start()
    obj = make()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(0, len(evs), 128):
        obj.feed(evs[i:i + 128])
    mem = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return mem / 1e6, dt / len(evs) * 1e6, obj


def memory(n: int) -> None:
    print(f"1./2. memory and ingest cost after {n:,} distinct addresses (tracemalloc; us/event)")
    shapes = [("one mailbox", lambda i: "test"), ("50 user names", lambda i: f"user{i % 50}"),
              ("new user each", lambda i: f"u{i}")]
    for name, users in shapes:
        evs = events(n, users)
        m_c, us_c, tr = measure(lambda: CampaignTracker(CampaignConfig(window=3600.0), enabled=False), evs)
        m_a, us_a, _ = measure(lambda: AutoBan(PolicyConfig(), enabled=False), evs)
        print(f"   {name:<14} campaigns {m_c:6.1f} MB {us_c:5.2f} us/ev | auto-ban (baseline) {m_a:6.1f} MB "
              f"{us_a:5.2f} us/ev | ratio mem {m_c / max(m_a, 1e-9):4.2f} time {us_c / max(us_a, 1e-9):4.2f} | "
              f"targets {len(tr.targets):,} entries {tr.entries:,} slow {len(tr.slow):,} "
              f"campaigns {len(tr.camps):,}")
    t = CampaignTracker()
    print(f"   caps: {t.max_targets:,} targets, {t.max_entries:,} source entries, {t.max_slow:,} slow counters, "
          f"login history {t.logins.max_users:,} users x {t.logins.per_user} addresses")


async def render(n: int, ticks: int) -> None:
    from benchmarks.ui import Clock, make_monitor, pct
    from popwatch.ui.app import make_app
    from popwatch.ui.campaigns import CampaignsPanel

    print(f"3. render tick at 160x50, {n:,} attackers, 1,000 new failures per tick ({ticks} ticks)")
    for shown in (False, True, False, True):  # alternated: the machine's noise hits both
        clock = Clock(T0 + 100)
        mon = make_monitor(clock, n_ips=n)
        rng = random.Random(1)
        users = ["test", "info", "sales", "admin"] + [f"u{i}" for i in range(200)]
        seed = [AuthEvent(T0 + rng.random() * 100, "pop3", "auth_failed", ip_of(i), rng.choice(users))
                for i in range(n)]
        for i in range(0, n, 1000):
            mon.campaigns.feed(seed[i:i + 1000])
        gc.collect()
        gc.freeze()
        app = make_app(mon, mode="demo", host="bench", run_monitor=False, tick=3600)
        view: list[float] = []
        paint: list[float] = []
        rows_ms: list[float] = []
        async with app.run_test(size=(160, 50)) as pilot:
            if not shown:
                app.campaigns_shown = False
                app._layout_users()
            app.refresh_view(force=True)
            await pilot.pause()
            assert app.query_one(CampaignsPanel).display == shown
            for _ in range(ticks):
                clock.t += 0.25
                evs = [AuthEvent(clock.t, "pop3", "auth_failed", ip_of(rng.randrange(n)), rng.choice(users))
                       for _ in range(1000)]
                mon.store.add_events(evs)
                mon.campaigns.feed(evs)
                t = time.perf_counter()
                mon.campaigns.rows(clock.t, k=20)  # the panel's own share of a tick
                rows_ms.append((time.perf_counter() - t) * 1000)
                t, c = time.perf_counter(), time.process_time()
                app.refresh_view(force=True)
                t1 = time.perf_counter()
                await pilot.pause()
                view.append((t1 - t) * 1000)
                paint.append((time.process_time() - c) * 1000)
        rows = len(mon.campaigns.rows(k=1000))
        print(f"   panel {'on ' if shown else 'off'}: refresh_view p50 {pct(view, 50):6.2f} ms p99 {pct(view, 99):6.2f} ms"
              f" | with repaint p50 {pct(paint, 50):6.2f} ms p99 {pct(paint, 99):6.2f} ms | campaigns {rows}, "
              f"rows() p50 {pct(rows_ms, 50):.2f} ms p99 {pct(rows_ms, 99):.2f} ms")
        gc.unfreeze()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    n = 100_000
    memory(n)
    asyncio.run(render(n, 20 if a.quick else 60))


if __name__ == "__main__":
    main()
