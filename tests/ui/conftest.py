"""The demo app, deterministic: frozen scenario clock, monitor not auto-running; tests move
scenario time with ``demo.advance(seconds)``. Local time is UTC (the live log and the detail
screen print wall-clock times) and the input cursor does not blink, so snapshots are stable."""

from __future__ import annotations

import time

import pytest
from textual.widgets import Input

from popwatch.demo import FrozenDemo


@pytest.fixture(autouse=True)
def _utc_and_no_cursor_blink(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.setattr(Input, "_toggle_cursor", lambda self: None)
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def demo() -> FrozenDemo:
    d = FrozenDemo()
    d.advance(90)
    return d
