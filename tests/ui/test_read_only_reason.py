"""The TUI started read-only because something is missing says why: a few words in the header,
the full line (problem and fix) on any acting key."""

from __future__ import annotations

from popwatch.firewall.base import NoFirewall
from popwatch.hostcheck import explain, short
from popwatch.ui.app import PopwatchApp


async def settle(pilot, app: PopwatchApp) -> None:
    await pilot.pause()
    app.refresh_view(force=True)
    await pilot.pause()


async def test_header_and_keys_name_the_missing_piece(demo):
    why = explain("iptables-nft is not installed")
    demo.monitor.firewall = NoFirewall(reason=why, short=short(why))
    app = demo.app()
    app.mode = "read-only"
    async with app.run_test(size=(160, 30)) as pilot:
        await settle(pilot, app)
        header = app.query_one("#header")
        text = header.render().plain
        assert "READ-ONLY" in text and "(no iptables)" in text
        await pilot.press("b")
        await pilot.pause()
        msgs = [str(n.message) for n in app._notifications]
        assert any(m == f"read-only: {why}" and "'iptables' package" in m for m in msgs), msgs
