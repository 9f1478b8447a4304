"""Pilot tests of the keys added for issue 6: mass ban, the limit form, roll-up, read-only
explanations, the users toggle, detail contents, and the policy keys (auto-ban, undo, what-if)."""

from __future__ import annotations

from textual.widgets import Input, Static

from popwatch.firewall.base import NoFirewall
from popwatch.ui.app import PopwatchApp
from popwatch.ui.screens import ConfirmScreen, DetailScreen, LimitScreen, WhatIfScreen
from popwatch.ui.widgets import AttackerTable, PortsPanel


async def settle(pilot, app: PopwatchApp) -> None:
    await pilot.pause()
    app.refresh_view(force=True)
    await pilot.pause()


def messages(app: PopwatchApp) -> list[str]:
    return [str(n.message) for n in app._notifications]


async def type_filter(pilot, text: str) -> None:
    await pilot.press("slash", *list(text), "enter")


def alice_lines(ip: str, n: int, start: int = 0) -> list[str]:
    return [f"2026-11-18T06:00:{(start + i) % 60:02d}.000000+00:00 mail1 sshd[{700 + start + i}]: Failed password "
            f"for alice from {ip} port {41000 + start + i} ssh2" for i in range(n)]


async def test_mass_ban_bans_every_match_and_skips_protected(demo):
    demo.feed(alice_lines("192.0.2.77", 8) + alice_lines("203.0.113.150", 5, 10) + alice_lines("203.0.113.151", 3, 20))
    app = demo.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        await type_filter(pilot, "alice")
        await settle(pilot, app)
        assert {r.ip for r in app.query_one(AttackerTable).rows} == {"192.0.2.77", "203.0.113.150", "203.0.113.151"}
        await pilot.press("B")
        assert isinstance(app.screen, ConfirmScreen)
        body = app.screen.body.plain
        assert "3 addresses match 'alice'" in body and "2 will be banned" in body
        assert "1 are protected and skipped: 192.0.2.77" in body
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await settle(pilot, app)
        assert set(demo.sim.bans()) == {"203.0.113.150", "203.0.113.151"}
        states = {r.ip: r.state for r in app.query_one(AttackerTable).rows}
        assert states == {"192.0.2.77": "protected", "203.0.113.150": "banned", "203.0.113.151": "banned"}
        assert any("banned 2 addresses, 1 protected skipped" in m for m in messages(app))


async def test_mass_ban_needs_a_filter(demo):
    app = demo.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        await pilot.press("B")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen) and demo.sim.bans() == {}
        assert any("set one first with /" in m for m in messages(app))


async def test_limit_form_validates_then_applies_to_the_firewall(demo):
    app = demo.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        await pilot.press("tab")
        ports = app.query_one(PortsPanel)
        assert ports.selected_port == 110  # the limited port is preselected
        await pilot.press("e")
        assert isinstance(app.screen, LimitScreen)
        form = app.screen
        rate = form.query_one("#rate", Input)
        burst = form.query_one("#burst", Input)
        rate.value = "5/fortnight"
        await pilot.pause()
        assert "unit must be second, minute, hour or day" in str(form.query_one("#rate-error", Static).render())
        await pilot.press("enter")  # refused: the form stays
        await pilot.pause()
        assert isinstance(app.screen, LimitScreen) and str(demo.sim.limits()[110].rate) == "1/second"
        rate.value = "10/minute"
        burst.value = "0"
        await pilot.pause()
        assert "expected a whole number from 1 to 10000" in str(form.query_one("#burst-error", Static).render())
        burst.value = "20"
        await pilot.pause()
        assert "14,400 new connections a day" in str(form.query_one("#preview", Static).render())
        burst.focus()
        await pilot.press("enter")
        await app.workers.wait_for_complete()
        await settle(pilot, app)
        lim = demo.sim.limits()[110]
        assert (lim.mode, str(lim.rate), lim.burst) == ("global", "10/minute", 20)
        assert next(p for p in ports.ports if p.port == 110).limit == lim
        # escape cancels without touching the firewall
        await pilot.press("e")
        form = app.screen
        form.query_one("#rate", Input).value = "1/hour"
        await pilot.press("escape")
        await app.workers.wait_for_complete()
        assert demo.sim.limits()[110] == lim


async def test_rollup_groups_the_botnet_and_enter_lists_its_addresses(demo):
    demo.advance(60)  # the botnet (198.51.100.130-245, one slow address each) has started
    app = demo.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        await pilot.press("r")
        await settle(pilot, app)
        table = app.query_one(AttackerTable)
        nets = {r.ip: r for r in table.rows}
        assert "198.51.100.0/24" in nets and nets["198.51.100.0/24"].nips >= 10
        assert all("/" in ip for ip in nets)
        assert "networks" in str(table.border_title)
        while table.selected.ip != "198.51.100.0/24":
            await pilot.press("down")
        await pilot.press("b")  # a network: explains instead of banning
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert any("press Enter to list its" in m for m in messages(app))
        await pilot.press("enter")
        await settle(pilot, app)
        assert not app.main.rollup and app.main.filter == "198.51.100.0/24"
        assert len(table.rows) == nets["198.51.100.0/24"].nips
        assert all(r.ip.startswith("198.51.100.") for r in table.rows)


async def test_read_only_keys_are_greyed_and_explain_why(demo):
    demo.monitor.firewall = NoFirewall()
    app = demo.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        for action in ("ban", "ban_all", "unban", "rate", "burst", "mode", "edit"):
            assert app.main.check_action(action, ()) is None  # shown greyed in the footer
        assert app.main.check_action("sort", ()) is True
        for key in ("b", "plus", "e", "m"):
            app._notifications.clear()
            await pilot.press(key)
            await pilot.pause()
            assert not isinstance(app.screen, (ConfirmScreen, LimitScreen))
            assert any("read-only" in m and "backend is 'none'" in m for m in messages(app)), key
        await pilot.press("s")  # looking around still works
        await pilot.pause()
        assert app.sort == "rate"


async def test_users_panel_toggles_at_80x24(demo):
    app = demo.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        users = app.query_one("#users")
        assert not users.display
        await pilot.press("v")
        await pilot.pause()
        assert users.display and users.size.width > 0
        await pilot.press("v")
        await pilot.pause()
        assert not users.display


async def test_cursor_follows_its_ip_while_new_events_rerank(demo):
    app = demo.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        table = app.query_one(AttackerTable)
        await pilot.press("down", "down")
        ip = table.selected.ip
        for _ in range(6):
            demo.advance(10)
            await settle(pilot, app)
            assert table.selected.ip == ip


async def test_detail_shows_users_timeline_lines_and_ban_history(demo):
    app = demo.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        ip = app.query_one(AttackerTable).selected.ip
        await pilot.press("b", "y")
        await app.workers.wait_for_complete()
        await pilot.press("u")
        await app.workers.wait_for_complete()
        await settle(pilot, app)
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        text = app.screen.body().plain
        row = app.screen.row
        assert row.ip == ip and text.startswith(ip)
        assert f"usernames tried ({row.nusers}" in text and row.users[-1] in text
        assert "timeline, failed attempts per minute" in text
        assert sum(app.screen.timeline(app.screen.events, app.screen.now)) > 0
        hist = text[text.index("ban history"):text.index("events from this address")]
        assert " ban by key: manual" in hist and " unban" in hist
        assert "pop3-login" in text or "sshd" in text or "Failed" in text  # the raw lines


async def test_policy_keys_auto_ban_undo_and_what_if(demo):
    app = demo.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        before = app.controller.auto_ban
        await pilot.press("a")
        await settle(pilot, app)
        assert app.controller.auto_ban is (not before)
        await pilot.press("a")
        await pilot.pause()
        ip = app.query_one(AttackerTable).selected.ip
        await pilot.press("b", "y")
        await app.workers.wait_for_complete()
        assert ip in demo.sim.bans()
        await pilot.press("U")
        await app.workers.wait_for_complete()
        assert ip not in demo.sim.bans()
        await pilot.press("w")
        assert isinstance(app.screen, WhatIfScreen)
        app.screen.query_one(Input).value = "maxretry=3,findtime=10m"
        await pilot.press("enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
        report = str(app.screen.query_one("#report", Static).render())
        assert "would have been banned" in report, report


async def test_main_keys_step_aside_for_the_filter_input_and_modals(demo):
    app = demo.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        await pilot.press("slash", "b", "q", "s", "u", "m")  # typed into the filter, not acted on
        await pilot.pause()
        assert app.query_one("#filter", Input).value == "bqsum"
        assert app.sort == "failures" and demo.sim.bans() == {} and app.is_running
        await pilot.press("escape")
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        await pilot.press("q")  # closes the detail, does not quit
        await pilot.pause()
        assert not isinstance(app.screen, DetailScreen) and app.is_running
        await pilot.press("b")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("b", "u", "n")  # inside the modal only y/n/escape mean anything
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen) and demo.sim.bans() == {}
