"""Start-up restore of saved bans goes through the firewall's bulk path (``ban_many``) on
every kernel backend: 5,000 bans saved in bans.json (a reboot emptied the kernel) are all in
the kernel after ``watch`` starts, with the time they have left; on ``nftables`` they arrive in
one transaction (nf_tables' generation id moves as much for 5,000 restored bans as for one).
Timing figures: benchmarks/restore_bulk.py."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from popwatch.model import Ban
from popwatch.persist import Persist
from tests.conftest import need_tools

from .nslab import REPO, Lab, cleanup_stale

pytestmark = pytest.mark.netns

N = 5000
V4 = [f"198.51.100.{i}" for i in range(1, 255)]  # none of them is a lab address (protected)


def population(n: int) -> list[str]:
    """``n`` distinct ban targets: 254 IPv4 addresses, the rest one address in each of as many
    IPv6 /64s of 2001:db8:8000::/33 (away from the lab's 2001:db8::/64 .. 2001:db8:3::/64)."""
    v6 = [str(ipaddress.IPv6Address(int(ipaddress.IPv6Address("2001:db8:8000::1")) + (i << 64)))
          for i in range(n - len(V4))]
    return V4[:n] + v6


@pytest.fixture(scope="module", autouse=True)
def _stale() -> None:
    if os.geteuid() == 0:
        cleanup_stale("pwrst-")


@pytest.fixture
def lab() -> Iterator[Lab]:
    need_tools("ip", "nft", "ipset")
    with Lab(prefix="pwrst", clients=1) as lab:
        yield lab


@pytest.fixture
def d() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pwrst-"))
    try:
        (path / "mail.log").write_text("")
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def kernel_bans(lab: Lab, backend: str) -> dict[str, int]:
    """Kernel ban entries -> seconds left, read with the admin's own tools."""
    out: dict[str, int] = {}
    if backend == "nftables":
        for name in ("ban4", "ban6"):
            got = json.loads(lab.run(lab.server, ["nft", "-j", "list", "set", "inet", "popwatch", name]).stdout)
            for e in next(o["set"] for o in got["nftables"] if "set" in o).get("elem", []):
                out[str(e["elem"]["val"])] = int(e["elem"].get("expires", 0))
        return out
    for name in ("popwatch4", "popwatch6"):
        for line in lab.run(lab.server, ["ipset", "list", name]).stdout.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] == "timeout":
                out[parts[0]] = int(parts[2])
    return out


GENID = """
import struct
from popwatch.firewall.nftables import NftNetlink
nl = NftNetlink()
for typ, buf, off, end in nl._request(16, 0x1, struct.pack("=BBH", 0, 0, 0)):  # NFT_MSG_GETGEN
    print(next(struct.unpack(">I", v)[0] for a, v in nl.attrs(buf, off, end) if a == 1))  # NFTA_GEN_ID
    break  # one answer, no NLMSG_DONE after it
"""


def generation(lab: Lab) -> int:
    """nf_tables' generation id: +1 for every committed transaction."""
    return int(lab.run(lab.server, ["env", f"PYTHONPATH={REPO}", sys.executable, "-c", GENID]).stdout)


def watch_restores(lab: Lab, d: Path, backend: str, targets: list[str], now: float) -> str:
    """Save bans for ``targets``, start ``watch`` for a second, return its stderr."""
    Persist(d).save_bans([Ban(ip, now - 60, now + 3000 + i % 500, "saved", "auto") for i, ip in enumerate(targets)])
    cp = lab.run(lab.server, ["env", "-u", "SSH_CONNECTION", f"PYTHONPATH={REPO}", sys.executable, "-m", "popwatch",
                              "--backend", backend, "--state-dir", str(d), "watch", "--no-tui",
                              "--log", str(d.parent / "mail.log"), "--ports", "110", "--duration", "1"], timeout=180)
    assert "Traceback" not in cp.stderr and "one by one" not in cp.stderr, cp.stderr
    n = len(targets)
    assert f"popwatch: bans on start: {n} restored, 0 already in the kernel, 0 expired" in cp.stderr, cp.stderr
    return cp.stderr


@pytest.mark.parametrize("backend", ["nft", "nftables"])
def test_restore_5000_saved_bans_in_bulk(lab: Lab, d: Path, backend: str) -> None:
    now = time.time()
    targets = population(N)
    if backend == "nftables":  # restoring 1 ban and 5,000 takes the same number of transactions
        g0 = generation(lab)
        watch_restores(lab, d / "one", backend, targets[:1], now)
        g1 = generation(lab)
        lab.run(lab.server, ["nft", "delete", "table", "inet", "popwatch"])
        g2 = generation(lab)
    t0 = time.time()
    watch_restores(lab, d / "state", backend, targets, now)
    kernel = kernel_bans(lab, backend)
    if backend == "nftables":
        assert generation(lab) - g2 == g1 - g0, "restoring more bans took more transactions"
    want = {ip if ":" not in ip else str(ipaddress.ip_network(ip + "/64", strict=False).network_address)
            + ("" if backend == "nftables" else "/64") for ip in targets}
    assert set(kernel) == want
    # with the time each had left (3000-3500 s at save time), not a fresh full ban
    elapsed = time.time() - t0 + 60
    assert all(2900 - elapsed <= left <= 3500 for left in kernel.values()), sorted(kernel.values())[:3]
    audit = [json.loads(l) for l in (d / "state" / "audit.jsonl").read_text().splitlines()]
    restores = [a for a in audit if a["action"] == "restore" and a["origin"] == "reconcile"]
    assert sum(a.get("count", 1) for a in restores) == N  # one record per ban, or one naming the count
