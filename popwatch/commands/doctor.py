"""``popwatch doctor [--json]``: what popwatch needs on this host, and what limits it.

Reads only: nothing is installed or changed. The firewall is read with the same backend
``watch`` would pick, and only the kernel support that backend uses is checked: ip_set,
xt_set, xt_hashlimit, conntrack for the iptables backends (``nft``, ``legacy``); nf_tables,
its sets, nft_limit, nft_ct for ``nftables``. Kernel support is read from /proc, /sys, the
kernel config and /lib/modules; as root the kernel is also asked (an ip_set protocol request;
a check-only nft transaction that is never committed), which may load a module on demand as
popwatch's first real rule would. Exit 0 when everything popwatch needs is there, 1 when
something limits it. ``--json``: a list of ``{"check": ..., "ok": true|false, "detail": ...}``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Config
from ..hostcheck import features_for, kernel_feature

Check = dict[str, Any]


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("doctor", parents=[common], help="check what popwatch needs on this host",
                       description="Check privileges, iptables and the kernel's support, log sources, "
                                   "journald, dovecot and sshd logging, your SSH address, popwatch's "
                                   "rules and sets, and other firewall tools. Changes nothing. Exit 0 "
                                   "when everything popwatch needs is there, 1 when something limits it.")
    p.add_argument("--json", action="store_true", help='print a JSON list of {"check", "ok", "detail"}')
    p.set_defaults(func=run)


def _check(name: str, ok: bool, detail: str) -> Check:
    return {"check": name, "ok": bool(ok), "detail": detail}


def _cmd(argv: list[str], timeout: float = 10.0) -> tuple[int, str]:
    """(exit code, stdout+stderr); 127 when the program is missing."""
    exe = shutil.which(argv[0])
    if exe is None:
        return 127, ""
    try:
        cp = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as e:
        return 126, str(e)
    return cp.returncode, cp.stdout + cp.stderr


def _ago(seconds: float) -> str:
    s = max(0, int(seconds))
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= n:
            return f"{s // n} {unit} ago"
    return f"{s} s ago"


# ----------------------------------------------------------------------------- checks

def check_privileges() -> Check:
    from ..firewall.detect import has_net_admin

    if os.geteuid() == 0:
        return _check("privileges", True, "root: popwatch can ban and change limits")
    if has_net_admin():
        return _check("privileges", True, f"uid {os.geteuid()} with CAP_NET_ADMIN: popwatch can change the "
                                          f"firewall (reading root-only logs may still fail)")
    return _check("privileges", False, f"not root (uid {os.geteuid()}), no CAP_NET_ADMIN: popwatch can only "
                                       f"watch; run it with sudo to ban and change limits")


#: how each backend talks to the kernel, for the "backend" check
HOW = {"nft": "the iptables-nft binaries and ipset sets over netlink",
       "legacy": "python-iptables (legacy x_tables) and ipset sets over netlink",
       "nftables": "popwatch's own table inet popwatch, through libnftables",
       "sim": "a simulated firewall", "none": "no firewall (watch only)"}


def open_firewall(cfg: Config, root: bool) -> tuple[Any, str | None, str, str | None]:
    """(firewall or None, backend chosen or None, why, error) - the backend ``watch`` would
    use. Without root the choice is made without building it (nothing can be read then)."""
    from ..firewall.base import FirewallError
    from ..firewall.detect import choose_backend, make_firewall
    from ..hostcheck import explain

    try:
        chosen, why = choose_backend(cfg.backend)
    except FirewallError as e:
        return None, None, "", explain(str(e))
    if chosen in ("sim", "none") or not root:
        return None, chosen, why, None
    try:
        fw = make_firewall(cfg.backend, limits=cfg.port_limits(), exempt=[],
                           ipv6_prefix=cfg.policy.ipv6_prefix, ban_action=cfg.policy.ban_action)
    except FirewallError as e:
        return None, chosen, why, explain(str(e))
    return fw, "legacy" if fw.name == "legacy-binaries" else fw.name, fw.why or why, None


def check_backend(chosen: str | None, why: str, err: str | None) -> Check:
    if chosen is None:
        return _check("backend", False, f"none can be used: {err}")
    detail = f"{chosen} ({HOW.get(chosen, chosen)}); why: {why}"
    if err:
        return _check("backend", False, f"{detail}; but: {err}")
    return _check("backend", True, detail)


def check_iptables(chosen: str | None) -> Check:
    from ..firewall.detect import host_flavour

    rc, out = _cmd(["iptables", "--version"])
    flavour = host_flavour() if rc == 0 else None
    needed = chosen in ("nft", "legacy")
    if flavour is None:
        if not needed and chosen is not None:
            return _check("iptables", True, f"not installed; backend {chosen} does not need it")
        return _check("iptables", False, "iptables is not installed: install the 'iptables' package "
                                         "(popwatch needs nothing else), or run with --backend none to only watch")
    version = out.strip().splitlines()[0] if out.strip() else "iptables"
    if chosen == "legacy" and flavour == "nft":
        return _check("iptables", False, f"{version}: backend legacy refused on an nf_tables host (its rules "
                                         f"would be invisible); use --backend nftables, nft or auto")
    if not needed:
        return _check("iptables", True, f"{version}; not used by backend {chosen}")
    return _check("iptables", True, f"{version}; used by backend {chosen}")


def check_nftables() -> Check:
    """libnftables (what the nftables backend needs) and the nft command (for the admin)."""
    import ctypes.util

    from ..firewall.detect import has_libnftables

    if not has_libnftables():
        return _check("nftables", False, "libnftables is not installed: install the 'libnftables1' "
                                         "package, or use --backend nft")
    lib = ctypes.util.find_library("nftables") or "libnftables.so.1"
    rc, out = _cmd(["nft", "--version"])
    nft = (f"{out.strip().splitlines()[0]}: `nft list table inet popwatch` shows popwatch's rules"
           if rc == 0 and out.strip() else
           "the nft command is not installed (popwatch does not need it; the 'nftables' package "
           "brings it, to look at popwatch's table)")
    return _check("nftables", True, f"{lib} (used by backend nftables); {nft}")


def check_kernel(chosen: str | None, root: bool) -> list[Check]:
    """The kernel support the chosen backend uses (the iptables backends' when none could be
    chosen). As root, the kernel's own answer wins over the files."""
    feats = features_for(chosen or "nft")
    live: dict[str, str | None] = {}
    if root and chosen == "nftables":
        from ..firewall.base import FirewallError
        from ..firewall.nftables import probe_kernel

        try:
            live = probe_kernel()
        except FirewallError:
            live = {}
    out = []
    for name in feats:
        f = kernel_feature(name)
        ok, detail = f.ok, f.detail
        if name == "ip_set" and root:  # ask the kernel itself
            try:
                from pyroute2 import IPSet

                with IPSet() as ips:  # pyroute2 names its protocol version only as _proto_version
                    detail = f"ip_set: available, netlink protocol {ips._proto_version} (for the ban sets)"
                    ok = True
            except Exception as e:  # noqa: BLE001 - any failure means no usable ip_set
                from ..firewall.ipset import NO_IPSET_HINT

                ok, detail = False, f"{NO_IPSET_HINT} ({e})"
        if name in live:
            used = feats[name][2]
            if live[name] is None:
                ok, detail = True, f"{name}: available, the kernel accepted a check-only rule (for {used})"
            else:
                ok, detail = False, (f"the kernel refused {name} ({live[name]}; needed for {used}): "
                                     f"`modprobe {feats[name][0]}`, or use --backend nft")
        out.append(_check(f"kernel {name}", ok, detail))
    return out


def _log_paths(cfg: Config) -> list[str]:
    from ..sources.discover import SYSLOG_FILES, dovecot_log_paths

    if cfg.logs:
        paths: list[str] = []
        for pat in cfg.logs:
            paths += sorted(glob.glob(pat)) or [pat]
        return paths
    return [p for p in ("/" + rel for rel in SYSLOG_FILES) if os.path.exists(p)] + \
        [p for p in dovecot_log_paths() if p not in ["/" + r for r in SYSLOG_FILES]]


def check_logs(cfg: Config, now: float) -> tuple[list[Check], bool]:
    """One check per log file; second value: whether at least one file is usable."""
    out, usable = [], False
    for p in _log_paths(cfg):
        try:
            st = os.stat(p)
        except FileNotFoundError:
            out.append(_check(f"log {p}", False, "missing: check the path (--log / `logs` in the config)"))
            continue
        except OSError as e:
            out.append(_check(f"log {p}", False, f"cannot stat: {e.strerror}"))
            continue
        if not os.access(p, os.R_OK):
            out.append(_check(f"log {p}", False, f"not readable by uid {os.geteuid()}: run popwatch as root "
                                                 f"(or give it read access, e.g. the adm group)"))
            continue
        age = now - st.st_mtime
        if age > 86400:
            out.append(_check(f"log {p}", False, f"readable, but last written {_ago(age)}: is the daemon "
                                                 f"(or rsyslog) still logging here?"))
            usable = True
            continue
        usable = True
        out.append(_check(f"log {p}", True, f"readable, last written {_ago(age)}, {st.st_size:,} bytes"))
    return out, usable


def check_journal(cfg: Config, files_usable: bool) -> Check:
    from ..hostcheck import journal_access

    needed = cfg.journal is True or (cfg.journal is None and not files_usable)
    ok, detail = journal_access()
    if ok is None:
        return _check("journald", not needed, "journalctl not installed" +
                      (": no log source left; pass --log PATH" if needed else " (log files are used)"))
    if not ok:
        return _check("journald", not needed, detail + ("" if needed else " (log files are used instead)"))
    return _check("journald", True, "readable" + ("; used" if needed else "; used only with --journal "
                                                                          "(log files were found)"))


def _conf_value(files: list[str], key: str) -> str | None:
    """The last ``key = value`` in these config files (dovecot style), or None."""
    val = None
    pat = re.compile(rf"^\s*{re.escape(key)}\s*=\s*(\S+)", re.M | re.I)
    for f in files:
        try:
            text = Path(f).read_text(errors="replace")
        except OSError:
            continue
        for m in pat.finditer(text):
            val = m.group(1)
    return val


def check_dovecot() -> Check:
    rc, out = _cmd(["doveconf", "-h", "auth_verbose"])
    if rc == 0 and out.strip():
        val, how = out.strip().splitlines()[0], "doveconf"
    else:
        files = ["/etc/dovecot/dovecot.conf", *sorted(glob.glob("/etc/dovecot/conf.d/*.conf"))]
        if not any(os.path.exists(f) for f in files):
            return _check("dovecot auth_verbose", True, "dovecot not found (nothing to check)")
        val, how = (_conf_value(files, "auth_verbose") or "no"), "/etc/dovecot (doveconf not available)"
    if val.lower() in ("yes", "y", "1", "true"):
        return _check("dovecot auth_verbose", True, f"yes ({how}): each failed password is logged when it "
                                                    f"happens; popwatch sees every guess at once")
    return _check("dovecot auth_verbose", False,
                  f"{val} ({how}): dovecot logs a failed login only when the connection ends, so one "
                  f"connection can make many guesses before popwatch sees them; set auth_verbose = yes "
                  f"in /etc/dovecot/conf.d/10-logging.conf")


def check_sshd() -> Check:
    rc, out = _cmd(["sshd", "-T"])
    m = re.search(r"^loglevel\s+(\S+)", out, re.M | re.I) if rc == 0 else None
    if m:
        level, how = m.group(1).upper(), "sshd -T"
    else:
        if not os.path.exists("/etc/ssh/sshd_config") and shutil.which("sshd") is None:
            return _check("sshd LogLevel", True, "sshd not found (nothing to check)")
        val = None
        for f in ["/etc/ssh/sshd_config", *sorted(glob.glob("/etc/ssh/sshd_config.d/*.conf"))]:
            try:
                text = Path(f).read_text(errors="replace")
            except OSError:
                continue
            mm = re.search(r"^\s*LogLevel\s+(\S+)", text, re.M | re.I)
            if mm and val is None:  # sshd: the first value wins
                val = mm.group(1)
        level, how = (val or "INFO").upper(), "sshd_config" + ("" if val else " (default)")
    if level in ("QUIET", "FATAL", "ERROR"):
        return _check("sshd LogLevel", False, f"{level} ({how}): sshd does not log failed logins; popwatch "
                                              f"sees no SSH guesses. Set LogLevel INFO (or VERBOSE)")
    what = {"INFO": "failed passwords and invalid users are logged as they happen",
            "VERBOSE": "failed passwords, invalid users and failed keys are logged"}.get(
        level, "everything popwatch needs is logged (debug levels are noisy)")
    return _check("sshd LogLevel", True, f"{level} ({how}): {what}")


def check_ssh_client() -> Check:
    from ..policy import ssh_clients

    try:
        found = sorted(ssh_clients())
    except Exception:  # noqa: BLE001 - finding SSH clients is best effort
        found = []
    if found:
        return _check("your SSH address", True, f"{', '.join(found)}: popwatch never bans or limits it")
    return _check("your SSH address", True, "none seen (not in an SSH session, or SSH_CONNECTION was dropped): "
                                            "loopback, this host's addresses and the allow-list stay protected")


#: what popwatch keeps in the kernel, per backend, for the rules check
LAYOUT = {"nftables": "table inet popwatch (chain input, sets ban4, ban6, ban6n, x4, x6)",
          "nft": "chain POPWATCH and its jump from INPUT (IPv4, IPv6), sets popwatch4, popwatch6, "
                 "popwatchx4, popwatchx6",
          "legacy": "chain POPWATCH and its jump from INPUT (IPv4, IPv6), sets popwatch4, popwatch6, "
                    "popwatchx4, popwatchx6"}


def _in_kernel(fw: Any, ip: str, kernel: dict[str, float | None]) -> bool:
    """Whether a saved ban is in the kernel (a backend may hold an IPv4 network as its addresses)."""
    import ipaddress

    key = fw.ban_key(ip, net="/" in ip)
    if key in kernel:
        return True
    if "/" in key:
        net = ipaddress.ip_network(key, strict=False)
        return net.version == 4 and net.num_addresses <= 65536 and all(str(a) in kernel for a in net)
    return False


def check_rules(cfg: Config, fw: Any, chosen: str | None, err: str | None, root: bool, now: float) -> Check:
    """Whether the chosen backend's objects are in place (:meth:`Firewall.check_setup`) and
    hold every active ban of the state dir."""
    name = "popwatch rules and sets"
    if chosen in ("sim", "none"):
        return _check(name, True, f"backend {chosen}: nothing in the kernel")
    if not root:
        return _check(name, False, "cannot read the firewall without root")
    if fw is None:
        return _check(name, False, err or "no firewall backend")
    from ..firewall.base import FirewallError
    from ..hostcheck import explain

    try:
        installed = bool(fw.installed())
        problems = fw.check_setup()
        try:
            kernel = fw.bans()
        except FirewallError:
            kernel = {}
        saved = []
        if cfg.state_dir.is_dir():
            from ..persist import Persist

            saved = [b for b in Persist(cfg.state_dir).load_bans() if b.expires is None or b.expires > now]
        missing = [b.ip for b in saved if not _in_kernel(fw, b.ip, kernel)]
        ports = fw.limits() if installed else {}
        from ..firewall.detect import MOVE_NOTE

        warns = [w for w in fw.warnings() if w != MOVE_NOTE]  # the backend check says it
    except (FirewallError, OSError) as e:
        return _check(name, False, explain(str(e)))
    layout = LAYOUT.get(chosen or "", "popwatch's rules")
    if not installed and not kernel:
        if saved:
            return _check(name, False,
                          f"backend {chosen}: not installed (no {layout}), but {len(saved)} active ban(s) in "
                          f"{cfg.state_dir}: start `popwatch watch` (it installs the rules and restores them)")
        return _check(name, True, f"backend {chosen}: not installed yet: `popwatch watch` (or a ban) installs it")
    parts = [f"backend {chosen}: " + (f"{layout} in place" if not problems else
                                      f"{layout}: " + "; ".join(problems)),
             f"{len(kernel)} ban(s) in the kernel, {len(saved)} active in {cfg.state_dir}"]
    if ports:
        parts.append("ports " + ", ".join(f"{p} {l.describe()}" for p, l in sorted(ports.items())))
    if missing:
        parts.append(f"{len(missing)} saved ban(s) missing from the kernel (e.g. {missing[0]}): "
                     f"`popwatch watch` restores them")
    if problems:
        parts.append("something removed or changed part of popwatch's setup: `popwatch watch` puts it back")
    parts += warns
    return _check(name, not problems and not missing and not warns, "; ".join(parts))


def check_other_tools(chosen: str | None = None) -> list[Check]:
    """Other tools that rewrite the firewall, and what each means for the chosen backend."""
    nft = chosen == "nftables"
    out = []
    if shutil.which("ufw"):
        enabled = _conf_value(["/etc/ufw/ufw.conf"], "ENABLED") or "no"
        what = ("it keeps to its own iptables chains: popwatch's table inet popwatch is not touched "
                "and runs before them (priority -10)" if nft else
                "`ufw reload`/`ufw enable` rewrite the ruleset and can remove popwatch's jump; it "
                "leaves the sets, so bans survive in the kernel")
        out.append(_check("ufw", True, f"installed ({'enabled' if enabled.lower() == 'yes' else 'disabled'}): {what}"))
    if shutil.which("firewall-cmd") or shutil.which("firewalld"):
        out.append(_check("firewalld", True, "installed: a firewalld reload flushes the tables it manages" +
                          (" (its own table inet firewalld; popwatch's table is its own)" if nft else
                           " and can remove popwatch's rules")))
    if nft and os.path.exists("/etc/nftables.conf"):
        try:
            flush = re.search(r"^\s*flush\s+ruleset\b", Path("/etc/nftables.conf").read_text(errors="replace"), re.M)
        except OSError:
            flush = None
        if flush:
            out.append(_check("nftables.service", True,
                              "/etc/nftables.conf starts with `flush ruleset`: `systemctl reload nftables` "
                              "(or `nft -f /etc/nftables.conf`) deletes popwatch's table inet popwatch too, "
                              "and every ban in it"))
    if shutil.which("netfilter-persistent") or os.path.isdir("/usr/share/netfilter-persistent"):
        out.append(_check("netfilter-persistent", True,
                          "installed: `netfilter-persistent reload` restores saved iptables rules; popwatch's "
                          "table inet popwatch is not among them and stays" if nft else
                          "installed: `netfilter-persistent reload` restores a saved ruleset without "
                          "popwatch's rules; do not save popwatch's rules into rules.v4/v6 (they match "
                          "sets that do not exist at boot, and the whole restore then fails)"))
    if shutil.which("docker") or os.path.exists("/var/run/docker.sock"):
        out.append(_check("docker", True, "installed: docker manages its own chains (FORWARD, DOCKER-USER); "
                                          "popwatch filters INPUT only, so published container ports "
                                          "are not rate-limited or banned by it"))
    if not out:
        out.append(_check("other firewall tools", True, "none found (ufw, firewalld, netfilter-persistent, docker)"))
    return out


def checks(cfg: Config, *, now: Callable[[], float] = time.time) -> list[Check]:
    t = now()
    root = os.geteuid() == 0
    fw, chosen, why, err = open_firewall(cfg, root)
    try:
        return _checks(cfg, t, root, fw, chosen, why, err)
    finally:
        if fw is not None:
            fw.close()


def _checks(cfg: Config, t: float, root: bool, fw: Any, chosen: str | None, why: str,
            err: str | None) -> list[Check]:
    out = [check_privileges(), check_backend(chosen, why, err), check_iptables(chosen)]
    if chosen == "nftables":
        out.append(check_nftables())
    out += check_kernel(chosen, root)
    logs, usable = check_logs(cfg, t)
    journal = check_journal(cfg, usable)
    out += logs
    if not logs:
        out.append(_check("log files", journal["ok"] and cfg.journal is not False,
                          "no log file found (/var/log/mail.log, auth.log, maillog, secure, dovecot's "
                          "log_path): " + ("journald is read instead" if journal["ok"] else
                                           "pass --log PATH, or give popwatch access to journald")))
    out += [journal, check_dovecot(), check_sshd(), check_ssh_client(),
            check_rules(cfg, fw, chosen, err, root, t), *check_other_tools(chosen)]
    return out


def run(args: argparse.Namespace) -> int:
    from ..sanitize import clean  # log-derived text never reaches the terminal raw

    res = checks(args.cfg)
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        width = max(len(c["check"]) for c in res)
        for c in res:
            print(f"{'ok' if c['ok'] else '!!'}  {clean(c['check']):<{width}}  {clean(c['detail'])}")
        bad = sum(not c["ok"] for c in res)
        print(f"\n{'everything popwatch needs is there' if not bad else f'{bad} thing(s) limit popwatch'}",
              file=sys.stderr)
    return 0 if all(c["ok"] for c in res) else 1
