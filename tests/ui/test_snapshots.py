"""Snapshot tests (pytest-textual-snapshot) of the main screen and every modal, from the demo
scenario on a frozen clock. Update with ``pytest tests/ui/test_snapshots.py --snapshot-update``
after looking at the report; never run these with ``-n`` (xdist)."""

from __future__ import annotations

from popwatch.firewall.base import NoFirewall
from popwatch.ui.app import PopwatchApp


async def settle(pilot) -> None:
    app: PopwatchApp = pilot.app
    await pilot.pause()
    app.refresh_view(force=True)
    await pilot.pause()


def test_main_80x24(demo, snap_compare):
    assert snap_compare(demo.app(), terminal_size=(80, 24), run_before=settle)


def test_main_160x50(demo, snap_compare):
    assert snap_compare(demo.app(), terminal_size=(160, 50), run_before=settle)


def test_ban_confirm(demo, snap_compare):
    assert snap_compare(demo.app(), terminal_size=(80, 24), run_before=settle, press=["b"])


def test_limit_form(demo, snap_compare):
    async def open_form(pilot) -> None:
        await settle(pilot)
        await pilot.press("tab", "e")
        await pilot.pause()

    assert snap_compare(demo.app(), terminal_size=(80, 24), run_before=open_form)


def test_limit_form_with_an_error(demo, snap_compare):
    async def bad_rate(pilot) -> None:
        await settle(pilot)
        await pilot.press("tab", "e")
        await pilot.pause()
        pilot.app.screen.query_one("#rate").value = "5/fortnight"
        await pilot.pause()

    assert snap_compare(demo.app(), terminal_size=(80, 24), run_before=bad_rate)


def test_detail(demo, snap_compare):
    assert snap_compare(demo.app(), terminal_size=(80, 24), run_before=settle, press=["enter"])


def test_help(demo, snap_compare):
    assert snap_compare(demo.app(), terminal_size=(80, 24), run_before=settle, press=["question_mark"])


def test_rollup(demo, snap_compare):
    demo.advance(60)
    assert snap_compare(demo.app(), terminal_size=(80, 24), run_before=settle, press=["r"])


def test_read_only_footer(demo, snap_compare):
    demo.monitor.firewall = NoFirewall()
    assert snap_compare(demo.app(), terminal_size=(80, 24), run_before=settle)
