#!/usr/bin/env python3
"""Install what the test suite needs, then run it: ``sudo python3 tests/run.py [pytest args]``.

* As root on Debian/Ubuntu: installs the system packages the kernel, journald and real-daemon
  tests need (iptables, ipset, nftables, dovecot, openssh-server, rsyslog, hydra, ...), once.
* Installs popwatch with its test extras: into the current Python when that is allowed, else
  into ``.venv`` (PEP 668 "externally managed" system Pythons), then re-runs itself there.
* Runs pytest. Under ``CI=true`` nothing that needs root, namespaces or daemons may skip.

Only the standard library is used here, so it runs on a fresh machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APT_PACKAGES = [
    "iptables", "ipset", "nftables", "iproute2", "procps", "kmod",
    "dovecot-core", "dovecot-pop3d", "dovecot-imapd", "openssh-server", "openssh-client", "rsyslog",
    "hydra", "fail2ban", "systemd-journal-remote", "tmux", "python3-venv",
    "prometheus", "prometheus-node-exporter", "crowdsec", "crowdsec-firewall-bouncer", "ufw",
]


def say(msg: str) -> None:
    print(f"[tests/run.py] {msg}", flush=True)


def apt_install() -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None or shutil.which("dpkg-query") is None:
        say("not root on a Debian/Ubuntu system: skipping system packages "
            "(kernel, journald and real-daemon tests will skip)")
        return
    missing = []
    for pkg in APT_PACKAGES:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if "install ok installed" not in r.stdout:
            missing.append(pkg)
    if not missing:
        say("system packages present")
        return
    say(f"installing system packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    capi = Path("/etc/crowdsec/online_api_credentials.yaml")
    if "crowdsec" in missing and not capi.exists():
        # crowdsec's postinst registers with the Central API unless this file is non-empty;
        # there is no network here, and the tests run their own loopback-only LAPI
        capi.parent.mkdir(parents=True, exist_ok=True)
        capi.write_text("# no Central API: offline test host (tests/run.py)\n")
    # Do not let package scripts start the daemons on this host: the tests start their own
    # instances inside network namespaces.
    rcd = Path("/usr/sbin/policy-rc.d")
    made_rcd = False
    if not rcd.exists():
        rcd.write_text("#!/bin/sh\nexit 101\n")
        rcd.chmod(0o755)
        made_rcd = True
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                       check=True, env=env)
    finally:
        if made_rcd:
            rcd.unlink(missing_ok=True)


def externally_managed() -> bool:
    if sys.prefix != sys.base_prefix:
        return False
    return (Path(sysconfig.get_path("stdlib")) / "EXTERNALLY-MANAGED").exists()


def ensure_python_env(argv: list[str]) -> None:
    if externally_managed():
        venv = ROOT / ".venv"
        py = venv / "bin" / "python"
        if not py.exists():
            say(f"system Python is externally managed: creating {venv}")
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        os.execv(str(py), [str(py), str(Path(__file__).resolve()), "--no-apt", *argv])
    say("installing popwatch with test extras")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "-e", f"{ROOT}[test]"], check=True)


def main() -> int:
    argv = sys.argv[1:]
    no_apt = "--no-apt" in argv
    argv = [a for a in argv if a != "--no-apt"]
    if not no_apt:
        apt_install()
    ensure_python_env(argv)
    os.chdir(ROOT)
    cmd = [sys.executable, "-m", "pytest", "-ra", "-p", "no:cacheprovider", *argv]
    say(" ".join(cmd))
    rc = subprocess.call(cmd)
    if rc == 5:
        say("pytest collected no tests: that is a failure")
        return 1
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
