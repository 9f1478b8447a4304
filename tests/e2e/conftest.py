"""Fixtures for the real-daemon lab (tests/e2e/mailab.py): a fresh lab per test, cleaned up
(daemons and namespaces, by PID) also when the test fails."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import IS_ROOT, need_tools

from .mailab import MailLab, cleanup_stale_labs

LAB_TOOLS = ("ip", "unshare", "nsenter", "ss", "iptables-nft", "iptables-legacy", "ipset", "dovecot",
             "/usr/sbin/sshd", "rsyslogd", "hydra", "ssh-keygen", "openssl", "timeout")


@pytest.fixture(scope="session", autouse=True)
def _stale_e2e_namespaces() -> None:
    if IS_ROOT:
        cleanup_stale_labs()


@pytest.fixture
def maillab(request: pytest.FixtureRequest) -> Iterator[MailLab]:
    """A fresh lab. Its directory is under /tmp (not pytest's 0700 tmp_path: dovecot's
    unprivileged processes must reach it); removed afterwards unless PWE2E_KEEP=1 or the test
    failed (then its path is printed)."""
    need_tools(*LAB_TOOLS)
    d = Path(tempfile.mkdtemp(prefix="pwe2e-lab-"))
    ok = False
    try:
        with MailLab(d) as lab:
            yield lab
        rep = getattr(request.node, "rep_call", None)
        ok = rep is not None and rep.passed
    finally:
        if ok and not os.environ.get("PWE2E_KEEP"):
            shutil.rmtree(d, ignore_errors=True)
        else:
            print(f"lab directory kept: {d}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]
