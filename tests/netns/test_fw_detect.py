"""Backend detection in a real namespace: rules in both kernel backends, and never creating
legacy tables on an nf_tables host just by looking."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from .nslab import REPO, Lab

pytestmark = pytest.mark.netns

_PROBE = r"""
import json
from popwatch.firewall import detect
print(json.dumps({"nft": detect.popwatch_in_nft(), "legacy": detect.popwatch_in_legacy(),
                  "tables": detect.legacy_tables(), "flavour": detect.host_flavour()}))
"""


def probe(lab: Lab) -> dict:
    out = lab.run(lab.server, ["env", f"PYTHONPATH={REPO}", sys.executable, "-c", _PROBE]).stdout
    return json.loads(out)


def legacy_names(lab: Lab) -> list[str]:
    return lab.run(lab.server, ["cat", "/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"]).stdout.split()


def cli(lab: Lab, state: Path, *args: str) -> tuple[int, str, str]:
    cp = lab.run(lab.server, ["env", "-u", "SSH_CONNECTION", "-u", "SSH_CLIENT", f"PYTHONPATH={REPO}",
                              sys.executable, "-m", "popwatch", "--state-dir", str(state), *args], check=False)
    return cp.returncode, cp.stdout, cp.stderr


def test_detection_never_creates_legacy_tables(lab: Lab, tmp_path: Path) -> None:
    lab.run(lab.server, ["iptables-nft", "-w", "-N", "POPWATCH"])
    assert legacy_names(lab) == []
    p = probe(lab)
    assert p == {"nft": True, "legacy": False, "tables": {"4": False, "6": False}, "flavour": "nft"}
    code, out, err = cli(lab, tmp_path, "--backend", "auto", "status", "--json")
    assert code == 0, err
    assert json.loads(out)["backend"] == "nft"
    assert legacy_names(lab) == []                      # still no legacy table in this namespace


def test_rules_in_both_backends_refuse_writes_until_one_is_picked(lab: Lab, tmp_path: Path) -> None:
    for binary in ("iptables-nft", "iptables-legacy"):
        lab.run(lab.server, [binary, "-w", "-N", "POPWATCH"])
        lab.run(lab.server, [binary, "-w", "-I", "INPUT", "-j", "POPWATCH"])
    assert probe(lab)["legacy"] is True and probe(lab)["nft"] is True
    code, out, _ = cli(lab, tmp_path, "--backend", "auto", "status", "--json")
    assert code == 0 and any("both" in w for w in json.loads(out)["warnings"])
    code, _, err = cli(lab, tmp_path, "--backend", "auto", "ban", "203.0.113.5")
    assert code == 1 and "both" in err and "--backend" in err
    assert lab.run(lab.server, ["ipset", "list", "-n"]).stdout.strip() == ""
    # the admin removes the legacy copy (allowed on an nft host only because there is one)
    code, _, err = cli(lab, tmp_path, "--backend", "legacy", "uninstall")
    assert code == 0, err
    assert "POPWATCH" not in lab.run(lab.server, ["iptables-legacy-save"]).stdout
    assert "-N POPWATCH" in lab.run(lab.server, ["iptables-nft", "-S"]).stdout   # the nft copy stays
    code, _, err = cli(lab, tmp_path, "--backend", "auto", "ban", "203.0.113.5")
    assert code == 0, err
    # and with no legacy copy left, --backend legacy is refused again on this nf_tables host
    code, _, err = cli(lab, tmp_path, "--backend", "legacy", "status")
    assert code == 1 and "nf_tables" in err
