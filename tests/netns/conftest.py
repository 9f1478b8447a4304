"""Fixtures for the kernel firewall tests: a fresh namespace lab per test, and a firewall
backend driven inside its server namespace."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import IS_ROOT, need_tools

from .fwdriver import FwClient
from .nslab import Lab, cleanup_stale

KERNEL_BACKENDS = ("legacy", "nft")
#: the iptables backends plus the native one (popwatch's own ``table inet popwatch``)
ALL_KERNEL_BACKENDS = (*KERNEL_BACKENDS, "nftables")


@pytest.fixture(scope="session", autouse=True)
def _stale_namespaces() -> None:
    """Remove namespaces a crashed earlier run of this suite left behind (dead creator pid)."""
    if IS_ROOT:
        cleanup_stale()


@pytest.fixture
def lab() -> Iterator[Lab]:
    need_tools("ip", "iptables-nft", "iptables-legacy", "ipset")
    with Lab() as lab:
        yield lab


@pytest.fixture
def lock(tmp_path: Path) -> str:
    return str(tmp_path / "popwatch.lock")


def save_cmd(backend: str, family: int) -> list[str]:
    flavour = "legacy" if backend.startswith("legacy") else "nft"
    return [f"{'ip6' if family == 6 else 'ip'}tables-{flavour}-save"]


def ipt_cmd(backend: str, family: int) -> str:
    flavour = "legacy" if backend.startswith("legacy") else "nft"
    return f"{'ip6' if family == 6 else 'ip'}tables-{flavour}"


def make_fw(lab: Lab, backend: str, lock: str, **opts: object) -> FwClient:
    return FwClient(lab, lab.server, backend, lock_path=lock, **opts)
