"""Kernel probes against fake /proc, /sys and /lib/modules trees (the real kernel cannot be
changed), firewall errors turned into one line, and the ipset layer's answer when the kernel
has no ip_set (a monkeypatched netlink socket answering like such a kernel)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from popwatch import hostcheck as H
from popwatch.firewall import ipset as I
from popwatch.firewall.base import FirewallError, NeedsRoot


def tree(tmp: Path, matches: str = "", modules: tuple[str, ...] = (), builtin: str = "", dep: str = "") -> dict[str, Path]:
    (tmp / "proc/net").mkdir(parents=True)
    (tmp / "proc/net/ip_tables_matches").write_text(matches.replace(" ", "\n"))
    for m in modules:
        (tmp / "sys/module" / m).mkdir(parents=True)
    (tmp / "sys/module").mkdir(parents=True, exist_ok=True)
    (tmp / "mods").mkdir()
    (tmp / "mods/modules.builtin").write_text(builtin)
    (tmp / "mods/modules.dep").write_text(dep)
    return {"proc": tmp / "proc", "sys": tmp / "sys", "modules": tmp / "mods", "boot": tmp / "boot"}


def test_everything_present(tmp_path: Path) -> None:
    roots = tree(tmp_path, matches="tcp udp set set hashlimit conntrack", modules=("ip_set",))
    assert H.missing_kernel(**roots) == []
    assert "available" in H.kernel_feature("xt_hashlimit", **roots).detail


def test_missing_modules_named_with_the_fix(tmp_path: Path) -> None:
    roots = tree(tmp_path, matches="tcp udp conntrack")
    missing = {f.name: f for f in H.missing_kernel(**roots)}
    assert set(missing) == {"ip_set", "xt_set", "xt_hashlimit"}
    assert "modprobe xt_hashlimit" in missing["xt_hashlimit"].detail
    assert "per-port rate limits" in missing["xt_hashlimit"].detail


def test_loadable_and_builtin_count_as_present(tmp_path: Path) -> None:
    roots = tree(tmp_path, matches="tcp", builtin="kernel/net/netfilter/ipset/ip_set.ko\n",
                 dep="kernel/net/netfilter/xt_set.ko.zst: kernel/net/netfilter/ipset/ip_set.ko\n"
                     "kernel/net/netfilter/xt_hashlimit.ko.xz:\nkernel/net/netfilter/xt_conntrack.ko:\n")
    assert H.missing_kernel(**roots) == []
    assert "built in" in H.kernel_feature("ip_set", **roots).detail
    assert "loadable" in H.kernel_feature("xt_set", **roots).detail
    # a module whose name only contains the wanted one is not it
    roots2 = tree(tmp_path / "b", matches="tcp", dep="kernel/net/netfilter/xt_setx.ko:\n")
    assert not H.kernel_feature("xt_set", **roots2).ok


def test_the_real_kernel_has_what_popwatch_needs() -> None:
    # the test box (and any host the netns tests run on), for every kernel backend
    assert H.missing_kernel() == []
    assert H.missing_kernel("nftables") == []


def _config(roots: dict[str, Path], text: str, gz: bool) -> None:
    import gzip
    import os

    if gz:
        (roots["proc"] / "config.gz").write_bytes(gzip.compress(text.encode()))
    else:
        roots["boot"].mkdir(parents=True, exist_ok=True)
        (roots["boot"] / f"config-{os.uname().release}").write_text(text)


@pytest.mark.parametrize("gz", [True, False], ids=["proc-config.gz", "boot-config"])
def test_nftables_features_from_the_kernel_config(tmp_path: Path, gz: bool) -> None:
    roots = tree(tmp_path)
    assert {f.name for f in H.missing_kernel("nftables", **roots)} == {"nf_tables", "nft_set", "nft_limit", "nft_ct"}
    _config(roots, "CONFIG_NF_TABLES=y\nCONFIG_NF_TABLES_INET=y\nCONFIG_NFT_CT=m\n"
                   "# CONFIG_NFT_LIMIT is not set\nCONFIG_NETFILTER_XT_SET=y\n", gz)
    missing = {f.name: f for f in H.missing_kernel("nftables", **roots)}
    assert set(missing) == {"nft_limit"}
    assert "modprobe nft_limit" in missing["nft_limit"].detail and "rate limits" in missing["nft_limit"].detail
    assert "built in (CONFIG_NF_TABLES=y" in H.kernel_feature("nf_tables", **roots).detail
    assert "loads on first use" in H.kernel_feature("nft_ct", **roots).detail
    # no option of its own: the set types are part of nf_tables
    assert "part of nf_tables" in H.kernel_feature("nft_set", **roots).detail
    # the config serves the iptables features too; the backend picks which are asked for
    assert H.kernel_feature("xt_set", **roots).ok and not H.kernel_feature("xt_hashlimit", **roots).ok
    assert {f.name for f in H.missing_kernel("nft", **roots)} == {"ip_set", "xt_hashlimit", "conntrack"}
    assert H.missing_kernel("none", **roots) == [] and H.features_for("sim") == {}


def test_nft_set_module_of_an_older_kernel(tmp_path: Path) -> None:
    roots = tree(tmp_path, dep="kernel/net/netfilter/nft_set_hash.ko:\n")
    _config(roots, "CONFIG_NF_TABLES=m\nCONFIG_NFT_SET_HASH=m\n", gz=True)
    assert "CONFIG_NFT_SET_HASH=m" in H.kernel_feature("nft_set", **roots).detail
    _config(roots, "CONFIG_NFT_LIMIT=y\n", gz=True)  # no nf_tables at all: no sets either
    assert "loadable" in H.kernel_feature("nft_set", **roots).detail  # the .ko is still listed
    roots2 = tree(tmp_path / "b")
    _config(roots2, "CONFIG_NFT_LIMIT=y\n", gz=True)
    assert not H.kernel_feature("nft_set", **roots2).ok and not H.kernel_feature("nf_tables", **roots2).ok


@pytest.mark.parametrize("err,want", [
    ("iptables-nft-restore -w 10 --noflush: iptables-restore v1.8.9 (nf_tables): Couldn't load match "
     "`hashlimit':No such file or directory; Error occurred at line: 4", "the kernel lacks xt_hashlimit"),
    ("iptables-restore: Extension set revision 0 not supported, missing kernel module?", "the kernel lacks xt_set"),
    ("iptables-nft is not installed", "iptables is not installed"),
    ("popwatch's chain is not installed: start `popwatch watch`", "popwatch's chain is not installed"),
])
def test_explain(err: str, want: str) -> None:
    line = H.explain(err)
    assert line.startswith(want) and "\n" not in line


def test_short() -> None:
    assert H.short(H.explain("Couldn't load match `hashlimit':No such file or directory")) == \
        "no xt_hashlimit in the kernel"
    assert H.short(I.NO_IPSET_HINT) == "no ip_set in the kernel"
    assert H.short("the auto firewall backend needs root or CAP_NET_ADMIN to ...") == "not root"


class _Kernel:
    """A NetlinkIpset stand-in answering every request with one errno."""

    def __init__(self, err: int) -> None:
        self.err = err

    def request(self, *a: object, **k: object) -> int:
        return self.err

    def add_many(self, items: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
        return [(s, e, self.err) for s, e, _ in items]

    def close(self) -> None:
        pass


@pytest.mark.parametrize("err,cls,text", [
    (errno.EOPNOTSUPP, FirewallError, "the kernel has no ip_set support"),
    (errno.EPERM, NeedsRoot, "needs root or CAP_NET_ADMIN"),
    (errno.ENOENT, FirewallError, "the set does not exist"),
    (4352, FirewallError, "the set is full"),
])
def test_ipset_errors_are_one_clear_line(err: int, cls: type, text: str) -> None:
    ips = I.Ipset(lambda a, s: "", lambda a, s: "")
    ips._nl = _Kernel(err)  # type: ignore[assignment]
    with pytest.raises(cls) as e:
        ips.add("popwatch4", "203.0.113.5", 60)
    assert text in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(cls):
        ips.restore([("popwatch4", "203.0.113.5", 60), ("popwatch4", "203.0.113.6", 60)])


def test_ipset_dry_run_describes_ipset_commands() -> None:
    rec: list[tuple[list[str], str | None]] = []
    ips = I.Ipset(lambda a, s: rec.append((list(a), s)) or "", lambda a, s: "", dry_run=True)
    ips._nl = _Kernel(errno.EPERM)  # type: ignore[assignment]  # never reached in dry-run
    ips.add("popwatch4", "203.0.113.5", 90)
    ips.delete("popwatch6", "2001:db8::/64")
    assert ips.restore([("popwatch4", "203.0.113.7", 0)]) == 1
    assert rec[0][0] == ["ipset", "-exist", "add", "popwatch4", "203.0.113.5", "timeout", "90"]
    assert rec[1][0] == ["ipset", "-exist", "del", "popwatch6", "2001:db8::/64"]
    assert rec[2] == (["ipset", "-exist", "restore"], "add popwatch4 203.0.113.7 timeout 0\n")
