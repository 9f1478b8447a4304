"""Issue 18 point 4: lines from a banned address that still arrive are marked ``after ban`` in the
live log, the detail view says why, and shows how many open connections the ban closed. Issue
13 point 4: the header says when popwatch put its rules back."""

from __future__ import annotations

from popwatch.model import Ban
from popwatch.ui.screens import DetailScreen
from popwatch.ui.widgets import HeaderBar, LiveLog
from tests.helpers import ev

from .test_app import settle

IP = "203.0.113.77"


async def test_after_ban_lines_marked_and_explained(demo):
    store = demo.monitor.store
    now = demo.clock()
    store.add_events([ev(IP, now - 5, "pop3", user="before")])
    store.set_ban(Ban(IP, now - 3, now + 3600, "test", "key", closed=2))
    store.add_events([ev(IP, now - 1, "pop3", user="late1"), ev(IP, now, "imap", user="late2")])
    app = demo.app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, app)
        lines = [l for l in app.query_one(LiveLog).render().plain.splitlines() if IP in l]
        assert [("after ban" in l) for l in lines[-3:]] == [False, True, True], lines
        row = next(r for r in store.snapshot(k=100000).rows if r.ip == IP)
        events = [e for e in store.events if e.ip == IP]
        body = DetailScreen(row, events, store.bans[IP], now, None).body().plain
        assert "the ban closed 2 open connections of this address" in body
        assert "2 lines arrived after the ban" in body and "opened before a ban" in body
        assert body.count("after ban ") == 2


async def test_header_says_when_rules_were_put_back(demo):
    demo.monitor.healer.last = (demo.clock(), "fw: rules restored")
    app = demo.app()
    async with app.run_test(size=(160, 30)) as pilot:
        await settle(pilot, app)
        assert "fw: rules restored" in app.query_one(HeaderBar).render().plain
