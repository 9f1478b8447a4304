"""The demo: a simulated attack on real daemon lines, against the simulated firewall.

Shared by ``popwatch demo``, the UI tests and the screenshot generator, so all three show the
same thing. :class:`FrozenDemo` runs the scenario on a frozen clock that only moves when told,
for deterministic tests and screenshots.
"""

from __future__ import annotations

from typing import IO

from .firewall.sim import SimFirewall
from .model import CounterSample, PortLimit, Rate, RawLine
from .monitor import Monitor
from .parse import Parser
from .policy import Protector
from .sources.replay import DemoClock, DemoSource, Scenario
from .store import StateStore

DEMO_LIMITS = [
    # the 2009 rule, as the admin had it: one bucket for everyone on POP3
    PortLimit(110, "global", Rate.of(1, 1), 1),
    PortLimit(143, "count"),
    PortLimit(22, "count"),
]
#: the demo's "office" network: allow-listed, never banned
DEMO_ALLOW = ["192.0.2.0/24"]


def build_demo(*, speed: float = 1.0, seed: int = 2009, start: float | None = None, frozen: bool = False,
               events_out: IO[str] | None = None) -> tuple[Monitor, Scenario]:
    """The demo's Monitor (sim firewall, scenario source)."""
    clock = DemoClock(start=start, speed=speed, frozen=frozen)
    sim = SimFirewall(clock=clock)
    scenario = Scenario(sim, clock, seed=seed)
    store = StateStore(clock=clock)
    monitor = Monitor(store=store, parser=Parser(now=clock), sources=[DemoSource(scenario)], firewall=sim,
                      protector=Protector(allow=DEMO_ALLOW), mono=clock, events_out=events_out,
                      conns=scenario.conns)
    monitor.start_firewall(DEMO_LIMITS)
    return monitor, scenario


class FrozenDemo:
    """The demo on a clock that moves only in :meth:`advance` (tests, screenshots)."""

    START = 1_795_000_000.0  # 2026-11-18, a fixed date for reproducible pictures

    def __init__(self, seed: int = 2009) -> None:
        self.monitor, self.scenario = build_demo(start=self.START, frozen=True, seed=seed)
        self.clock = self.scenario.clock
        self.sim: SimFirewall = self.scenario.sim
        self.n = 0
        self.monitor.store.add_counters(CounterSample(self.clock(), self.sim.counters(), 0))

    def advance(self, seconds: int) -> None:
        """Move scenario time on, one second at a time, ingesting lines and polling counters."""
        for _ in range(seconds):
            self.clock.advance(1)  # type: ignore[attr-defined]  # a frozen demo runs on a FakeClock
            self.feed(self.scenario.until(self.clock()))
            self.monitor.store.add_counters(CounterSample(self.clock(), self.sim.counters(),
                                                          self.sim.banned_dropped()))
            self.monitor.store.set_conns(self.scenario.conns(self.monitor.store.limits))

    def feed(self, lines: list[str]) -> None:
        raw = [RawLine(t, "demo", self.n + i + 1) for i, t in enumerate(lines)]
        self.n += len(lines)
        self.monitor.ingest(raw)

    def app(self, **kw):
        from .ui.app import make_app

        return make_app(self.monitor, mode="demo", host="mail1", run_monitor=False, **kw)
