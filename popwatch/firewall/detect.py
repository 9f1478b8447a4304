"""Pick and build the firewall backend: ``auto | legacy | nft | nftables | sim | none``.

``auto`` reads ``iptables --version``: ``(nf_tables)`` -> ``nftables`` (popwatch's own ``table
inet popwatch``, :mod:`.nftables`) unless popwatch's rules already live in iptables-nft, which
then stays in use (``nft``, with a note on how to move); ``(legacy)`` -> ``legacy``
(python-iptables); no iptables binary but libnftables -> ``nftables``. python-iptables is never used on an nf_tables
host: there it would create legacy tables whose rules apply but are invisible to ``iptables``.

Before anything is written, popwatch looks for its chain in *both* kernel backends. Reading
the legacy tables with iptables-legacy or python-iptables creates them, so the legacy side is
only read when ``/proc/net/ip_tables_names`` (or ``ip6_tables_names``) already lists ``filter``.
If popwatch's chain is in both, an ``auto`` firewall refuses every change (and says so in its
warnings) until the admin names a backend with ``--backend`` and uninstalls the other one.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..model import PortLimit
from .base import Firewall, FirewallError, NeedsRoot, NoFirewall
from .kernel import DEFAULT_LOCK
from .rules import CHAIN

BACKENDS = ("auto", "legacy", "nft", "nftables", "sim", "none")
CAP_NET_ADMIN = 12


def has_net_admin() -> bool:
    """Root, or CAP_NET_ADMIN in the effective set."""
    if os.geteuid() == 0:
        return True
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _out(argv: list[str]) -> tuple[int, str]:
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return 127, ""
    return cp.returncode, cp.stdout + cp.stderr


def host_flavour() -> str | None:
    """``nft`` or ``legacy`` from ``iptables --version``; None when iptables is missing."""
    rc, text = _out(["iptables", "--version"])
    if rc != 0:
        return None
    if "nf_tables" in text:
        return "nft"
    return "legacy"  # "(legacy)", and iptables < 1.8 which prints no flavour at all


def popwatch_in_nftables() -> bool:
    """Whether popwatch's own ``table inet popwatch`` exists (one netlink request)."""
    try:
        from .nftables import NftNetlink

        nl = NftNetlink()
        try:
            return nl.chain_exists()
        finally:
            nl.close()
    except (OSError, FirewallError):  # no nf_tables, or not root (NeedsRoot)
        return False


def has_libnftables() -> bool:
    import ctypes.util

    return (ctypes.util.find_library("nftables") is not None
            or Path("/usr/lib/x86_64-linux-gnu/libnftables.so.1").exists())


MOVE_NOTE = ("popwatch keeps using iptables-nft here because its rules are already there; to move "
             "to the native nftables backend (bans are kept): `popwatch --backend nft uninstall && "
             "popwatch --backend nftables watch`")


def legacy_tables(proc: Path = Path("/proc/net")) -> dict[int, bool]:
    """Whether the legacy ``filter`` table exists, per family (without creating it)."""
    out = {}
    for fam, name in ((4, "ip_tables_names"), (6, "ip6_tables_names")):
        try:
            out[fam] = "filter" in (proc / name).read_text().split()
        except OSError:
            out[fam] = False
    return out


def popwatch_in_nft() -> bool:
    for binary in ("iptables-nft", "ip6tables-nft"):
        rc, text = _out([binary, "-w", "10", "-S"])
        if rc == 0 and f"-N {CHAIN}" in text.splitlines():
            return True
    return False


def popwatch_in_legacy(proc: Path = Path("/proc/net")) -> bool:
    present = legacy_tables(proc)
    for fam, binary in ((4, "iptables-legacy"), (6, "ip6tables-legacy")):
        if present.get(fam):  # reading is safe only when the table already exists
            rc, _ = _out([binary, "-w", "10", "-S", CHAIN])
            if rc == 0:
                return True
    return False


def default_exempt(allow: Iterable[str] = ()) -> list[str]:
    """Loopback, the SSH client(s) of this session, the host's own addresses, the allow-list."""
    from ..policy import host_addresses, ssh_clients

    out = list(allow)
    try:
        out += sorted(ssh_clients())
    except Exception:  # noqa: BLE001 - best effort: protection must never stop popwatch
        pass
    try:
        out += sorted(host_addresses())
    except Exception:  # noqa: BLE001 - reading the host's addresses is best effort
        pass
    return out


def both_message() -> str:
    return ("popwatch's rules exist in both the nf_tables and the legacy iptables backend; "
            "refusing to change anything until you pick one: run `popwatch --backend nft "
            "uninstall` or `popwatch --backend legacy uninstall` to remove the other copy, then "
            "run popwatch with --backend set")


def _auto(flavour: str | None) -> tuple[str, str]:
    """``--backend auto``: (backend, why)."""
    if flavour is None:
        if has_libnftables():
            return "nftables", "auto: no iptables binary, libnftables present"
        raise FirewallError("iptables is not installed: install the 'iptables' package (popwatch "
                            "needs nothing else), or run with --backend none to only watch")
    if flavour == "legacy":
        return "legacy", "auto: this host's iptables is the legacy flavour"
    if not has_libnftables():
        return "nft", "auto: nf_tables host without libnftables (install libnftables1 for the native backend)"
    if popwatch_in_nftables():
        return "nftables", "auto: nf_tables host, popwatch's table inet popwatch exists"
    if has_net_admin() and popwatch_in_nft():
        return "nft", MOVE_NOTE
    return "nftables", "auto: nf_tables host, no iptables rules of popwatch"


def choose_backend(backend: str) -> tuple[str, str]:
    """(the backend :func:`make_firewall` builds for ``backend``, why) without building it and
    without root (``popwatch doctor`` as any user). FirewallError when none can be chosen."""
    if backend == "auto":
        return _auto(host_flavour())
    return backend, "named with --backend or in the config"


def make_firewall(backend: str, *, ports: Iterable[int | PortLimit] | None = None,
                  limits: list[PortLimit] | None = None, ban_action: str = "drop",
                  ipv6_prefix: int = 64, dry_run: bool = False, lock_path: str | None = DEFAULT_LOCK,
                  xtables_lock: str = "/run/xtables.lock", check_both: bool = True,
                  allow_legacy_on_nft: bool = False, allow: Iterable[str] = (),
                  exempt: Iterable[str] | None = None, **sim_kw: Any) -> Firewall:
    """Build the backend named ``backend``. Raises :class:`NeedsRoot` without CAP_NET_ADMIN
    (kernel backends, unless ``dry_run``) and :class:`FirewallError` for impossible choices.

    ``exempt``: sources popwatch must never ban or limit (written to the popwatchx4/x6 sets
    at install). By default: loopback, this session's SSH client, the host's own addresses
    and ``allow`` (the config's allow-list), as :mod:`popwatch.policy` finds them."""
    if backend not in BACKENDS:
        raise FirewallError(f"bad backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    lims = list(limits or [p if isinstance(p, PortLimit) else PortLimit(int(p)) for p in (ports or [])])
    if backend == "none":
        return NoFirewall(lims)
    if backend == "sim":
        from .sim import SimFirewall  # the lead's module; imported only when asked for

        return SimFirewall(ipv6_prefix=ipv6_prefix, **sim_kw)
    if not has_net_admin() and not dry_run:
        raise NeedsRoot(f"the {backend} firewall backend needs root or CAP_NET_ADMIN to read and "
                        f"change the firewall: run popwatch with sudo (or use --backend sim or "
                        f"--backend none to only watch)")
    flavour = host_flavour()
    chosen = backend
    why = "named with --backend or in the config"
    if backend == "auto":
        chosen, why = _auto(flavour)
    if exempt is None and chosen == "nftables":
        exempt = default_exempt(allow)
    if chosen == "nftables":
        from .nftables import NftablesFirewall

        nfw = NftablesFirewall(ban_action=ban_action, ipv6_prefix=ipv6_prefix, dry_run=dry_run,
                               lock_path=lock_path, exempt=exempt)
        nfw.why = why
        if check_both and has_net_admin() and popwatch_in_nft():
            nfw.warn("popwatch's iptables-nft rules still exist: remove them with "
                      "`popwatch --backend nft uninstall` (bans are restored from the state dir)")
        return nfw
    cleanup_only = False
    if chosen == "legacy" and flavour == "nft" and not allow_legacy_on_nft:
        # allowed only to clean up a legacy copy of popwatch's rules (`--backend legacy uninstall`)
        if not (has_net_admin() and popwatch_in_legacy()):
            raise FirewallError("this host's iptables is the nf_tables flavour: python-iptables would "
                                "write invisible legacy tables here; use --backend nft (or auto)")
        cleanup_only = True
    if exempt is None:
        exempt = default_exempt(allow)
    common: dict[str, Any] = dict(ban_action=ban_action, ipv6_prefix=ipv6_prefix, dry_run=dry_run,
                                  lock_path=lock_path, exempt=exempt)
    fw: Any
    if chosen == "nft":
        from .iptables import IptablesFirewall

        fw = IptablesFirewall(flavour="nft", **common)
    else:
        from .iptc_backend import IptcFirewall

        fw = IptcFirewall(xtables_lock=xtables_lock, **common)
    fw.why = why
    if chosen == "nft" and check_both and has_net_admin() and popwatch_in_nftables():
        fw.warn("popwatch's native nftables table also exists: remove it with "
                 "`popwatch --backend nftables uninstall`")
    if cleanup_only:
        fw.warn("this host's iptables is the nf_tables flavour: --backend legacy is only for "
                 "removing an old legacy copy of popwatch's rules (`popwatch --backend legacy uninstall`)")
    if check_both and has_net_admin():
        in_nft = popwatch_in_nft()
        in_legacy = popwatch_in_legacy()
        if in_nft and in_legacy:
            if backend == "auto":
                fw.refuse_writes(both_message())
            else:
                fw.warn(f"popwatch's rules also exist in the "
                         f"{'legacy' if chosen == 'nft' else 'nf_tables'} backend; remove them with "
                         f"`popwatch --backend {'legacy' if chosen == 'nft' else 'nft'} uninstall`")
        elif chosen == "nft" and any(legacy_tables().values()):
            fw.warn("legacy iptables tables are present too: their rules still apply, and "
                     "`iptables` (nft) does not show them")
    if why == MOVE_NOTE:
        fw.warn(MOVE_NOTE)
    return fw
