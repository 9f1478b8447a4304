"""The demo app, deterministic: frozen scenario clock, monitor not auto-running; tests move
scenario time with ``demo.advance(seconds)``."""

from __future__ import annotations

import pytest

from popwatch.demo import FrozenDemo


@pytest.fixture
def demo() -> FrozenDemo:
    d = FrozenDemo()
    d.advance(90)
    return d
