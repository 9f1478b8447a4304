"""Pilot tests of the campaigns panel (popwatch/ui/campaigns.py): shown at 160x50, toggled with
`c` at 80x24, Enter opens a campaign, x/X ban its sources/networks after a confirmation with the
count (protected and known-good skipped), compromise alerts in red."""

from __future__ import annotations

from textual.widgets import Static

from popwatch.model import AuthEvent
from popwatch.ui.app import PopwatchApp
from popwatch.ui.campaigns import CampaignScreen, CampaignsPanel
from popwatch.ui.screens import ConfirmScreen


async def settle(pilot, app: PopwatchApp) -> None:
    await pilot.pause()
    app.refresh_view(force=True)
    await pilot.pause()


def campaign_lines(demo, user: str, ips: list[str]) -> list[str]:
    from popwatch.model import iso
    t = demo.clock()
    return [f"{iso(t)} mail1 sshd[{900 + i}]: Failed password for {user} from {ip} port {42000 + i} ssh2"
            for i, ip in enumerate(ips)]


async def test_panel_shown_at_160x50_and_toggled_at_80x24(demo):
    app = demo.app()
    async with app.run_test(size=(160, 50)) as pilot:
        await settle(pilot, app)
        panel = app.query_one(CampaignsPanel)
        assert panel.display and panel.rows and panel.rows[0].target.startswith("info@")
    app = demo.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        panel = app.query_one(CampaignsPanel)
        assert not panel.display
        await pilot.press("c")
        await settle(pilot, app)
        assert panel.display and panel.rows
        await pilot.press("c")
        await settle(pilot, app)
        assert not panel.display


async def test_enter_opens_the_campaign_and_x_bans_its_sources_skipping_known_good(demo):
    # a campaign on "carol" from 12 addresses of 203.0.113.0/24; one of them logged in as carol
    # before (known-good), one is in the demo's allow-list network (protected)
    ips = [f"203.0.113.{200 + i}" for i in range(11)] + ["192.0.2.55"]
    t0 = demo.clock()
    demo.monitor.ingest([])
    demo.monitor.campaigns.feed([AuthEvent(t0 - 60, "ssh", "success", "203.0.113.203", "carol")])
    demo.feed(campaign_lines(demo, "carol", ips))
    app = demo.app()
    async with app.run_test(size=(160, 50)) as pilot:
        await settle(pilot, app)
        panel = app.query_one(CampaignsPanel)
        keys = [r.key for r in panel.rows]
        assert "user:carol" in keys
        panel.focus()
        panel.cursor = keys.index("user:carol")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, CampaignScreen)
        body = str(app.screen.query_one("#campaign", Static).render())
        assert "campaign on carol@ssh" in body and "203.0.113.0/24" in body and "known-good" in body
        await pilot.press("x")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        text = str(app.screen.body)
        assert "10 sources of campaign 'carol' will be banned" in text
        assert "203.0.113.203 (logged in before)" in text
        # the protected address is never even counted as a campaign source
        assert "192.0.2.55" not in text and "192.0.2.55" not in app.controller.campaign_sources("user:carol")
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await settle(pilot, app)
        bans = demo.sim.bans()
        assert {f"203.0.113.{200 + i}" for i in range(11) if i != 3} <= bans.keys()
        assert "203.0.113.203" not in bans and "192.0.2.55" not in bans
        assert app.controller.ban_of("203.0.113.200").origin == "key"


async def test_X_bans_the_network_unless_it_holds_a_known_good_address(demo):
    ips = [f"198.51.100.{200 + i}" for i in range(12)]
    demo.feed(campaign_lines(demo, "dave", ips))
    app = demo.app()
    async with app.run_test(size=(160, 50)) as pilot:
        await settle(pilot, app)
        panel = app.query_one(CampaignsPanel)
        panel.focus()
        panel.cursor = [r.key for r in panel.rows].index("user:dave")
        await pilot.press("X")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen) and "1 networks" in str(app.screen.body)
        await pilot.press("y")
        await app.workers.wait_for_complete()
        assert "198.51.100.0/24" in demo.sim.bans()
    # a network where someone logged in is never offered
    demo2 = type(demo)()
    demo2.advance(5)
    demo2.monitor.campaigns.feed([AuthEvent(demo2.clock(), "ssh", "success", "198.51.100.250", "erin")])
    demo2.feed(campaign_lines(demo2, "dave", ips))
    app = demo2.app()
    async with app.run_test(size=(160, 50)) as pilot:
        await settle(pilot, app)
        panel = app.query_one(CampaignsPanel)
        panel.focus()
        panel.cursor = [r.key for r in panel.rows].index("user:dave")
        await pilot.press("X")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert any("no networks to ban" in str(n.message) for n in app._notifications)


async def test_successful_login_from_a_campaign_source_is_shown_in_red(demo):
    ips = [f"203.0.113.{220 + i}" for i in range(12)]
    demo.feed(campaign_lines(demo, "frank", ips))
    demo.monitor.campaigns.feed([AuthEvent(demo.clock(), "ssh", "success", "203.0.113.225", "frank")])
    app = demo.app()
    async with app.run_test(size=(160, 50)) as pilot:
        await settle(pilot, app)
        panel = app.query_one(CampaignsPanel)
        text = panel.render()
        hits = [s for s in text.spans if "red" in str(s.style)
                and "203.0.113.225" in text.plain[s.start:s.end] and "source of this campaign" in text.plain[s.start:s.end]]
        assert hits


def test_campaign_screen_snapshot(demo, snap_compare):
    async def open_campaign(pilot) -> None:
        app = pilot.app
        await settle(pilot, app)
        panel = app.query_one(CampaignsPanel)
        panel.focus()
        panel.cursor = 0
        await pilot.press("enter")
        await pilot.pause()
    assert snap_compare(demo.app(), terminal_size=(160, 50), run_before=open_campaign)
