#!/usr/bin/env python3
"""Regenerate the SVG screenshots from the demo (never drawn by hand).

    python3 screenshots/make.py

Runs the demo scenario on a frozen clock, drives the app with Textual's pilot and saves:
main-80x24.svg, main-160x50.svg, ban-confirm.svg, limit-tuning.svg, detail.svg, help.svg.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from popwatch.demo import FrozenDemo

OUT = Path(__file__).resolve().parent


async def shoot() -> None:
    demo = FrozenDemo()
    demo.advance(120)

    app = demo.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        app.refresh_view(force=True)
        await pilot.pause()
        app.save_screenshot(str(OUT / "main-80x24.svg"))
        await pilot.press("b")
        await pilot.pause()
        app.save_screenshot(str(OUT / "ban-confirm.svg"))
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await pilot.press("enter")
        await pilot.pause()
        app.save_screenshot(str(OUT / "detail.svg"))
        await pilot.press("escape", "question_mark")
        await pilot.pause()
        app.save_screenshot(str(OUT / "help.svg"))
        await pilot.press("escape")
        # the admin swaps the 2009 global rule on POP3 for a per-source limit
        await pilot.press("tab")
        ports = app.query_one("#ports")
        while ports.selected_port != 110:
            await pilot.press("down")
        await pilot.press("m")
        await app.workers.wait_for_complete()
    demo.advance(90)

    app = demo.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("tab")
        ports = app.query_one("#ports")
        app.refresh_view(force=True)
        await pilot.pause()
        while ports.selected_port != 110:
            await pilot.press("down")
        await pilot.pause()
        app.save_screenshot(str(OUT / "limit-tuning.svg"))

    app = demo.app()
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.pause()
        app.refresh_view(force=True)
        await pilot.pause()
        app.save_screenshot(str(OUT / "main-160x50.svg"))


if __name__ == "__main__":
    asyncio.run(shoot())
    print("\n".join(sorted(p.name for p in OUT.glob("*.svg"))))
