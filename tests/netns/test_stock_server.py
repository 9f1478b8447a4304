"""A stock server: every missing piece is one clear line (never a traceback), ``watch`` starts
read-only where it can still monitor, and ``popwatch doctor`` says what is there and what not.

Everything runs in a lab network namespace. Missing programs are simulated with a PATH that
lacks them, non-root by running as ``nobody`` (setpriv; the system python3 with the venv's
site-packages, since the venv's interpreter lives under /root), an unreadable log by chmod, a
missing kernel module by an ``iptables-nft-restore`` wrapper that answers like iptables does
when the kernel lacks xt_hashlimit (the real kernel cannot be changed here; the kernel probes
themselves are tested against fake /proc, /sys and /lib/modules trees in
tests/unit/test_hostcheck.py). Config files that doctor reads (dovecot, sshd) are replaced only
inside a private mount namespace (``unshare -m`` + bind mounts), never on the host.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import need_tools

from .nslab import REPO, Lab, cleanup_stale

pytestmark = pytest.mark.netns

SITE = sysconfig.get_paths()["purelib"]
FAIL_LINE = ("2026-01-01T00:00:00.000000+00:00 srv sshd[1]: Failed password for root from "
             "203.0.113.10 port 40000 ssh2\n")


@pytest.fixture(scope="module", autouse=True)
def _stale() -> None:
    if os.geteuid() == 0:
        cleanup_stale("pwdoc-")


@pytest.fixture
def lab() -> Iterator[Lab]:
    need_tools("ip", "iptables-nft", "ipset", "setpriv", "unshare", "mount")
    with Lab(prefix="pwdoc", clients=1) as lab:
        yield lab


@pytest.fixture
def d() -> Iterator[Path]:
    """A directory ``nobody`` can reach (pytest's own tmp root is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="pwdoc-"))
    try:
        path.chmod(0o755)
        (path / "mail.log").write_text("")
        (path / "mail.log").chmod(0o644)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def pw(lab: Lab, d: Path, *args: str, path: str | None = None, nobody: bool = False,
       prefix: list[str] | None = None, timeout: float = 60,
       backend: str = "auto") -> subprocess.CompletedProcess[str]:
    """``popwatch --state-dir D/state ARGS`` in the lab's server namespace."""
    env = ["env", "-u", "SSH_CONNECTION", "-u", "SSH_CLIENT", "HOME=/tmp"]
    if path is not None:
        env.append(f"PATH={path}")
    if nobody:
        py = shutil.which("python3", path="/usr/bin")
        assert py, "the system python3 is needed to run popwatch as nobody"
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                *env, f"PYTHONPATH={REPO}:{SITE}", py]
    else:
        argv = [*env, f"PYTHONPATH={REPO}", sys.executable]
    argv = [*(prefix or []), *argv, "-m", "popwatch", "--backend", backend, "--state-dir", str(d / "state"), *args]
    return lab.run(lab.server, argv, check=False, timeout=timeout)


def one_line(cp: subprocess.CompletedProcess[str]) -> str:
    lines = [l for l in cp.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("popwatch: "), cp.stderr
    assert "Traceback" not in cp.stderr
    return lines[0]


def no_path(d: Path, *missing: str) -> str:
    """A PATH with every program of /usr/sbin, /usr/bin except ``missing`` (symlinks in D/bin)."""
    b = d / f"bin-{'-'.join(missing)}"
    b.mkdir()
    for dirn in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin"):
        for name in os.listdir(dirn):
            if any(name == m or name.startswith(m + "-") for m in missing) or (b / name).exists():
                continue
            (b / name).symlink_to(os.path.join(dirn, name))
    os.chmod(b, 0o755)
    return str(b)


# ----------------------------------------------------------------------------- item 2

def test_no_iptables_one_line_and_watch_read_only(lab: Lab, d: Path) -> None:
    path = no_path(d, "iptables", "ip6tables")
    # an iptables backend named explicitly: one line naming the package
    cp = pw(lab, d, "ban", "203.0.113.5", path=path, backend="nft")
    assert cp.returncode == 1
    line = one_line(cp)
    assert "iptables is not installed" in line and "'iptables' package" in line
    cp = pw(lab, d, "status", path=path, backend="nft")
    assert cp.returncode == 1 and "iptables is not installed" in one_line(cp)
    # watch: starts anyway, says why once, and still monitors (events flow)
    log, events = d / "mail.log", d / "events.jsonl"
    log.write_text(FAIL_LINE)
    cp = pw(lab, d, "watch", "--no-tui", "--from-start", "--log", str(log), "--events", str(events),
            "--duration", "3", path=path, backend="nft")
    assert cp.returncode == 0, cp.stderr
    assert "Traceback" not in cp.stderr
    assert "popwatch: warning: read-only (watching only): iptables is not installed" in cp.stderr
    ev = [json.loads(l) for l in events.read_text().splitlines()]
    assert any(e.get("ip") == "203.0.113.10" for e in ev)
    assert lab.run(lab.server, ["iptables", "-S"]).stdout.count("POPWATCH") == 0
    # auto without iptables binaries: the native nftables backend needs none of them
    cp = pw(lab, d, "ban", "203.0.113.5", path=path)
    assert cp.returncode == 0, cp.stderr
    assert "203.0.113.5" in lab.run(lab.server, ["nft", "list", "table", "inet", "popwatch"]).stdout
    assert pw(lab, d, "uninstall", path=path).returncode == 0


def test_not_root_exit_3_and_watch_read_only_unreadable_log(lab: Lab, d: Path) -> None:
    cp = pw(lab, d, "ban", "203.0.113.5", nobody=True)
    assert cp.returncode == 3
    assert "needs root or CAP_NET_ADMIN" in one_line(cp) and "sudo" in cp.stderr
    cp = pw(lab, d, "limit", "110", "--rate", "5/second", "--mode", "global", nobody=True)
    assert cp.returncode == 3 and "root" in one_line(cp)
    ok_log, denied, events = d / "mail.log", d / "auth.log", d / "events.jsonl"
    ok_log.write_text(FAIL_LINE)
    denied.write_text(FAIL_LINE)
    denied.chmod(0o600)
    events.touch()
    events.chmod(0o666)
    cp = pw(lab, d, "watch", "--no-tui", "--from-start", "--log", str(ok_log), "--log", str(denied),
            "--events", str(events), "--duration", "3", nobody=True)
    assert cp.returncode == 0, cp.stderr
    assert "Traceback" not in cp.stderr
    assert "popwatch: warning: read-only (watching only): " in cp.stderr and "root or CAP_NET_ADMIN" in cp.stderr
    assert f"popwatch: warning: cannot read {denied} (permission denied" in cp.stderr
    assert any(json.loads(l).get("source") == str(ok_log) for l in events.read_text().splitlines())


WRAPPER = """#!/bin/sh
# iptables-nft-restore as it answers when the kernel has no xt_hashlimit
input=$(cat)
case "$input" in
  *hashlimit*) echo "iptables-restore v1.8.9 (nf_tables): Couldn't load match \\`hashlimit':No such file or directory" >&2
               echo "" >&2; echo "Error occurred at line: 4" >&2
               echo "Try \\`iptables-restore -h' or 'iptables-restore --help' for more information." >&2; exit 2 ;;
esac
printf '%s\\n' "$input" | exec /usr/sbin/{real} "$@"
"""


def test_missing_hashlimit_module_one_line_and_watch_read_only(lab: Lab, d: Path) -> None:
    b = d / "wrap"
    b.mkdir()
    for real in ("iptables-nft-restore", "ip6tables-nft-restore"):
        (b / real).write_text(WRAPPER.replace("{real}", real))
        (b / real).chmod(0o755)
    path = f"{b}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    cp = pw(lab, d, "limit", "110", "--rate", "5/second", "--mode", "per-source", path=path, backend="nft")
    assert cp.returncode == 1
    line = one_line(cp)
    assert "the kernel lacks xt_hashlimit" in line and "modprobe xt_hashlimit" in line
    (d / "mail.log").write_text(FAIL_LINE)
    cfg = d / "popwatch.toml"
    cfg.write_text('[limits.110]\nmode = "per-source"\nrate = "5/second"\nburst = 10\n')
    cp = pw(lab, d, "--config", str(cfg), "watch", "--no-tui", "--from-start", "--log", str(d / "mail.log"),
            "--ports", "110", "--events", str(d / "ev.jsonl"), "--duration", "3", path=path, backend="nft")
    assert cp.returncode == 0 and "Traceback" not in cp.stderr, cp.stderr
    assert "popwatch: warning: read-only (watching only): the kernel lacks xt_hashlimit" in cp.stderr
    assert (d / "ev.jsonl").read_text().count("203.0.113.10") >= 1


# ----------------------------------------------------------------------------- doctor

def private_etc(d: Path, *, auth_verbose: str, sshd_loglevel: str) -> list[str]:
    """An ``unshare -m`` prefix whose /etc/dovecot logging and sshd_config say what we want."""
    dv = d / "10-logging.conf"
    dv.write_text(f"auth_verbose = {auth_verbose}\n")
    sc = d / "sshd_config"
    sc.write_text(f"LogLevel {sshd_loglevel}\nUsePAM yes\n")
    binds = []
    if Path("/etc/dovecot/conf.d/10-logging.conf").exists():
        binds.append(f"mount --bind {dv} /etc/dovecot/conf.d/10-logging.conf")
    if Path("/etc/ssh/sshd_config").exists():
        binds.append(f"mount --bind {sc} /etc/ssh/sshd_config")
    script = " && ".join([*binds, 'exec "$@"'])
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"]


def doctor(lab: Lab, d: Path, *extra: str, **kw: object) -> tuple[int, dict[str, dict[str, object]]]:
    cfg = d / "popwatch.toml"
    cfg.write_text(f'logs = ["{d / "mail.log"}"]\n')
    cfg.chmod(0o644)
    cp = pw(lab, d, "--config", str(cfg), "doctor", "--json", *extra, **kw)  # type: ignore[arg-type]
    assert "Traceback" not in cp.stderr and cp.stdout.startswith("["), (cp.stdout, cp.stderr)
    res = json.loads(cp.stdout)
    assert all(set(c) == {"check", "ok", "detail"} and isinstance(c["ok"], bool) for c in res)
    return cp.returncode, {c["check"]: c for c in res}


#: per backend: the kernel checks doctor makes, the kernel objects it says are in place, and
#: how to take part of them away (without touching the bans) and what doctor then says
KERNEL = {"nft": ("kernel ip_set", "kernel xt_set", "kernel xt_hashlimit", "kernel conntrack"),
          "nftables": ("kernel nf_tables", "kernel nft_set", "kernel nft_limit", "kernel nft_ct")}
LAYOUT = {"nft": "chain POPWATCH and its jump from INPUT (IPv4, IPv6), sets popwatch4, popwatch6, "
                 "popwatchx4, popwatchx6 in place",
          "nftables": "table inet popwatch (chain input, sets ban4, ban6, ban6n, x4, x6) in place"}
FLUSH = {"nft": ["ipset", "flush", "popwatch4"], "nftables": ["nft", "flush", "set", "inet", "popwatch", "ban4"]}
BREAK = {"nft": (["iptables", "-D", "INPUT", "-j", "POPWATCH"], "IPv4 jump from INPUT to POPWATCH missing"),
         "nftables": (["nft", "delete", "table", "inet", "popwatch"],
                      "backend nftables: not installed (no table inet popwatch")}


@pytest.mark.parametrize("backend", ["nft", "nftables"])
def test_doctor_everything_in_place(lab: Lab, d: Path, backend: str) -> None:
    etc = private_etc(d, auth_verbose="yes", sshd_loglevel="VERBOSE")
    assert pw(lab, d, "ban", "203.0.113.50", backend=backend).returncode == 0   # installs chain/table and sets
    (d / "mail.log").write_text(FAIL_LINE)
    before = lab.run(lab.server, ["nft", "-s", "list", "ruleset"]).stdout
    rc, by = doctor(lab, d, prefix=etc, backend=backend)
    assert rc == 0, [c for c in by.values() if not c["ok"]]
    # doctor changed nothing (its nftables kernel probe is a check-only transaction)
    assert lab.run(lab.server, ["nft", "-s", "list", "ruleset"]).stdout == before
    assert by["privileges"]["detail"].startswith("root")
    assert by["backend"]["detail"].startswith(f"{backend} (") and "why: named with --backend" in by["backend"]["detail"]
    assert by["iptables"]["ok"] and ("used by backend nft" if backend == "nft" else "not used by backend nftables") \
        in by["iptables"]["detail"]
    for k in KERNEL[backend]:
        assert by[k]["ok"], by[k]
    other = KERNEL["nftables" if backend == "nft" else "nft"]
    assert not any(k in by for k in other)  # only the kernel support this backend uses
    if backend == "nft":
        assert "netlink protocol" in by["kernel ip_set"]["detail"] and "nftables" not in by
    else:
        assert "the kernel accepted a check-only rule" in by["kernel nft_limit"]["detail"]
        assert "libnftables" in by["nftables"]["detail"]
    assert "readable, last written" in by[f"log {d / 'mail.log'}"]["detail"]
    if shutil.which("doveconf"):
        assert by["dovecot auth_verbose"]["detail"].startswith("yes")
    assert by["sshd LogLevel"]["detail"].startswith("VERBOSE")
    r = by["popwatch rules and sets"]["detail"]
    assert r.startswith(f"backend {backend}: {LAYOUT[backend]}; 1 ban(s) in the kernel, 1 active"), r
    # the text form: one line per check, same verdict
    cp = pw(lab, d, "--config", str(d / "popwatch.toml"), "doctor", prefix=etc, backend=backend)
    assert cp.returncode == 0 and cp.stdout.count("\n") == len(by)
    assert "everything popwatch needs is there" in cp.stderr
    # auto: which backend it picks and why, and it judges that backend's objects
    rc, by = doctor(lab, d, prefix=etc)
    assert rc == 0, [c for c in by.values() if not c["ok"]]
    why = by["backend"]["detail"]
    if backend == "nft":  # popwatch's iptables-nft rules are there: auto keeps them, says how to move
        assert why.startswith("nft (") and "to move to the native nftables backend" in why
    else:
        assert why.startswith("nftables (") and "why: auto: nf_tables host, popwatch's table inet popwatch exists" in why
    assert by["popwatch rules and sets"]["detail"].startswith(f"backend {backend}: {LAYOUT[backend]}")
    assert pw(lab, d, "uninstall", backend=backend).returncode == 0


@pytest.mark.parametrize("backend", ["nft", "nftables"])
def test_doctor_things_missing(lab: Lab, d: Path, backend: str) -> None:
    etc = private_etc(d, auth_verbose="no", sshd_loglevel="QUIET")
    assert pw(lab, d, "ban", "203.0.113.50", backend=backend).returncode == 0
    lab.run(lab.server, FLUSH[backend])     # e.g. a reboot emptied the sets
    os.utime(d / "mail.log", (time.time() - 3 * 86400, time.time() - 3 * 86400))
    rc, by = doctor(lab, d, prefix=etc, backend=backend)
    assert rc == 1
    rules = by["popwatch rules and sets"]
    assert not rules["ok"] and rules["detail"].startswith(f"backend {backend}: {LAYOUT[backend]}"), rules
    assert "1 saved ban(s) missing from the kernel (e.g. 203.0.113.50)" in rules["detail"]
    assert not by[f"log {d / 'mail.log'}"]["ok"] and "last written 3 d ago" in by[f"log {d / 'mail.log'}"]["detail"]
    if shutil.which("doveconf"):
        assert not by["dovecot auth_verbose"]["ok"] and "auth_verbose = yes" in by["dovecot auth_verbose"]["detail"]
    assert not by["sshd LogLevel"]["ok"] and "QUIET" in by["sshd LogLevel"]["detail"]
    # part of the setup taken away by hand: doctor names what
    argv, said = BREAK[backend]
    lab.run(lab.server, argv)
    rc, by = doctor(lab, d, backend=backend)
    rules = by["popwatch rules and sets"]
    assert rc == 1 and not rules["ok"] and said in rules["detail"], rules
    if backend == "nftables":
        assert "1 active ban(s) in" in rules["detail"] and "start `popwatch watch`" in rules["detail"]
    else:
        assert "something removed or changed part of popwatch's setup" in rules["detail"]
    # no iptables on PATH: only the iptables backends need it
    path = no_path(d, "iptables", "ip6tables")
    rc, by = doctor(lab, d, path=path, backend=backend)
    assert rc == 1 and by["iptables"]["ok"] == (backend == "nftables")
    assert ("'iptables' package" if backend == "nft" else "backend nftables does not need it") in by["iptables"]["detail"]
    if backend == "nftables":
        rc, by = doctor(lab, d, path=path)
        assert "why: auto: no iptables binary, libnftables present" in by["backend"]["detail"]
    # as nobody, with the log unreadable
    (d / "mail.log").chmod(0o600)
    rc, by = doctor(lab, d, nobody=True, backend=backend)
    assert rc == 1
    assert not by["privileges"]["ok"] and "sudo" in by["privileges"]["detail"]
    assert by["backend"]["ok"] and by["backend"]["detail"].startswith(f"{backend} (")
    assert all(k in by for k in KERNEL[backend])  # from the files without root
    assert not by[f"log {d / 'mail.log'}"]["ok"] and "not readable by uid" in by[f"log {d / 'mail.log'}"]["detail"]
    assert not by["popwatch rules and sets"]["ok"] and "without root" in by["popwatch rules and sets"]["detail"]
    # the admin's SSH address as popwatch sees it
    cp = lab.run(lab.server, ["env", "SSH_CONNECTION=203.0.113.77 50000 192.0.2.1 22", f"PYTHONPATH={REPO}",
                              sys.executable, "-m", "popwatch", "--state-dir", str(d / "state"), "doctor", "--json"],
                 check=False)
    ssh = {c["check"]: c for c in json.loads(cp.stdout)}["your SSH address"]
    assert ssh["ok"] and ssh["detail"].startswith("203.0.113.77: popwatch never bans")
    pw(lab, d, "uninstall", backend=backend)


FAKE_JOURNALCTL = """#!/bin/sh
# journalctl as a user outside the adm/systemd-journal groups answers (systemd's own hint)
echo "Hint: You are currently not seeing messages from other users and the system." >&2
echo "      Users in groups 'adm', 'systemd-journal' can see all messages." >&2
echo "      Pass -q to turn off this notice." >&2
exit 0
"""


def test_no_journald_access_one_line(lab: Lab, d: Path) -> None:
    b = d / "jbin"
    b.mkdir()
    (b / "journalctl").write_text(FAKE_JOURNALCTL)
    (b / "journalctl").chmod(0o755)
    path = f"{b}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    cp = pw(lab, d, "--backend", "none", "watch", "--no-tui", "--journal", "--log", str(d / "mail.log"),
            "--duration", "2", path=path)
    assert cp.returncode == 0 and "Traceback" not in cp.stderr, cp.stderr
    [line] = [l for l in cp.stderr.splitlines() if "journald" in l]
    assert line.startswith("popwatch: warning: no full access to journald") and "systemd-journal group" in line
    cfg = d / "j.toml"
    cfg.write_text("journal = true\n")
    cp = pw(lab, d, "--config", str(cfg), "doctor", "--json", path=path)
    j = {c["check"]: c for c in json.loads(cp.stdout)}["journald"]
    assert cp.returncode == 1 and not j["ok"] and "systemd-journal group" in j["detail"]
