"""Suite-wide rules.

Tests marked ``root``, ``netns`` or ``daemons`` need root (and the kernel, and real daemons).
Without root they skip with a reason; under ``CI=true`` they must run, so a missing
capability or install step is a failure, never a silent skip.
"""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
IS_ROOT = os.geteuid() == 0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true",
                     help="also run the long variants (full dictionary); CI=true always runs them")


def need(condition: bool, reason: str) -> None:
    """Skip when ``condition`` is false, but fail under CI=true: CI must run everything."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {reason}: the test command must provide it", pytrace=False)
    pytest.skip(reason)


def need_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    need(not missing, f"missing tools: {', '.join(missing)}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if any(item.get_closest_marker(m) for m in ("root", "netns", "daemons")):
        need(IS_ROOT, "needs root (network namespaces, the kernel firewall, real daemons)")
    if item.get_closest_marker("slow") and not (IN_CI or item.config.getoption("--slow")):
        pytest.skip("long variant: run with --slow (CI=true runs it)")
