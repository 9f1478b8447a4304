"""What popwatch needs from the host, probed without changing anything.

Used by ``popwatch doctor`` (every check) and by ``watch``/the CLI (:func:`explain`: turn a
firewall error into one line that names the missing piece and the fix).

Kernel features are looked up where the kernel lists them, with no module loaded and no rule
written: ``/proc/net/ip_tables_matches`` (x_tables matches registered: built in or loaded),
``/sys/module/NAME`` (loaded or built in with parameters), and
``/proc/config.gz`` or ``/boot/config-$(uname -r)`` (``=y`` built in, ``=m`` a module), and
``/lib/modules/$(uname -r)/modules.{builtin,dep}`` (built in, or loadable on first use).
The roots are parameters, so tests can point them at a fake tree. Which features matter
depends on the backend: :data:`KERNEL_FEATURES` for the iptables backends (``legacy``, ``nft``),
:data:`NFT_FEATURES` for ``nftables`` (see :func:`features_for`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: feature -> (kernel module, x_tables match name or None, what popwatch uses it for)
KERNEL_FEATURES: dict[str, tuple[str, str | None, str]] = {
    "ip_set": ("ip_set", None, "the ban sets (popwatch4/popwatch6)"),
    "xt_set": ("xt_set", "set", "the rule that matches the ban sets"),
    "xt_hashlimit": ("xt_hashlimit", "hashlimit", "per-port rate limits"),
    "conntrack": ("xt_conntrack", "conntrack", "counting new connections only"),
}
#: the same for the ``nftables`` backend (no x_tables match lists these: the kernel config, the
#: module files and, as root, a check-only nft transaction tell; see nftables.probe_kernel)
NFT_FEATURES: dict[str, tuple[str, str | None, str]] = {
    "nf_tables": ("nf_tables", None, "popwatch's table inet popwatch"),
    "nft_set": ("nft_set_hash", None, "the ban sets with per-element timeouts (ban4/ban6)"),
    "nft_limit": ("nft_limit", None, "global and per-source rate limits"),
    "nft_ct": ("nft_ct", None, "counting new connections only (ct state new)"),
}
#: kernel config options per module (CONFIG_<name>)
_CONFIG = {"ip_set": ("IP_SET",), "xt_set": ("NETFILTER_XT_SET",),
           "xt_hashlimit": ("NETFILTER_XT_MATCH_HASHLIMIT",),
           "xt_conntrack": ("NETFILTER_XT_MATCH_CONNTRACK",), "nf_tables": ("NF_TABLES",),
           "nft_set_hash": ("NFT_SET_HASH",), "nft_limit": ("NFT_LIMIT",), "nft_ct": ("NFT_CT",)}
#: features that current kernels build into another module (no option, no .ko of their own)
_PART_OF = {"nft_set": "nf_tables"}


def features_for(backend: str) -> dict[str, tuple[str, str | None, str]]:
    """The kernel features backend ``backend`` uses ({} for sim and none)."""
    if backend == "nftables":
        return NFT_FEATURES
    if backend in ("legacy", "nft", "legacy-binaries"):
        return KERNEL_FEATURES
    return {}


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    ok: bool
    detail: str


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _kernel_config(proc: Path, boot: Path) -> dict[str, str] | None:
    """CONFIG_X -> y/m from ``/proc/config.gz`` or ``/boot/config-$(uname -r)``; None when
    neither is there."""
    import gzip

    text = None
    try:
        text = gzip.decompress((proc / "config.gz").read_bytes()).decode(errors="replace")
    except (OSError, EOFError):
        text = _read(boot / f"config-{os.uname().release}")
    if text is None:
        return None
    return {m.group(1): m.group(2) for m in re.finditer(r"^CONFIG_(\w+)=([ym])$", text, re.M)}


def kernel_feature(name: str, *, proc: Path = Path("/proc"), sys: Path = Path("/sys"),
                   modules: Path | None = None, boot: Path = Path("/boot")) -> Feature:
    """Whether the kernel offers ``name`` (a key of :data:`KERNEL_FEATURES` or
    :data:`NFT_FEATURES`)."""
    mod, match, used = KERNEL_FEATURES.get(name) or NFT_FEATURES[name]
    if match is not None:
        for fam in ("ip", "ip6"):
            text = _read(proc / "net" / f"{fam}_tables_matches")
            if text is not None and match in text.split():
                return Feature(name, True, f"{mod}: available (for {used})")
    mods = {mod, "nf_conntrack"} if name == "conntrack" else {mod}
    for m in sorted(mods):
        if (sys / "module" / m).is_dir():
            return Feature(name, True, f"{m}: loaded (for {used})")
    config = _kernel_config(proc, boot)
    if config is not None:
        for opt in _CONFIG.get(mod, ()):
            if opt in config:
                how = "built in" if config[opt] == "y" else "a module, loads on first use"
                return Feature(name, True, f"{mod}: {how} (CONFIG_{opt}={config[opt]}; for {used})")
        host = _PART_OF.get(name)
        if host is not None and not any(o in config for o in _CONFIG.get(mod, ())):
            h = kernel_feature(host, proc=proc, sys=sys, modules=modules, boot=boot)
            if h.ok:
                return Feature(name, True, f"{mod}: part of {host} in this kernel (for {used})")
    if modules is None:
        modules = Path("/lib/modules") / os.uname().release
    pat = re.compile(rf"(^|/){re.escape(mod)}\.ko(\.[a-z]+)?(:|$)", re.M)
    for f, how in (("modules.builtin", "built in"), ("modules.dep", "loadable, loads on first use")):
        text = _read(modules / f)
        if text is not None and pat.search(text):
            return Feature(name, True, f"{mod}: {how} (for {used})")
    return Feature(name, False, f"{mod} not found in this kernel (needed for {used}): "
                                f"`modprobe {mod}`, or install the kernel's extra modules package")


def missing_kernel(backend: str = "nft", **roots: Path) -> list[Feature]:
    return [f for f in (kernel_feature(n, **roots) for n in features_for(backend)) if not f.ok]


_MATCH_HINTS = {"hashlimit": "xt_hashlimit", "set": "xt_set", "conntrack": "xt_conntrack"}
_MATCH_ERR = re.compile(r"(?:Couldn't load match|Extension|match) [`'\"]?(hashlimit|set|conntrack)\b", re.I)


def explain(error: str) -> str:
    """A firewall error -> one line naming the missing piece and the fix (or the error as is)."""
    text = " ".join(str(error).split())
    m = _MATCH_ERR.search(text)
    if m and re.search(r"kernel module|not supported|Couldn't load|No such file", text, re.I):
        mod = _MATCH_HINTS[m.group(1)]
        return (f"the kernel lacks {mod} (iptables said: {text[:120]}): load it with `modprobe {mod}`, "
                f"or run with --backend none to only watch")
    if re.search(r"\biptables(-restore|-save|-nft|-legacy)? is not installed", text):
        return ("iptables is not installed: install the 'iptables' package (popwatch needs nothing "
                "else), or run with --backend none to only watch")
    return text


def short(reason: str) -> str:
    """A few words of ``reason`` for the TUI header."""
    if "root or CAP_NET_ADMIN" in reason:
        return "not root"
    if reason.startswith("iptables is not installed"):
        return "no iptables"
    m = re.search(r"kernel lacks (\S+)|kernel has no (\S+) support", reason)
    if m:
        return f"no {m.group(1) or m.group(2)} in the kernel"
    return reason.split(":", 1)[0][:40]


def journal_access(journalctl: str = "journalctl") -> tuple[bool | None, str]:
    """(True: full access / False: limited or failing / None: not installed, detail)."""
    import shutil
    import subprocess

    exe = shutil.which(journalctl)
    if exe is None:
        return None, "journalctl is not installed"
    try:
        cp = subprocess.run([exe, "-n", "1", "-q", "--no-pager", "-o", "cat"], capture_output=True,
                            text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as e:
        return False, str(e)
    text = cp.stdout[-2000:] + cp.stderr
    if cp.returncode != 0 or "insufficient permissions" in text or "not seeing messages from other users" in text:
        why = next((l for l in cp.stderr.splitlines() if l.strip()), f"journalctl exit {cp.returncode}")
        return False, (f"no full access to journald ({why.strip()[:120]}): run popwatch as root or add its "
                       f"user to the systemd-journal group")
    return True, "readable"


def source_problems(sources: Sequence[object]) -> list[str]:
    """One line per log source popwatch cannot read (and the fix)."""
    out = []
    for s in sources:
        path = getattr(s, "path", None)
        if isinstance(path, str):
            if os.path.exists(path) and not os.access(path, os.R_OK):
                out.append(f"cannot read {path} (permission denied for uid {os.geteuid()}): run popwatch "
                           f"as root, or give it read access (e.g. the adm group)")
        elif type(s).__name__ == "JournalSource":
            ok, detail = journal_access(getattr(s, "journalctl", "journalctl"))
            if not ok:
                out.append(detail)
    return out
