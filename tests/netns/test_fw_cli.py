"""``popwatch ban/unban/bans/limit/status/uninstall`` run for real inside a lab namespace."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .nslab import REPO, Lab

pytestmark = pytest.mark.netns


def cli(lab: Lab, state: Path, *args: str, env: dict[str, str] | None = None,
        backend: str = "nft") -> subprocess.CompletedProcess[str]:
    envv = ["env", "-u", "SSH_CONNECTION", "-u", "SSH_CLIENT", f"PYTHONPATH={REPO}"]
    for k, v in (env or {}).items():
        envv.append(f"{k}={v}")
    return lab.run(lab.server, [*envv, sys.executable, "-m", "popwatch", "--backend", backend,
                                "--state-dir", str(state), *args], check=False)


@pytest.fixture
def backend() -> str:
    """The CLI runs ``--backend nft`` here: this host's iptables is the nf_tables flavour, on
    which ``--backend legacy`` is refused by design (see test_firewall_detect)."""
    return "nft"


def test_ban_bans_status_unban(lab: Lab, tmp_path: Path, backend: str) -> None:
    r = cli(lab, tmp_path, "ban", "203.0.113.5", "--reason", "dictionary attack")
    assert r.returncode == 0, r.stderr
    assert cli(lab, tmp_path, "ban", "::ffff:198.51.100.9", "--ttl", "forever").returncode == 0
    assert cli(lab, tmp_path, "ban", "2001:db8:5::1", "--ttl", "10m").returncode == 0
    bans = json.loads(cli(lab, tmp_path, "bans", "--json").stdout)
    by_ip = {b["ip"]: b for b in bans}
    assert set(by_ip) == {"203.0.113.5", "198.51.100.9", "2001:db8:5::1"}
    assert by_ip["203.0.113.5"]["reason"] == "dictionary attack"
    assert by_ip["203.0.113.5"]["origin"] == "cli"
    assert by_ip["198.51.100.9"]["expires"] is None
    assert by_ip["2001:db8:5::1"]["expires"].endswith("+00:00")
    assert all(set(b) >= {"ip", "expires", "reason", "origin"} for b in bans)
    st = json.loads(cli(lab, tmp_path, "status", "--json").stdout)
    assert st["backend"] == "nft" and st["bans"] == 3 and isinstance(st["warnings"], list)
    assert [p["port"] for p in st["ports"]] == [110, 143, 22]
    assert set(st["ports"][0]) >= {"port", "mode", "rate", "burst", "passed", "dropped"}
    assert cli(lab, tmp_path, "unban", "203.0.113.5").returncode == 0
    assert "203.0.113.5" not in cli(lab, tmp_path, "bans").stdout
    audit = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert [json.loads(l)["action"] for l in audit] == ["ban", "ban", "ban", "unban"]


def test_limit_and_status(lab: Lab, tmp_path: Path, backend: str) -> None:
    r = cli(lab, tmp_path, "limit", "110", "--mode", "per-source", "--rate", "5/second", "--burst", "10")
    assert r.returncode == 0, r.stderr
    st = json.loads(cli(lab, tmp_path, "status", "--json").stdout)
    p110 = next(p for p in st["ports"] if p["port"] == 110)
    assert (p110["mode"], p110["rate"], p110["burst"]) == ("per-source", "5/second", 10)
    r = cli(lab, tmp_path, "limit", "110", "--burst", "4")
    assert r.returncode == 0
    out = lab.run(lab.server, ["iptables", "-S", "POPWATCH"]).stdout
    assert "--hashlimit-upto 5/sec --hashlimit-burst 4" in out
    assert "per-source" in cli(lab, tmp_path, "limit", "110").stdout


@pytest.mark.parametrize("args,code", [
    (["ban", "example.com"], 2),
    (["ban", "1.2.3.4; rm -rf /"], 2),
    (["ban", "203.0.113.0/24"], 2),
    (["ban", "203.0.113.5", "--ttl", "soon"], 2),
    (["limit", "110", "--rate", "5/fortnight"], 2),
    (["limit", "110", "--mode", "global", "--burst", "0"], 2),
    (["limit", "99999", "--mode", "global"], 2),
    (["ban", "127.0.0.1"], 4),
    (["ban", "::1"], 4),
    (["ban", "192.0.2.1"], 4),                       # the server's own address
    (["ban", "::ffff:192.0.2.1"], 4),
    (["ban", "203.0.113.0/24", "--net"], 4),           # contains the allow-listed 203.0.113.200
    (["ban", "203.0.113.200"], 4),
    (["ban", "203.0.113.77"], 4),                      # SSH_CONNECTION client
    (["ban", "2001:db8:9::1"], 4),                     # same /64 as the SSH client below
])
def test_refusals(lab: Lab, tmp_path: Path, args: list[str], code: int) -> None:
    conf = tmp_path / "popwatch.toml"
    conf.write_text('[policy]\nallow = ["203.0.113.200/32"]\n')
    env = {"SSH_CONNECTION": "203.0.113.77 50000 192.0.2.1 22"}
    if args[-1] == "2001:db8:9::1":
        env = {"SSH_CONNECTION": "2001:db8:9::77 50000 2001:db8::1 22"}
    r = cli(lab, tmp_path, "--config", str(conf), *args, env=env)
    assert r.returncode == code, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("popwatch")
    assert lab.run(lab.server, ["ipset", "list", "-n"], check=False).stdout.split() == []  # refused before anything was created
    for s in ("popwatch4", "popwatch6"):
        out = lab.run(lab.server, ["ipset", "list", s], check=False).stdout
        assert "Members:\n" not in out or out.split("Members:\n", 1)[1].strip() == ""


def test_dry_run_and_uninstall(lab: Lab, tmp_path: Path) -> None:
    lab.run(lab.server, ["iptables", "-A", "INPUT", "-s", "198.51.100.7", "-j", "DROP"])
    before = lab.run(lab.server, ["iptables-save"]).stdout.split("\n", 1)[1]
    r = cli(lab, tmp_path, "--dry-run", "ban", "203.0.113.9", "--ttl", "1h")
    assert r.returncode == 0
    assert "ipset -exist add popwatch4 203.0.113.9 timeout 3600" in r.stdout
    assert lab.run(lab.server, ["ipset", "list", "-n"]).stdout.strip() == ""
    assert not (tmp_path / "audit.jsonl").exists()
    assert cli(lab, tmp_path, "ban", "203.0.113.9").returncode == 0
    assert cli(lab, tmp_path, "limit", "22", "--mode", "global", "--rate", "1/second").returncode == 0
    r = cli(lab, tmp_path, "--dry-run", "uninstall")
    assert "-X POPWATCH" in r.stdout and "ipset destroy popwatch4" in r.stdout
    assert cli(lab, tmp_path, "uninstall").returncode == 0
    after = lab.run(lab.server, ["iptables-save"]).stdout.split("\n", 1)[1]
    strip = lambda t: "\n".join(l for l in t.splitlines() if not l.startswith("#"))  # noqa: E731
    assert strip(after) == strip(before)
    assert lab.run(lab.server, ["ipset", "list", "-n"]).stdout.strip() == ""
