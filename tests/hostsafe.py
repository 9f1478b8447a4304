"""Leave the host as it was: install system packages without enabling or starting anything,
and compare the host's state before and after a run.

Standard library only (tests/run.py runs it on a fresh machine before any venv exists);
benchmarks import it too (``sys.path.insert(0, "tests")``; ``hostsafe.apt_install([...])``).

* :func:`apt_install` installs packages under a ``policy-rc.d`` that refuses every start, then
  disables (and, on a booted systemd, stops) every unit and SysV link the install newly enabled.
  Units enabled before the install (an admin's own ``ssh.service``) are left alone. Works with
  systemd as PID 1 and offline (a container, a chroot): enabling is symlinks either way.
* :func:`snapshot` records enabled units, the host's firewall (iptables/ip6tables, legacy and
  nft, ipset names), listening sockets of the host's network namespace and a checksum listing
  of /etc; :func:`diff` says what changed, one line per difference.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

SYSTEMD_ETC = Path("/etc/systemd/system")
# files under /etc that change without anyone touching the host's configuration
ETC_IGNORE = {"/etc/ld.so.cache", "/etc/mtab", "/etc/adjtime"}


def say(msg: str) -> None:
    print(f"[tests/run.py] {msg}", flush=True)


def systemd_booted() -> bool:
    return Path("/run/systemd/system").is_dir()


# ------------------------------------------------------------------------------ enabled units

def enabled_links() -> dict[str, str]:
    """Every symlink that makes something start at boot: ``*.wants``/``*.requires`` (and
    aliases, masks) under /etc/systemd/system, and SysV ``/etc/rc?.d/S*`` links. path -> target."""
    out: dict[str, str] = {}
    roots = [SYSTEMD_ETC, *sorted(Path("/etc").glob("rc?.d"))]
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in filenames + dirnames:
                p = Path(dirpath) / name
                if root != SYSTEMD_ETC and not name.startswith("S"):
                    continue  # K links in /etc/rc?.d stop a service; they are how SysV disables
                if p.is_symlink():
                    out[str(p)] = os.readlink(p)
    return out


def _unit_of(link: str) -> tuple[str, str]:
    """('systemd', 'fail2ban.service'), ('sysv', 'fail2ban') or ('alias', 'sshd.service')."""
    p = Path(link)
    if p.parent.name.endswith((".wants", ".requires")):
        return "systemd", p.name
    if p.parent.name.startswith("rc") and p.parent.name.endswith(".d"):
        return "sysv", re.sub(r"^[SK]\d\d", "", p.name)
    return "alias", p.name  # Alias= links; `systemctl disable` of the real unit removes them


def disable_new(before: dict[str, str]) -> list[str]:
    """Disable (and stop, when systemd runs) whatever was enabled since ``before``."""
    after = enabled_links()
    new = sorted(set(after) - set(before))
    had = {_unit_of(x) for x in before}  # enabled before the install: only its new links go
    units = sorted({_unit_of(x) for x in new} - had)
    done: list[str] = []
    for kind, unit in units:
        if kind == "alias":
            continue
        if kind == "systemd":
            if systemd_booted():
                subprocess.run(["systemctl", "stop", unit], check=False, capture_output=True, timeout=120)
            # systemctl works offline (symlinks only); deb-systemd-helper keeps dpkg's record so
            # an upgrade does not re-enable it
            if shutil.which("deb-systemd-helper"):
                subprocess.run(["deb-systemd-helper", "disable", unit], check=False, capture_output=True, timeout=60)
            if shutil.which("systemctl"):
                subprocess.run(["systemctl", "disable", "--no-reload", unit], check=False, capture_output=True, timeout=60)
            done.append(unit)
        else:
            if systemd_booted():
                subprocess.run(["systemctl", "stop", f"{unit}.service"], check=False, capture_output=True, timeout=120)
            if shutil.which("update-rc.d"):
                subprocess.run(["update-rc.d", unit, "disable"], check=False, capture_output=True, timeout=60)
            done.append(f"{unit} (SysV)")
    # whatever is still there (an alias such as sshd.service -> ssh.service, a link a helper
    # did not remove): remove the link itself
    for link, target in sorted(enabled_links().items()):
        if link not in before and target != "/dev/null":  # never unmask
            Path(link).unlink(missing_ok=True)
    if systemd_booted() and units:
        subprocess.run(["systemctl", "daemon-reload"], check=False, capture_output=True, timeout=120)
    left = sorted(p for p, t in enabled_links().items() if p not in before and t != "/dev/null")
    if left:
        raise SystemExit(f"could not disable what the install enabled: {left}")
    return done


def apt_install(packages: list[str], why: str = "") -> list[str]:
    """Install the missing ``packages`` (Debian/Ubuntu, as root); nothing starts, nothing stays
    enabled. Returns the packages it installed. No-op (with a note) when not possible."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None or shutil.which("dpkg-query") is None:
        say(f"not root on a Debian/Ubuntu system: not installing {' '.join(packages)} {why}".rstrip())
        return []
    missing = []
    for pkg in packages:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], check=False, capture_output=True, text=True)
        if "install ok installed" not in r.stdout:
            missing.append(pkg)
    if not missing:
        return []
    say(f"installing system packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    capi = Path("/etc/crowdsec/online_api_credentials.yaml")
    if "crowdsec" in missing and not capi.exists():
        # crowdsec's postinst registers with the Central API unless this file is non-empty;
        # there is no network here, and the tests run their own loopback-only LAPI
        capi.parent.mkdir(parents=True, exist_ok=True)
        capi.write_text("# no Central API: offline test host (tests/run.py)\n")
    # package scripts must not start daemons on this host (invoke-rc.d and deb-systemd-invoke
    # ask policy-rc.d); the tests start their own instances inside network namespaces
    rcd = Path("/usr/sbin/policy-rc.d")
    made_rcd = False
    if not rcd.exists():
        rcd.write_text("#!/bin/sh\nexit 101\n")
        rcd.chmod(0o755)
        made_rcd = True
    before = enabled_links()
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                       check=True, env=env)
        # still under policy-rc.d: nothing the install enabled may run or start at boot
        done = disable_new(before)
        if done:
            say(f"disabled what the install enabled: {' '.join(done)}")
    finally:
        if made_rcd:
            rcd.unlink(missing_ok=True)
    return missing


# ------------------------------------------------------------------------------ host state

_COUNTERS = re.compile(r"\[\d+:\d+\]")
_NFT_COUNTERS = re.compile(r"counter packets \d+ bytes \d+")


def _cmd(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return f"({argv[0]} not installed)"
    r = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)
    text = r.stdout if r.returncode == 0 else f"(exit {r.returncode}) {r.stderr.strip()}"
    lines = [_COUNTERS.sub("[0:0]", ln) for ln in text.splitlines() if not ln.startswith("#")]
    return "\n".join(_NFT_COUNTERS.sub("counter", ln) for ln in lines)


def firewall() -> dict[str, str]:
    cmds = [["iptables-save"], ["ip6tables-save"], ["iptables-legacy-save"], ["ip6tables-legacy-save"],
            ["nft", "list", "ruleset"], ["ipset", "list", "-n"]]
    return {" ".join(c): _cmd(c) for c in cmds}


def listening() -> list[str]:
    """Listening TCP and bound UDP sockets of this (the host's) network namespace."""
    if shutil.which("ss") is None:
        return ["(ss not installed)"]
    r = subprocess.run(["ss", "-ltnuH"], check=False, capture_output=True, text=True, timeout=60)
    socks = set()
    for ln in r.stdout.splitlines():
        f = ln.split()
        if len(f) >= 5:
            socks.add(f"{f[0]} {f[4]}")  # netid and local address:port (not the queue sizes)
    return sorted(socks)


def etc_listing(root: str = "/etc") -> dict[str, str]:
    """path -> 'mode uid gid sha256' (files), '-> target' (symlinks), 'dir mode uid gid'."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if p in ETC_IGNORE:
                continue
            try:
                st = os.lstat(p)
                if stat.S_ISLNK(st.st_mode):
                    out[p] = "-> " + os.readlink(p)
                elif stat.S_ISDIR(st.st_mode):
                    out[p] = f"dir {st.st_mode:o} {st.st_uid} {st.st_gid}"
                elif stat.S_ISREG(st.st_mode):
                    h = hashlib.sha256()
                    with open(p, "rb") as fh:
                        for chunk in iter(lambda: fh.read(1 << 20), b""):
                            h.update(chunk)
                    out[p] = f"{st.st_mode:o} {st.st_uid} {st.st_gid} {h.hexdigest()}"
                else:
                    out[p] = f"special {st.st_mode:o}"
            except OSError as e:
                out[p] = f"unreadable: {e.strerror}"
    return out


def snapshot() -> dict[str, object]:
    return {"enabled": enabled_links(), "firewall": firewall(), "listening": listening(),
            "etc": etc_listing()}


def diff(before: dict[str, object], after: dict[str, object]) -> list[str]:
    """One line per difference (empty: the host is as it was)."""
    out: list[str] = []
    for key in ("enabled", "etc"):
        a, b = before[key], after[key]
        assert isinstance(a, dict) and isinstance(b, dict)
        for p in sorted(set(a) | set(b)):
            if a.get(p) != b.get(p):
                what = "added" if p not in a else "removed" if p not in b else "changed"
                out.append(f"{key}: {p} {what}")
    fa, fb = before["firewall"], after["firewall"]
    assert isinstance(fa, dict) and isinstance(fb, dict)
    for c in fa:
        if fa[c] != fb[c]:
            old, new = set(fa[c].splitlines()), set(fb[c].splitlines())
            lines = [f"+ {x}" for x in sorted(new - old)] + [f"- {x}" for x in sorted(old - new)]
            out.append(f"firewall: `{c}` differs: " + ("; ".join(lines[:8]) or "(order)"))
    la, lb = set(before["listening"]), set(after["listening"])  # type: ignore[arg-type]
    out += [f"listening: new {x}" for x in sorted(lb - la)]
    # a socket that was there before and is gone after is only a change when it was a service's
    # fixed port: a port of the ephemeral range was some other program's passing socket (the
    # tests end only processes they started, by PID)
    out += [f"listening: gone {x}" for x in sorted(la - lb) if not _ephemeral(x)]
    return out


def _ephemeral(sock: str) -> bool:
    """``netid addr:port`` with a port in the kernel's ephemeral range."""
    try:
        lo, hi = (int(x) for x in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
        port = int(sock.rsplit(":", 1)[1])
    except (OSError, ValueError, IndexError):
        return False
    return lo <= port <= hi
