"""Backend selection, root checks and the CLI's exit codes without touching any firewall."""

from __future__ import annotations

from pathlib import Path

import pytest

from popwatch import cli
from popwatch.firewall import detect
from popwatch.firewall.base import FirewallError, NeedsRoot, NoFirewall
from popwatch.model import PortLimit


def test_legacy_tables_reads_proc_without_creating(tmp_path: Path) -> None:
    (tmp_path / "ip_tables_names").write_text("nat\nfilter\n")
    (tmp_path / "ip6_tables_names").write_text("")
    assert detect.legacy_tables(tmp_path) == {4: True, 6: False}
    assert detect.legacy_tables(tmp_path / "missing") == {4: False, 6: False}


def test_none_and_sim() -> None:
    fw = detect.make_firewall("none", ports=[110, PortLimit(143, "count")])
    assert isinstance(fw, NoFirewall) and set(fw.limits()) == {110, 143}
    with pytest.raises(FirewallError):
        fw.ban("203.0.113.5")
    assert detect.make_firewall("sim").name == "sim"


def test_bad_backend() -> None:
    with pytest.raises(FirewallError):
        detect.make_firewall("pf")


def test_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detect, "has_net_admin", lambda: False)
    for backend in ("auto", "nft", "legacy"):
        with pytest.raises(NeedsRoot, match="CAP_NET_ADMIN"):
            detect.make_firewall(backend)


def test_legacy_refused_on_nft_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detect, "has_net_admin", lambda: True)
    monkeypatch.setattr(detect, "host_flavour", lambda: "nft")
    monkeypatch.setattr(detect, "popwatch_in_legacy", lambda: False)
    with pytest.raises(FirewallError, match="nf_tables"):
        detect.make_firewall("legacy", check_both=False)
    # allowed only to clean up an old legacy copy of popwatch's rules
    monkeypatch.setattr(detect, "popwatch_in_legacy", lambda: True)
    fw = detect.make_firewall("legacy", check_both=False)
    assert fw.name == "legacy" and "only for removing" in fw.warnings()[0]


def test_auto_picks_by_flavour(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detect, "has_net_admin", lambda: True)
    monkeypatch.setattr(detect, "popwatch_in_nft", lambda: False)
    monkeypatch.setattr(detect, "popwatch_in_legacy", lambda: False)
    monkeypatch.setattr(detect, "legacy_tables", lambda proc=None: {4: False, 6: False})
    monkeypatch.setattr(detect, "popwatch_in_nftables", lambda: False)
    monkeypatch.setattr(detect, "has_libnftables", lambda: True)
    monkeypatch.setattr(detect, "host_flavour", lambda: "nft")
    fw = detect.make_firewall("auto")
    assert fw.name == "nftables" and "no iptables rules" in fw.why
    # popwatch's rules already in iptables-nft: keep them, say how to move
    monkeypatch.setattr(detect, "popwatch_in_nft", lambda: True)
    fw = detect.make_firewall("auto")
    assert fw.name == "nft" and any("--backend nftables" in w for w in fw.warnings())
    monkeypatch.setattr(detect, "popwatch_in_nft", lambda: False)
    monkeypatch.setattr(detect, "has_libnftables", lambda: False)
    assert detect.make_firewall("auto").name == "nft"
    monkeypatch.setattr(detect, "has_libnftables", lambda: True)
    monkeypatch.setattr(detect, "host_flavour", lambda: "legacy")
    assert detect.make_firewall("auto").name == "legacy"
    monkeypatch.setattr(detect, "host_flavour", lambda: None)
    assert detect.make_firewall("auto").name == "nftables"   # nft only, no iptables binary
    monkeypatch.setattr(detect, "has_libnftables", lambda: False)
    with pytest.raises(FirewallError, match="not installed"):
        detect.make_firewall("auto")


def test_rules_in_both_backends_refuse_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detect, "has_net_admin", lambda: True)
    monkeypatch.setattr(detect, "host_flavour", lambda: "nft")
    monkeypatch.setattr(detect, "popwatch_in_nft", lambda: True)
    monkeypatch.setattr(detect, "popwatch_in_legacy", lambda: True)
    monkeypatch.setattr(detect, "popwatch_in_nftables", lambda: False)
    fw = detect.make_firewall("auto")
    assert not fw.can_write and "both" in fw.warnings()[0]
    with pytest.raises(FirewallError, match="both"):
        fw.ban("203.0.113.5", 60)
    for change in (lambda: fw.install([PortLimit(110)]), lambda: fw.set_limit(PortLimit(110)),
                   fw.uninstall, lambda: fw.unban("203.0.113.5")):
        with pytest.raises(FirewallError, match="both"):
            change()  # refused before anything is read or run
    explicit = detect.make_firewall("nft")
    assert explicit.can_write and "legacy" in explicit.warnings()[0]


def test_cli_exit_3_without_root(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                 tmp_path: Path) -> None:
    monkeypatch.setattr(detect, "has_net_admin", lambda: False)
    for argv in (["ban", "203.0.113.5"], ["status"], ["limit", "110", "--mode", "global"], ["uninstall"]):
        code = cli.main(["--backend", "nft", "--state-dir", str(tmp_path), *argv])
        err = capsys.readouterr().err
        assert code == 3, argv
        assert "sudo" in err and len(err.strip().splitlines()) == 1


def test_cli_usage_errors_exit_2_before_anything(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("the firewall must not be built for a bad value")

    monkeypatch.setattr(detect, "make_firewall", boom)
    for argv in (["ban", "example.com"], ["ban", "1.2.3.4;id"], ["ban", "203.0.113.0/24"],
                 ["ban", "203.0.113.5", "--ttl", "later"], ["limit", "110", "--rate", "fast"],
                 ["limit", "x", "--mode", "global"], ["limit", "110", "--burst", "-1"]):
        code = cli.main(["--backend", "nft", "--state-dir", str(tmp_path), *argv])
        err = capsys.readouterr().err
        assert code == 2, argv
        assert len(err.strip().splitlines()) == 1
