"""``popwatch scan --what-if``: the CLI face of the what-if replay."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources

SAMPLES = resources.files("popwatch") / "data" / "samples"
HYDRA = str(SAMPLES / "debian12-rsyslog-hydra-full" / "mail.log")
AUTH = str(SAMPLES / "debian12-rsyslog-hydra-full" / "auth.log")


def run(*args: str):
    return subprocess.run([sys.executable, "-m", "popwatch", *args], capture_output=True, text=True, timeout=60)


def test_scan_what_if_policy_text_and_json(tmp_path):
    r = run("scan", "--what-if", "maxretry=5,findtime=10m", HYDRA, AUTH)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("what-if maxretry=5,findtime=10m:")
    assert "would have been banned" in r.stdout and "203.0.113.12" in r.stdout
    assert "logged in successfully would have been hit" in r.stdout
    j = run("scan", "--json", "--what-if", "maxretry=5,findtime=10m", HYDRA, AUTH)
    rep = json.loads(j.stdout)
    ips = {b["ip"]: b for b in rep["banned"]}
    assert ips["203.0.113.12"]["attempts"] >= 5 and rep["success_ips"] >= 1
    # a much higher maxretry bans fewer
    hi = json.loads(run("scan", "--json", "--what-if", "maxretry=100,findtime=1h", HYDRA, AUTH).stdout)
    assert len(hi["banned"]) < len(rep["banned"])


def test_scan_what_if_uses_the_config_allow_list(tmp_path):
    cfg = tmp_path / "pw.toml"
    cfg.write_text('[policy]\nallow = ["203.0.113.0/24"]\n')
    rep = json.loads(run("--config", str(cfg), "scan", "--json", "--what-if", "maxretry=3", HYDRA, AUTH).stdout)
    assert rep["banned"] and not any(b["ip"].startswith("203.0.113.") for b in rep["banned"])


def test_scan_what_if_port_limit():
    rep = json.loads(run("scan", "--json", "--what-if", "port=110,rate=1/minute,burst=3", HYDRA).stdout)
    assert rep["dropped"] and rep["proposal"].startswith("port 110 global")


def test_scan_what_if_bad_proposal_is_a_usage_error():
    for bad in ("maxretry=x", "colour=blue", "findtime=soon", "rate=5/s"):
        r = run("scan", "--what-if", bad, HYDRA)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (bad, r.stderr)
