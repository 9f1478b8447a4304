"""Build the demo app deterministically: frozen scenario clock, monitor not auto-running;
tests push scenario time forward and ingest by hand."""

from __future__ import annotations

import pytest

from popwatch.commands.watch import build_demo
from popwatch.model import CounterSample, RawLine
from popwatch.ui.app import make_app

START = 1_795_000_000.0


class Demo:
    def __init__(self, seed: int = 2009) -> None:
        self.monitor, self.scenario = build_demo(start=START, frozen=True, seed=seed)
        self.clock = self.scenario.clock
        self.sim = self.monitor.firewall
        self.n = 0

    def advance(self, seconds: int) -> None:
        for _ in range(seconds):
            self.clock.advance(1)
            lines = self.scenario.until(self.clock())
            self.feed(lines)
            self.monitor.store.add_counters(CounterSample(self.clock(), self.sim.counters(),
                                                          self.sim.banned_dropped()))

    def feed(self, lines: list[str]) -> None:
        raw = [RawLine(t, "demo", self.n + i + 1) for i, t in enumerate(lines)]
        self.n += len(lines)
        self.monitor.ingest(raw)

    def app(self, **kw):
        return make_app(self.monitor, mode="demo", host="mail1", run_monitor=False, **kw)


@pytest.fixture
def demo() -> Demo:
    d = Demo()
    d.advance(90)
    return d
