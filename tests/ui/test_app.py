"""Pilot tests of the screen and its keys, on the demo scenario with a frozen clock."""

from __future__ import annotations

from popwatch.firewall.base import NoFirewall
from popwatch.ui.app import PopwatchApp
from popwatch.ui.screens import ConfirmScreen, DetailScreen, HelpScreen
from popwatch.ui.widgets import AttackerTable, LiveLog, PortsPanel


async def settle(pilot, app: PopwatchApp) -> None:
    await pilot.pause()
    app.refresh_view(force=True)
    await pilot.pause()


async def test_main_screen_shows_live_data_at_80x24_and_160x50(demo):
    for size in ((80, 24), (160, 50)):
        app = demo.app()
        async with app.run_test(size=size) as pilot:
            await settle(pilot, app)
            table = app.query_one(AttackerTable)
            assert len(table.rows) >= 5
            assert table.rows[0].failures >= table.rows[-1].failures
            assert table.size.height >= 8  # usable at 80x24
            ports = app.query_one(PortsPanel)
            assert [p.port for p in ports.ports] == [22, 110, 143]
            p110 = next(p for p in ports.ports if p.port == 110)
            assert p110.limit.mode == "global" and p110.dropped_s > 0  # the 2009 rule at work
            assert app.query_one(LiveLog).snapshot.events
            assert app.query_one("#users").display == (size == (160, 50))
            before = app.main.snapshot.version
            demo.advance(5)
            app.refresh_view()
            await pilot.pause()
            assert app.main.snapshot.version > before  # it updates live


async def test_ban_key_confirms_then_bans_in_the_firewall(demo):
    app = demo.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        ip = app.query_one(AttackerTable).selected.ip
        await pilot.press("b")
        assert isinstance(app.screen, ConfirmScreen)
        assert any(ip in line for line in app.screen.body.plain.splitlines())
        await pilot.press("n")
        assert not isinstance(app.screen, ConfirmScreen) and demo.sim.bans() == {}
        await pilot.press("b", "y")
        await app.workers.wait_for_complete()
        await settle(pilot, app)
        assert ip in demo.sim.bans()
        row = next(r for r in app.query_one(AttackerTable).rows if r.ip == ip)
        assert row.state == "banned"
        # the banned attacker's lines stop: the firewall drops its connections
        before = row.failures
        demo.advance(30)
        await settle(pilot, app)
        assert next(r for r in app.query_one(AttackerTable).rows if r.ip == ip).failures == before
        await pilot.press("u")
        await app.workers.wait_for_complete()
        assert ip not in demo.sim.bans()


async def test_protected_address_is_refused_without_a_prompt(demo):
    # an allow-listed office address fumbling its password many times
    demo.feed([f"2026-11-28T05:00:{i:02d}.000000+00:00 mail1 sshd[{900 + i}]: Failed password for "
               f"alice from 192.0.2.77 port {40000 + i} ssh2" for i in range(60)] * 20)
    app = demo.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        table = app.query_one(AttackerTable)
        assert table.rows[0].ip == "192.0.2.77" and table.rows[0].state == "protected"
        await pilot.press("b")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert "192.0.2.77" not in demo.sim.bans()
        assert any("refused" in str(n.message) for n in app._notifications)


async def test_limit_keys_retune_the_selected_port(demo):
    app = demo.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        await pilot.press("tab")
        ports = app.query_one(PortsPanel)
        assert ports.has_focus
        while ports.selected_port != 110:
            await pilot.press("down")
        await pilot.press("m")  # global -> per-source
        await app.workers.wait_for_complete()
        assert demo.sim.limits()[110].mode == "per-source"
        await pilot.press("plus")
        await app.workers.wait_for_complete()
        assert str(demo.sim.limits()[110].rate) == "2/second"
        await pilot.press("minus", "minus")
        await app.workers.wait_for_complete()
        await pilot.press("right_square_bracket")
        await app.workers.wait_for_complete()
        lim = demo.sim.limits()[110]
        assert str(lim.rate) == "30/minute" and lim.burst == 2
        await settle(pilot, app)
        assert next(p for p in ports.ports if p.port == 110).limit == lim


async def test_sort_keeps_cursor_on_its_ip_and_filter_narrows(demo):
    app = demo.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        table = app.query_one(AttackerTable)
        await pilot.press("down", "down", "down")
        ip = table.selected.ip
        for _ in range(3):
            await pilot.press("s")
            await pilot.pause()
            assert table.selected.ip == ip
        await pilot.press("slash")
        for ch in "ssh":
            await pilot.press(ch)
        await pilot.press("enter")
        await settle(pilot, app)
        assert table.rows and all("ssh" in r.services for r in table.rows)
        await pilot.press("slash", "escape")
        await settle(pilot, app)
        assert any("ssh" not in r.services for r in table.rows)


async def test_detail_and_help_screens(demo):
    app = demo.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        await pilot.press("escape")
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        keys = dict(app.screen.keys)
        assert keys["b"].startswith("Ban") and keys["B"].startswith("Ban all") and "e" in keys
        for b in [*app.main.BINDINGS, *app.BINDINGS]:  # generated from the bindings: every shown key is listed
            if b.show:
                assert (b.key_display or b.key) in keys
        await pilot.press("escape")
        await pilot.press("q")
    assert app.return_code == 0


async def test_read_only_refuses_actions(demo):
    demo.monitor.firewall = NoFirewall()
    app = demo.app()
    app.mode = "read-only"
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        await pilot.press("b")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert any("read-only" in str(n.message) for n in app._notifications)


async def test_hostile_lines_neither_crash_nor_style_the_screen(demo):
    evil = [
        "2026-11-28T05:00:00.000000+00:00 mail1 sshd[1]: Invalid user [/x] from 203.0.113.250 port 1",
        "2026-11-28T05:00:00.000000+00:00 mail1 sshd[2]: Invalid user [@click=app.quit]q from 203.0.113.250 port 2",
        "2026-11-28T05:00:00.000000+00:00 mail1 sshd[3]: Invalid user \x1b]0;PWNED\x07\x1b[2J from 203.0.113.250 port 3",
        "2026-11-28T05:00:00.000000+00:00 mail1 dovecot: pop3-login: Aborted login: user=<[bold red]x" + "A" * 5000
        + ">, method=PLAIN, rip=203.0.113.250, lip=192.0.2.1",
    ] * 50
    demo.feed(evil)
    app = demo.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        table = app.query_one(AttackerTable)
        row = next(r for r in table.rows if r.ip == "203.0.113.250")
        assert all("\x1b" not in u and "\x07" not in u for u in row.users)
        while table.selected.ip != "203.0.113.250":
            await pilot.press("down")
        await pilot.press("enter")
        await pilot.pause()
        await pilot.press("escape")
        svg = app.export_screenshot()
        assert "\x1b" not in svg
        assert "[bold&#160;red]xAAA" in svg or "[bold red]xAAA" in svg  # shown literally, not parsed
    assert app.return_code in (None, 0)
