"""``popwatch doctor``'s kernel checks follow the backend in use, and the kernel's own answer
(a check-only nft transaction, stood in for here: the real kernel cannot lose a module) wins
over what the files say. The checks against the real kernel run in tests/netns/test_stock_server.py."""

from __future__ import annotations

import pytest

from popwatch.commands import doctor as D
from popwatch.firewall import nftables as N


def test_kernel_checks_are_those_of_the_backend() -> None:
    assert [c["check"] for c in D.check_kernel("nft", root=False)] == \
        ["kernel ip_set", "kernel xt_set", "kernel xt_hashlimit", "kernel conntrack"]
    assert [c["check"] for c in D.check_kernel("nftables", root=False)] == \
        ["kernel nf_tables", "kernel nft_set", "kernel nft_limit", "kernel nft_ct"]
    assert D.check_kernel("none", root=False) == [] and D.check_kernel("sim", root=False) == []


def test_the_kernels_refusal_names_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    refused = "nft: Error: Could not process rule: No such file or directory"
    monkeypatch.setattr(N, "probe_kernel", lambda nft=None: {"nf_tables": None, "nft_set": None,
                                                             "nft_limit": refused, "nft_ct": None})
    by = {c["check"]: c for c in D.check_kernel("nftables", root=True)}
    lim = by["kernel nft_limit"]
    assert not lim["ok"] and "modprobe nft_limit" in lim["detail"] and refused in lim["detail"]
    assert "rate limits" in lim["detail"] and "\n" not in lim["detail"]
    assert all(by[k]["ok"] for k in ("kernel nf_tables", "kernel nft_set", "kernel nft_ct"))
    assert "check-only" in by["kernel nft_ct"]["detail"]


def test_backend_check_says_which_and_why() -> None:
    ok = D.check_backend("nftables", "auto: nf_tables host, no iptables rules of popwatch", None)
    assert ok["ok"] and ok["detail"].startswith("nftables (popwatch's own table inet popwatch")
    assert ok["detail"].endswith("why: auto: nf_tables host, no iptables rules of popwatch")
    bad = D.check_backend(None, "", "iptables is not installed: install the 'iptables' package")
    assert not bad["ok"] and bad["detail"].startswith("none can be used: iptables is not installed")
