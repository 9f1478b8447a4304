"""tests/hostsafe.py, the host check of tests/run.py: it must notice every kind of change."""

from __future__ import annotations

import os
from pathlib import Path

from tests import hostsafe


def snap(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {"enabled": {}, "firewall": {"iptables-save": "*filter\nCOMMIT"},
                               "listening": ["tcp 0.0.0.0:22"], "etc": {}}
    base.update(kw)
    return base


def test_same_state_is_no_difference() -> None:
    assert hostsafe.diff(snap(), snap()) == []


def test_each_kind_of_change_is_reported() -> None:
    after = snap(enabled={"/etc/systemd/system/multi-user.target.wants/fail2ban.service": "/lib/x"},
                 firewall={"iptables-save": "*filter\n-A INPUT -j f2b-sshd\nCOMMIT"},
                 listening=["tcp 0.0.0.0:22", "tcp 0.0.0.0:9090"],
                 etc={"/etc/fail2ban/jail.local": "644 0 0 abc"})
    out = hostsafe.diff(snap(), after)
    assert any(x.startswith("enabled: ") and "fail2ban.service added" in x for x in out), out
    assert any(x.startswith("firewall: ") and "+ -A INPUT -j f2b-sshd" in x for x in out), out
    assert "listening: new tcp 0.0.0.0:9090" in out
    assert "etc: /etc/fail2ban/jail.local added" in out


def test_etc_listing_sees_content_mode_and_links(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text("x\n")
    os.symlink("a.conf", tmp_path / "l")
    before = hostsafe.etc_listing(str(tmp_path))
    (tmp_path / "a.conf").write_text("y\n")
    assert hostsafe.etc_listing(str(tmp_path)) != before
    (tmp_path / "a.conf").write_text("x\n")
    assert hostsafe.etc_listing(str(tmp_path)) == before
    os.chmod(tmp_path / "a.conf", 0o600)
    assert hostsafe.etc_listing(str(tmp_path)) != before


def test_counters_do_not_count_as_changes() -> None:
    assert hostsafe._COUNTERS.sub("[0:0]", ":INPUT ACCEPT [12:3456]") == ":INPUT ACCEPT [0:0]"
    assert hostsafe._NFT_COUNTERS.sub("counter", "counter packets 3 bytes 180 drop") == "counter drop"


def test_units_the_install_enabled_are_told_apart() -> None:
    assert hostsafe._unit_of("/etc/systemd/system/multi-user.target.wants/fail2ban.service") == (
        "systemd", "fail2ban.service")
    assert hostsafe._unit_of("/etc/rc2.d/S01fail2ban") == ("sysv", "fail2ban")
    assert hostsafe._unit_of("/etc/systemd/system/sshd.service") == ("alias", "sshd.service")
