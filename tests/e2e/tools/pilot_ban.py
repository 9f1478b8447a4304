"""One-key ban through the real Textual app, headless, inside the lab's server namespace.

Run by ``tests/e2e/test_onekey.py`` as ``ip netns exec <srv> python -m tests.e2e.tools.pilot_ban
--log ... --state-dir ... --backend nft --target IP --out result.json``. It builds the Monitor
the way ``popwatch watch`` does (file sources on the lab's logs, the kernel firewall backend,
the state dir, auto-ban off), runs ``make_app(monitor)`` under ``app.run_test()``, waits until
``--target`` is listed as an attacker, moves the cursor onto it, presses ``b`` then ``y`` and
writes what happened to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any


async def drive(a: argparse.Namespace) -> dict[str, Any]:
    from popwatch.config import Config, PolicyConfig
    from popwatch.firewall.detect import make_firewall
    from popwatch.monitor import Monitor
    from popwatch.parse import Parser
    from popwatch.persist import Persist
    from popwatch.policy import Protector
    from popwatch.sources.discover import discover
    from popwatch.store import StateStore
    from popwatch.ui.app import make_app
    from popwatch.ui.screens import ConfirmScreen
    from popwatch.ui.widgets import AttackerTable

    cfg = Config(ports=[110, 143, 22], backend=a.backend, state_dir=Path(a.state_dir),
                 policy=PolicyConfig(auto_ban=False))
    persist = Persist(cfg.state_dir)
    firewall = make_firewall(cfg.backend, ports=cfg.ports, ipv6_prefix=cfg.policy.ipv6_prefix)
    monitor = Monitor(store=StateStore(clock=time.time), parser=Parser(now=time.time),
                      sources=discover(a.log, False, from_start=True), firewall=firewall,
                      protector=Protector.from_env(cfg.policy.allow), persist=persist, policy=cfg.policy,
                      default_ttl=cfg.policy.bantime)
    monitor.start_firewall(cfg.port_limits())
    out: dict[str, Any] = {"target": a.target, "banned": False}
    app = make_app(monitor, mode="live", host="mail1", tick=0.25)
    try:
        async with app.run_test(size=(120, 32)) as pilot:
            table = app.query_one(AttackerTable)
            deadline = time.monotonic() + a.timeout
            while time.monotonic() < deadline and not any(r.ip == a.target for r in table.rows):
                await pilot.pause(0.2)
                app.refresh_view(force=True)
            out["rows_before"] = [(r.ip, r.failures, list(r.services), r.state) for r in table.rows]
            if not any(r.ip == a.target for r in table.rows):
                out["error"] = "target never listed"
                return out
            print("listed", flush=True)
            # let it gather a few more failures while the admin watches, as a person would
            await pilot.pause(a.watch)
            app.refresh_view(force=True)
            await pilot.pause()
            # a moved cursor follows its address (issue 18; untouched it stays on the top row)
            await pilot.press("down")
            for _ in range(len(table.rows) + 2):
                if table.selected is not None and table.selected.ip == a.target:
                    break
                await pilot.press("down")
            for _ in range(len(table.rows) + 2):
                if table.selected is not None and table.selected.ip == a.target:
                    break
                await pilot.press("up")
            sel = table.selected
            out["selected"] = sel.ip if sel else None
            out["failures_at_key"] = sel.failures if sel else None
            if sel is None or sel.ip != a.target:
                out["error"] = "could not select the target"
                return out
            out["t_key"] = time.time()
            print("selected", sel.ip, flush=True)
            await pilot.press("b")
            await pilot.pause()
            out["confirm"] = isinstance(app.screen, ConfirmScreen)
            out["confirm_text"] = app.screen.body.plain if out["confirm"] else ""  # type: ignore[attr-defined]
            print("confirm", out["confirm"], flush=True)
            await pilot.press("y")
            # the ban runs on a worker (the firewall thread); the monitor itself is a worker
            # that runs until the app exits, so poll the store instead of waiting for workers
            for _ in range(100):
                if a.target in monitor.store.bans:
                    break
                await pilot.pause(0.05)
            out["t_done"] = time.time()
            print("ban seen", flush=True)
            out["banned"] = a.target in monitor.store.bans
            out["kernel_bans"] = sorted(monitor.firewall.bans())
            app.refresh_view(force=True)
            await pilot.pause()
            out["rows_after"] = [(r.ip, r.failures, list(r.services), r.state) for r in table.rows]
            out["notifications"] = [str(n.message) for n in app._notifications]
            print("exiting", flush=True)
            app.exit()
    finally:
        monitor.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", action="append", required=True)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--backend", default="nft")
    ap.add_argument("--target", required=True)
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--watch", type=float, default=2.0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    res: dict[str, Any] = {}

    async def bounded() -> None:
        res.update(await asyncio.wait_for(drive(a), a.timeout + 30))

    try:
        asyncio.run(bounded())
    except asyncio.TimeoutError:
        res["error"] = "driver timed out"
    Path(a.out).write_text(json.dumps(res, indent=1))
    return 0 if res.get("banned") else 1


if __name__ == "__main__":
    sys.exit(main())
