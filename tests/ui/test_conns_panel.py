"""Issue 18, point 3: the ports panel shows what is actually open (established connections and
the top source's share) next to the new-connection rate, and says when guesses arrive over few
long-lived connections."""

from __future__ import annotations

import re

from popwatch.conns import PortConns
from popwatch.model import PortLimit, Rate
from popwatch.firewall.sim import SimFirewall
from popwatch.model import CounterSample
from popwatch.monitor import Monitor
from popwatch.parse import Parser
from popwatch.store import StateStore
from popwatch.ui.app import make_app
from popwatch.ui.widgets import PortsPanel
from tests.helpers import Clock, ev

from .test_keys import settle

HYDRA = "198.51.100.20"


def lab(new_per_s: int = 0) -> tuple[Monitor, Clock, SimFirewall]:
    """ssh under a guesser that keeps two connections open: 40 failures in the last minute,
    ``new_per_s`` new connections a second on port 22."""
    clock = Clock()
    sim = SimFirewall(clock=clock)
    store = StateStore(clock=clock)
    mon = Monitor(store=store, parser=Parser(now=clock), firewall=sim)
    mon.start_firewall([PortLimit(22, "count"), PortLimit(110, "global", Rate.of(1, 1), 1)])
    store.add_counters(CounterSample(clock(), sim.counters(), 0))
    store.add_events([ev(HYDRA, clock() - 40 + i) for i in range(40)])
    for _ in range(3):
        clock.t += 1
        for _ in range(new_per_s):
            sim.connect("203.0.113.70", 22)
        store.add_counters(CounterSample(clock(), sim.counters(), 0))
    return mon, clock, sim


def port_row(text: str, port: int) -> str:
    return next(line for line in text.splitlines() if re.match(rf"^[▶ ]*{port} ", line))


async def select_port(pilot, panel: PortsPanel, port: int) -> None:
    await pilot.press("tab")
    for _ in range(len(panel.ports)):
        if panel.selected_port == port:
            return
        await pilot.press("down")
    assert panel.selected_port == port


async def test_open_connections_and_the_long_lived_line():
    mon, _, _ = lab()
    mon.store.set_conns({22: PortConns(22, 2, HYDRA, 2, 1), 110: PortConns(110, 0)})
    app = make_app(mon, mode="demo", host="mail1", run_monitor=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        panel = app.query_one(PortsPanel)
        await select_port(pilot, panel, 22)
        await settle(pilot, app)
        text = panel.render().plain
        row22 = port_row(text, 22)
        assert re.search(r"ok\s+0\.0/s .* open\s+2 100%$", row22), row22
        row110 = port_row(text, 110)
        assert re.search(r"open\s+0\s*$", row110), row110
        m = re.search(r"22: (\d+) guesses/min from 198\.51\.100\.20 over 2 open connections: "
                      r"cap connections per source, not new/s", text)
        assert m and int(m.group(1)) >= 30, text
        assert f"22: top attacker {HYDRA}" in text
        # more sources on the port: the line names the top one and how many it holds
        mon.store.set_conns({22: PortConns(22, 5, HYDRA, 4, 2), 110: PortConns(110, 0)})
        await settle(pilot, app)
        text = panel.render().plain
        assert "guesses/min from 198.51.100.20 over 4 open connections: cap" in text
        assert re.search(r"open\s+5  80%", text)
        # the connections closed: no long-lived line, the open count goes to 0
        mon.store.set_conns({22: PortConns(22, 0), 110: PortConns(110, 0)})
        await settle(pilot, app)
        text = panel.render().plain
        assert "guesses/min over" not in text and "top attacker" in text


async def test_no_long_lived_line_when_each_guess_is_a_new_connection():
    mon, _, _ = lab(new_per_s=60)  # 3,600 new connections a minute against 40 guesses
    mon.store.set_conns({22: PortConns(22, 3, HYDRA, 3, 1), 110: PortConns(110, 0)})
    app = make_app(mon, mode="demo", host="mail1", run_monitor=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        panel = app.query_one(PortsPanel)
        await select_port(pilot, panel, 22)
        await settle(pilot, app)
        text = panel.render().plain
        assert re.search(r"ok\s+60/s", text) and re.search(r"open\s+3 100%", text), text
        assert "guesses/min over" not in text


async def test_without_a_socket_table_the_panel_has_no_open_column():
    mon, _, _ = lab()
    app = make_app(mon, mode="demo", host="mail1", run_monitor=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        text = app.query_one(PortsPanel).render().plain
        assert "ok" in text and "open" not in text


async def test_the_demo_shows_the_simulated_socket_table(demo):
    app = demo.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        conns = demo.monitor.store.conns
        assert conns[110].established > 0 and conns[110].top_ip == "203.0.113.66"
        text = app.query_one(PortsPanel).render().plain
        for p in (22, 110, 143):
            c = conns[p]
            row = port_row(text, p)
            assert re.search(rf"open\s+{c.established}\s+{c.top_share:.0%}$", row), row
