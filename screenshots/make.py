#!/usr/bin/env python3
"""Regenerate the SVG screenshots from the demo (never drawn by hand).

    python3 screenshots/make.py

Runs the demo scenario on a frozen clock (times shown in UTC), drives the app with Textual's
pilot and saves:

- main-80x24.svg, main-160x50.svg: the live screen during the attack
- ban-confirm.svg: ``b`` on the loudest attacker, showing the exact command
- detail.svg: Enter on it after the ban (users, timeline, ban history, raw lines)
- help.svg: ``?``, generated from the bindings
- limit-form.svg: ``e`` on POP3, the limit form with its live preview
- limit-tuning.svg: 90 s after switching POP3 from the 2009 global rule to per-source
- rollup.svg: ``r``, the spread-out botnet grouped into its /24
- ban-all-confirm.svg: ``/`` 198.51.100.0/24 then ``B``, the mass ban with its count
- read-only.svg: the same screen without root: acting keys greyed in the footer
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent
sys.path.insert(0, str(OUT.parent))
os.environ["TZ"] = "UTC"
time.tzset()

from textual.widgets import Input  # noqa: E402

from popwatch.demo import FrozenDemo  # noqa: E402
from popwatch.firewall.base import NoFirewall  # noqa: E402

Input._toggle_cursor = lambda self: None  # type: ignore[method-assign]  # no blink in pictures


async def settle(pilot, app) -> None:  # noqa: ANN001
    await pilot.pause()
    app.refresh_view(force=True)
    await pilot.pause()


async def select_port(pilot, app, port: int) -> None:  # noqa: ANN001
    await pilot.press("tab")
    ports = app.query_one("#ports")
    while ports.selected_port != port:
        await pilot.press("down")


async def shoot() -> None:
    demo = FrozenDemo()
    demo.advance(120)

    app = demo.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        app.save_screenshot(str(OUT / "main-80x24.svg"))
        await pilot.press("b")
        await pilot.pause()
        app.save_screenshot(str(OUT / "ban-confirm.svg"))
        await pilot.press("y")
        await app.workers.wait_for_complete()
        app.clear_notifications()
        await settle(pilot, app)
        await pilot.press("enter")
        await pilot.pause()
        app.save_screenshot(str(OUT / "detail.svg"))
        await pilot.press("escape", "question_mark")
        await pilot.pause()
        app.save_screenshot(str(OUT / "help.svg"))
        await pilot.press("escape")
        await select_port(pilot, app, 110)
        await pilot.press("e")
        await pilot.pause()
        app.save_screenshot(str(OUT / "limit-form.svg"))
        await pilot.press("escape")
        # the admin swaps the 2009 global rule on POP3 for a per-source limit
        await pilot.press("m")
        await app.workers.wait_for_complete()
    demo.advance(90)

    app = demo.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        await select_port(pilot, app, 110)
        await pilot.pause()
        app.save_screenshot(str(OUT / "limit-tuning.svg"))
        await pilot.press("shift+tab", "r")
        await settle(pilot, app)
        app.save_screenshot(str(OUT / "rollup.svg"))
        await pilot.press("r", "slash", *"198.51.100.0/24", "enter")
        await settle(pilot, app)
        await pilot.press("B")
        await pilot.pause()
        app.save_screenshot(str(OUT / "ban-all-confirm.svg"))

    app = demo.app()
    async with app.run_test(size=(160, 50)) as pilot:
        await settle(pilot, app)
        app.save_screenshot(str(OUT / "main-160x50.svg"))

    demo.monitor.firewall = NoFirewall()
    app = demo.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        app.save_screenshot(str(OUT / "read-only.svg"))


if __name__ == "__main__":
    asyncio.run(shoot())
    print("\n".join(sorted(p.name for p in OUT.glob("*.svg"))))
