#!/usr/bin/env python3
"""Install what the test suite needs, then run it: ``sudo python3 tests/run.py [pytest args]``.

* As root on Debian/Ubuntu: installs the system packages the kernel, journald and real-daemon
  tests need (iptables, ipset, nftables, dovecot, openssh-server, rsyslog, hydra, ...), once.
  Nothing they install stays enabled or running (tests/hostsafe.py); benchmark-only packages
  (fail2ban) are installed by the benchmarks.
* Installs popwatch with its test extras into ``ROOT/.venv`` (owned by the sudo user), never the
  system Python, pinned by tests/constraints.txt, and runs pytest with that venv's Python.
* Runs pytest. Under ``CI=true`` nothing that needs root, namespaces or daemons may skip
  (``sudo`` drops the environment: ``sudo CI=true python3 tests/run.py``).
* As root, records the host's enabled units, firewall, listening sockets and /etc before pytest
  and fails the run if any of them differs afterwards, or if popwatch became importable from the
  system Python.

Only the standard library is used here, so it runs on a fresh machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import hostsafe  # stdlib only, next to this file

APT_PACKAGES = [
    "iptables", "ipset", "nftables", "iproute2", "procps", "kmod",
    "dovecot-core", "dovecot-pop3d", "dovecot-imapd", "openssh-server", "openssh-client", "rsyslog",
    "hydra", "systemd-journal-remote", "tmux", "python3-venv",
    "prometheus", "prometheus-node-exporter", "crowdsec", "crowdsec-firewall-bouncer", "ufw",
]


BENCHMARK_ONLY = ["fail2ban"]  # installed by benchmarks/ (tests/hostsafe.py), not here
VENV = ROOT / ".venv"
CONSTRAINTS = ROOT / "tests" / "constraints.txt"


def say(msg: str) -> None:
    print(f"[tests/run.py] {msg}", flush=True)


def apt_install() -> None:
    hostsafe.apt_install(APT_PACKAGES, "(kernel, journald and real-daemon tests will skip)")


def _invoker() -> tuple[int, int] | None:
    """(uid, gid) of the user behind sudo, None when not under sudo."""
    uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    if os.geteuid() == 0 and uid and gid and uid.isdigit() and gid.isdigit() and int(uid) != 0:
        return int(uid), int(gid)
    return None


def _chown_tree(path: Path, ids: tuple[int, int]) -> None:
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [".", *dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, name), *ids)


def ensure_venv() -> Path:
    """popwatch and the test deps in ROOT/.venv (owned by the sudo user), never the system
    Python; versions pinned by tests/constraints.txt (snapshots depend on textual and rich)."""
    py = VENV / "bin" / "python"
    if not py.exists():
        say(f"creating {VENV}")
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(VENV)], check=True)
    say(f"installing popwatch with test extras into {VENV} (constraints: {CONSTRAINTS.name})")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "-c", str(CONSTRAINTS), "-e", f"{ROOT}[test]"], check=True)
    ids = _invoker()
    if ids is not None:
        _chown_tree(VENV, ids)
        for built in [*ROOT.glob("*.egg-info"), ROOT / "build"]:
            if built.exists():
                _chown_tree(built, ids)
    return py


def system_python_has_popwatch(python: str) -> bool:
    code = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('popwatch') else 1)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    return subprocess.run([python, "-I", "-c", code], check=False, cwd="/", env=env,
                          capture_output=True).returncode == 0


def lint_and_types(py: Path) -> list[str]:
    """``ruff check popwatch`` and ``mypy`` (pyproject's own configuration) with the venv's
    pinned versions; any finding fails the run. Returns the tools that found something."""
    failed = []
    for name, cmd in (("ruff", [str(py), "-m", "ruff", "check", "popwatch"]), ("mypy", [str(py), "-m", "mypy"])):
        say(" ".join(cmd))
        if subprocess.call(cmd, cwd=ROOT, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1")) != 0:
            say(f"{name} found problems: that is a failure")
            failed.append(name)
    return failed


def main() -> int:
    argv = sys.argv[1:]
    no_apt = "--no-apt" in argv
    argv = [a for a in argv if a != "--no-apt"]
    if not no_apt:
        apt_install()
    host_python = getattr(sys, "_base_executable", sys.executable)
    py = ensure_venv()
    os.chdir(ROOT)
    check_host = os.geteuid() == 0
    before = hostsafe.snapshot() if check_host else None  # after the install: what it must stay
    lint = lint_and_types(py)
    cmd = [str(py), "-m", "pytest", "-ra", "--durations=20", "-p", "no:cacheprovider", *argv]
    say(" ".join(cmd) + ("  (CI=true: nothing may skip)" if os.environ.get("CI") else ""))
    # no root-owned __pycache__ in the user's clone
    rc = subprocess.call(cmd, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    if rc == 5:
        say("pytest collected no tests: that is a failure")
        rc = 1
    if lint and rc == 0:
        rc = 1
    problems = hostsafe.diff(before, hostsafe.snapshot()) if before is not None else []
    if system_python_has_popwatch(host_python):
        problems.append(f"popwatch is importable from the system Python ({host_python})")
    for p in problems:
        say(f"HOST CHANGED: {p}")
    if problems:
        say("the run changed this host (see above): failing")
        return rc or 1
    if check_host:
        say("host unchanged: enabled units, firewall, listening sockets and /etc as before")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
