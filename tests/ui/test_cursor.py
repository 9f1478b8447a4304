"""Issue 18, point 1: the attackers cursor during an attack.

Until the user moves the cursor it stays on the top row, whatever sorts there (so ``b`` offers
the loudest attacker); once the user moves it, it follows that address and the panel title says
so; ``g``/Home goes back to top-row mode."""

from __future__ import annotations

from popwatch.ui.screens import ConfirmScreen
from popwatch.ui.widgets import AttackerTable

from .test_keys import alice_lines, settle


def loud_lines(ip: str, n: int) -> list[str]:
    return [f"2026-11-18T06:01:{i % 60:02d}.000000+00:00 mail1 sshd[{900 + i}]: Failed password "
            f"for root from {ip} port {50000 + i} ssh2" for i in range(n)]


def title(table: AttackerTable) -> str:
    t = table.border_title
    return t.plain if hasattr(t, "plain") else str(t)


async def test_cursor_stays_on_the_top_row_until_moved_and_b_offers_the_loudest(demo):
    app = demo.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        table = app.query_one(AttackerTable)
        first = table.rows[0]
        assert not table.follow and table.selected.ip == first.ip
        loud = "203.0.113.99"
        demo.feed(loud_lines(loud, first.failures + 40))
        await settle(pilot, app)
        assert table.rows[0].ip == loud and table.selected.ip == loud  # the new top row
        assert not table.follow and "following" not in title(table)
        await pilot.press("b")
        assert isinstance(app.screen, ConfirmScreen) and app.screen.title_text == f"Ban {loud}?"


async def test_a_moved_cursor_follows_its_address_and_says_so_then_g_returns_to_the_top(demo):
    app = demo.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        table = app.query_one(AttackerTable)
        await pilot.press("down")
        picked = table.selected.ip
        assert table.follow and table.rows.index(table.selected) == 1
        await pilot.pause()
        assert f"following {picked}" in title(table)  # at once, not at the next tick
        loud = "203.0.113.98"
        demo.feed(loud_lines(loud, table.rows[0].failures + 40))
        await settle(pilot, app)
        assert table.rows[0].ip == loud
        assert table.selected.ip == picked and table.follow  # it stayed on the picked address
        assert f"following {picked}" in title(table)
        await pilot.press("g")
        await pilot.pause()
        assert not table.follow and table.selected.ip == loud and "following" not in title(table)
        # the top row changes again: the cursor goes with the top row
        louder = "203.0.113.97"
        demo.feed(loud_lines(louder, table.rows[0].failures + 40))
        await settle(pilot, app)
        assert table.selected.ip == louder
        # Home does the same as g; moving back up to row 0 by hand is a pick (follows)
        await pilot.press("down", "up")
        assert table.follow and table.selected.ip == louder
        demo.feed(alice_lines("203.0.113.96", table.rows[0].failures + 40))
        await settle(pilot, app)
        assert table.rows[0].ip == "203.0.113.96" and table.selected.ip == louder
        await pilot.press("home")
        await pilot.pause()
        assert not table.follow and table.selected.ip == "203.0.113.96"
