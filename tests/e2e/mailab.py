"""The real-daemon attack lab: dovecot, OpenSSH and rsyslog in a server namespace, THC hydra and
Python attackers in attacker namespaces, a legitimate mail user, and popwatch in between.

Built by composition on :class:`tests.netns.nslab.Lab` (namespaces, bridge, addresses)::

    a1     203.0.113.10   2001:db8:1::10  --\\
    a2     203.0.113.11   2001:db8:2::11  ---+
    a3     198.51.100.20  2001:db8:3::20  ---+-- br0 (<p>-sw)
    a4     198.51.100.21  2001:db8:4::21  ---+         |
    legit  203.0.113.50   2001:db8:5::50  --/          eth0 <p>-srv 192.0.2.1/24 2001:db8::1/64
                                                       rsyslogd + dovecot (110/143) + sshd (22)

``<p>`` is ``pwe2e-<pid>-<hex>``. Every address is a documentation address, no namespace has a
default route, and every tool checks its target (see :func:`tests.netns.nslab.is_doc_address`).

**Logging, and why a private mount namespace.** sshd and dovecot log with syslog(3), which
always writes to ``/dev/log``, a host-global path (``ip netns exec`` only separates the
network). This host has no ``/dev/log`` and CI has none either, and the lab must not create or
clobber one. So the daemons live in a *private mount + UTS namespace* inside the server's
network namespace: a small holder process (:data:`_HOLDER`) is started with ``ip netns exec
<srv> unshare --mount --uts --propagation private``; it puts an overlayfs on ``/dev`` (lower:
the real ``/dev``, upper: the lab's temp dir; ``/dev/pts`` is moved back in), a tmpfs on
``/run`` (sshd's privilege-separation dir ``/run/sshd``), lab copies of ``/etc/passwd`` and
``/etc/shadow`` with one extra test user (so sshd has a known password without touching the
host's accounts), and the host name ``mail1``. rsyslogd (imuxsock) then creates ``/dev/log``
in that overlay and writes ``mail.log``/``auth.log`` in the Debian 12 format
(``RSYSLOG_FileFormat``). The daemons are started with ``nsenter -t <holder> -n -m -u`` (``ip
netns exec`` would make a fresh mount namespace without the private ``/dev/log``). Nothing
outside the temp dir is written; the host's ``/dev``, ``/run`` and ``/etc`` are untouched.

popwatch itself runs with a plain ``ip netns exec <srv>``: it only reads the log files and
changes the server namespace's firewall.

Cleanup (:meth:`MailLab.close`, also when a test failed): every process the lab started is
stopped by PID (SIGTERM, then SIGKILL), then anything still living in the lab's namespaces
(``ip netns pids``: children of those processes, e.g. sshd's per-connection processes) is
killed by PID, then the namespaces are deleted.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from tests.deadline import readline_within
from tests.netns.nslab import REPO, SERVER_V4, SERVER_V6, Client, Lab, cleanup_stale, is_doc_address

HERE = Path(__file__).resolve().parent
CONF = HERE / "conf"
PREFIX = "pwe2e"
HOSTNAME = "mail1"

#: the lab's hosts: key -> (v4, v6)
HOSTS = {
    "a1": ("203.0.113.10", "2001:db8:1::10"),
    "a2": ("203.0.113.11", "2001:db8:2::11"),
    "a3": ("198.51.100.20", "2001:db8:3::20"),
    "a4": ("198.51.100.21", "2001:db8:4::21"),
    "legit": ("203.0.113.50", "2001:db8:5::50"),
}

#: mail accounts (dovecot passwd-file); ``test`` has a weak password that is in the dictionary:
#: the 13th guess of an attacker that sprays each password over all users (hydra -u)
MAIL_ACCOUNTS = {"alice": "Wonderland-2009", "bob": "correct-horse-battery", "test": "12345678"}
#: the system user sshd knows (lab copy of /etc/shadow)
SSH_USER, SSH_PASSWORD = "carol", "Kn0wn-lab-Passw0rd"
#: the attack dictionary: small, with test's password 3rd, so an unprotected server loses it soon
USERS = ["root", "admin", "test", "info", "webmaster"]
PASSWORDS = ["123456", "password", "12345678", "qwerty", "admin", "letmein", "welcome", "monkey",
             "dragon", "master", "abc123", "111111", "iloveyou", "sunshine", "princess", "football",
             "shadow", "superman", "trustno1", "baseball", "access", "hello", "charlie", "654321"]

# Holder of the private mount/UTS namespace the daemons run in (see the module docstring).
_HOLDER = r"""
import os, subprocess, sys, time
T, host, max_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
ns = os.path.join(T, "ns")
def sh(*a):
    subprocess.run(a, check=True, capture_output=True, timeout=20)
for d in ("dev-upper", "dev-work", "pts"):
    os.makedirs(os.path.join(ns, d), exist_ok=True)
sh("mount", "--bind", "/dev/pts", f"{ns}/pts")
sh("mount", "-t", "overlay", "overlay", "-o",
   f"lowerdir=/dev,upperdir={ns}/dev-upper,workdir={ns}/dev-work", "/dev")
sh("mount", "--move", f"{ns}/pts", "/dev/pts")
sh("mount", "-t", "tmpfs", "-o", "mode=755,size=16m", "tmpfs", "/run")
os.mkdir("/run/sshd", 0o755)
for f in ("passwd", "shadow"):
    sh("mount", "--bind", f"{T}/etc/{f}", f"/etc/{f}")
sh("hostname", host)
print("ready", flush=True)
parent = os.getppid()
deadline = time.monotonic() + max_s
while time.monotonic() < deadline and os.getppid() == parent:  # also ends when the lab's owner dies
    time.sleep(1)
"""


def _render(name: str, t: Path) -> str:
    return (CONF / name).read_text().replace("@T@", str(t))


@dataclass
class Proc:
    """A process the lab started, with a label and where its output goes."""

    label: str
    popen: subprocess.Popen[str]
    out: Path | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid


@dataclass
class MailLab:
    """The daemon lab. Use as a context manager; see the module docstring."""

    tmp: Path
    max_seconds: float = 900.0
    lab: Lab = field(init=False)
    holder: Proc | None = field(init=False, default=None)
    procs: list[Proc] = field(init=False, default_factory=list)
    daemons: dict[str, Proc] = field(init=False, default_factory=dict)
    timings: dict[str, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.tmp = Path(self.tmp)
        self.lab = Lab(clients=0, prefix=PREFIX)
        for key, (v4, v6) in HOSTS.items():
            self.lab.hosts[key] = Client(key, f"{self.lab.name}-{key}", v4, v6)
        self.logdir = self.tmp / "log"
        self.mail_log = self.logdir / "mail.log"
        self.auth_log = self.logdir / "auth.log"
        self.work = self.tmp / "work"

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "MailLab":
        try:
            self.up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def server(self) -> str:
        return self.lab.server

    @property
    def hosts(self) -> dict[str, Client]:
        return self.lab.hosts

    def up(self) -> None:
        t0 = time.monotonic()
        cleanup_stale_labs()
        self._files()
        self.lab.up()
        self.timings["namespaces"] = time.monotonic() - t0
        self._start_holder()
        self.start_daemons()
        self.timings["up"] = time.monotonic() - t0

    def _files(self) -> None:
        t = self.tmp
        t.mkdir(parents=True, exist_ok=True)
        os.chmod(t, 0o755)  # dovecot's mail processes (uid 65534) walk into mail/
        for d in ("log", "work", "rsyslog", "ssh", "etc", "ns", "dovecot/run", "dovecot/state", "mail"):
            (t / d).mkdir(parents=True, exist_ok=True)
        os.chown(t / "mail", 65534, 65534)
        os.chmod(t / "log", 0o755)
        (t / "rsyslog.conf").write_text(_render("rsyslog.conf", t))
        (t / "dovecot.conf").write_text(_render("dovecot.conf", t))
        (t / "sshd_config").write_text(_render("sshd_config", t))
        users = "".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in MAIL_ACCOUNTS.items())
        (t / "dovecot" / "users").write_text(users)
        os.chmod(t / "dovecot" / "users", 0o640)
        shutil.chown(t / "dovecot" / "users", group="dovecot")
        (t / "users.txt").write_text("\n".join(USERS) + "\n")
        (t / "passwords.txt").write_text("\n".join(PASSWORDS) + "\n")
        key = t / "ssh" / "ssh_host_ed25519_key"
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True,
                           capture_output=True, timeout=20)
        # lab copies of the account files, with one test user sshd can check a password for
        passwd = Path("/etc/passwd").read_text()
        shadow = Path("/etc/shadow").read_text()
        if not passwd.endswith("\n"):
            passwd += "\n"
        if not shadow.endswith("\n"):
            shadow += "\n"
        crypt = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=SSH_PASSWORD, text=True,
                               capture_output=True, check=True, timeout=20).stdout.strip()
        passwd += f"{SSH_USER}:x:4242:4242:lab user:{t}/work:/bin/sh\n"
        shadow += f"{SSH_USER}:{crypt}:20000:0:99999:7:::\n"
        (t / "etc" / "passwd").write_text(passwd)
        (t / "etc" / "shadow").write_text(shadow)
        os.chmod(t / "etc" / "passwd", 0o644)
        os.chmod(t / "etc" / "shadow", 0o640)

    def _start_holder(self) -> None:
        p = subprocess.Popen(["ip", "netns", "exec", self.server, "unshare", "--mount", "--uts",
                              "--propagation", "private", sys.executable, "-c", _HOLDER, str(self.tmp),
                              HOSTNAME, str(self.max_seconds)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.holder = Proc("holder", p)
        assert p.stdout is not None
        try:
            line = readline_within(p.stdout, 60, "the lab namespace holder")
        except TimeoutError as e:
            line = str(e)
        if line.strip() != "ready":
            err = p.stderr.read() if p.poll() is not None and p.stderr else ""
            raise RuntimeError(f"lab namespace holder did not start: {line!r} {err[-2000:]}")

    def in_server(self, argv: Sequence[str]) -> list[str]:
        """argv prefixed to run in the daemons' namespaces (net + private mount + UTS)."""
        assert self.holder is not None
        return ["nsenter", "-t", str(self.holder.pid), "-n", "-m", "-u", "--", *argv]

    def spawn(self, label: str, argv: Sequence[str], *, out: Path | None = None, cwd: Path | None = None,
              env: dict[str, str] | None = None, stdin: Any = subprocess.DEVNULL) -> Proc:
        """Start a process (argv already carries its namespace prefix); tracked by PID."""
        out = out or (self.work / f"{label}.out")
        f = open(out, "ab")  # noqa: SIM115 - handed to the child
        try:
            p = subprocess.Popen(list(argv), stdout=f, stderr=subprocess.STDOUT, stdin=stdin,
                                 cwd=str(cwd or self.work), text=True,
                                 env=dict(env or os.environ, PYTHONPATH=str(REPO)))
        finally:
            f.close()
        pr = Proc(label, p, out)
        self.procs.append(pr)
        return pr

    def in_client(self, key: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[key].ns, *argv]

    def stop(self, pr: Proc, sig: int = signal.SIGTERM, wait: float = 5.0) -> int | None:
        """Stop one of the lab's processes by PID: ``sig``, then SIGKILL."""
        p = pr.popen
        if p.poll() is None:
            try:
                os.kill(p.pid, sig)
                p.wait(timeout=wait)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=5)
        if pr in self.procs:
            self.procs.remove(pr)
        return p.returncode

    def _ns_pids(self) -> list[int]:
        pids: list[int] = []
        for ns in [self.server, self.lab.switch, *(c.ns for c in self.hosts.values())]:
            cp = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10)
            pids += [int(x) for x in cp.stdout.split() if x.isdigit()]
        return pids

    def close(self) -> None:
        for pr in reversed(list(self.procs)):
            try:
                self.stop(pr)
            except Exception:  # noqa: BLE001 - keep cleaning up
                pass
        self.daemons.clear()
        if self.holder is not None:
            self.stop(self.holder)
            if self.holder.popen.stdout:
                self.holder.popen.stdout.close()
            if self.holder.popen.stderr:
                self.holder.popen.stderr.close()
            self.holder = None
        # whatever is left in our namespaces was started by us (children of our processes)
        for _ in range(3):
            pids = [p for p in self._ns_pids() if p != os.getpid()]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        self.lab.close()

    # ------------------------------------------------------------------ daemons
    def start_daemons(self) -> None:
        t = self.tmp
        t0 = time.monotonic()
        self.daemons["rsyslogd"] = self.spawn("rsyslogd", self.in_server(
            ["rsyslogd", "-n", "-f", str(t / "rsyslog.conf"), "-i", str(t / "rsyslog" / "rsyslogd.pid")]))
        self._wait(lambda: (t / "ns" / "dev-upper" / "log").exists(), 10, "rsyslogd's /dev/log")
        self.daemons["dovecot"] = self.spawn("dovecot", self.in_server(
            ["dovecot", "-F", "-c", str(t / "dovecot.conf")]))
        self.daemons["sshd"] = self.spawn("sshd", self.in_server(
            ["/usr/sbin/sshd", "-D", "-f", str(t / "sshd_config")]))
        self._wait(lambda: self._listening({22, 110, 143}), 15, "dovecot and sshd listening")
        self._wait(lambda: "starting up" in self._read(self.mail_log), 10, "dovecot's start line in mail.log")
        self.timings["daemons"] = time.monotonic() - t0

    def restart_dovecot(self) -> None:
        """A fresh dovecot (forgets its per-IP auth penalties between scenarios)."""
        d = self.daemons.pop("dovecot", None)
        if d is not None:
            self.stop(d, wait=10)
        n = self._read(self.mail_log).count("starting up")
        self.daemons["dovecot"] = self.spawn("dovecot", self.in_server(
            ["dovecot", "-F", "-c", str(self.tmp / "dovecot.conf")]))
        self._wait(lambda: self._listening({110, 143}) and self._read(self.mail_log).count("starting up") > n,
                   15, "dovecot restarted")

    def _listening(self, ports: set[int]) -> bool:
        cp = subprocess.run(["ip", "netns", "exec", self.server, "ss", "-Hltn"], capture_output=True,
                            text=True, timeout=10)
        seen = set()
        for line in cp.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 4:
                port = parts[3].rsplit(":", 1)[-1]
                if port.isdigit():
                    seen.add(int(port))
        return ports <= seen

    def _wait(self, cond, secs: float, what: str) -> None:  # noqa: ANN001
        deadline = time.monotonic() + secs
        while time.monotonic() < deadline:
            if cond():
                return
            for name, d in self.daemons.items():
                if d.popen.poll() is not None:
                    raise RuntimeError(f"{name} exited {d.popen.returncode}: {self._read(d.out)[-2000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"lab: timed out waiting for {what}; syslog: {self._read(self.logdir / 'syslog')[-1500:]}")

    @staticmethod
    def _read(p: Path | None) -> str:
        try:
            return p.read_text(errors="replace") if p else ""
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------------ clients
    def target(self, family: int = 4) -> str:
        return SERVER_V4 if family == 4 else SERVER_V6

    def hydra(self, key: str, service: str, *, tasks: int = 1, family: int = 4, seconds: float = 60,
              users: Sequence[str] | None = None, passwords: Sequence[str] | None = None,
              label: str | None = None) -> Proc:
        """THC hydra from ``key`` against ``service`` (pop3, imap, ssh); bounded by ``timeout``
        (SIGTERM, then SIGKILL 3 s later) and killed by PID on close (it hangs when banned)."""
        host = self.target(family)
        if not is_doc_address(host) or seconds > 900 or not 1 <= tasks <= 8:
            raise ValueError("hydra runs are bounded and only aim at documentation addresses")
        label = label or f"hydra-{service}-{key}"
        wd = self.work / label
        wd.mkdir(exist_ok=True)
        u = wd / "users.txt"
        p = wd / "passwords.txt"
        u.write_text("\n".join(users or USERS) + "\n")
        p.write_text("\n".join(passwords or PASSWORDS) + "\n")
        argv = ["timeout", "-k", "3", str(int(seconds)), "hydra", "-I", "-u", "-L", str(u), "-P", str(p),
                "-t", str(tasks), "-w", "30", "-o", str(wd / "found.txt")]
        if family == 6:
            argv.append("-6")
        argv += [f"{service}://{'[' + host + ']' if family == 6 else host}"]
        if service in ("pop3", "imap"):
            argv[-1] += "/LOGIN"
        return self.spawn(label, self.in_client(key, argv), cwd=wd)

    def mailclient(self, key: str, mode: str, *, out: Path, family: int = 4, **opts: Any) -> Proc:
        """``tests/e2e/tools/mailclient.py`` (legit user or poplib/imaplib attacker) in ``key``'s ns."""
        argv = [sys.executable, "-m", "tests.e2e.tools.mailclient", mode, "--host", self.target(family),
                "--out", str(out)]
        for k, v in opts.items():
            argv += [f"--{k.replace('_', '-')}", str(v)]
        if mode == "attack":
            argv += ["--users", str(self.tmp / "users.txt"), "--passwords", str(self.tmp / "passwords.txt")]
        return self.spawn(f"{mode}-{key}-{out.stem}", self.in_client(key, argv), cwd=REPO)

    def legit(self, out: Path, *, seconds: float, interval: float = 2.0, proto: str = "pop3",
              timeout: float = 3.0) -> Proc:
        return self.mailclient("legit", "legit", out=out, user="alice", password=MAIL_ACCOUNTS["alice"],
                               seconds=seconds, interval=interval, proto=proto, timeout=timeout,
                               max_attempts=int(seconds / max(interval, 0.5)) + 2)

    def connect_ok(self, key: str, port: int, *, family: int = 4, timeout: float = 2.0) -> bool:
        """One TCP connect from ``key`` to the server: True if it was accepted."""
        code = ("import socket,sys\n"
                "s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=float(sys.argv[3]))\n"
                "s.close()\n")
        cp = subprocess.run(self.in_client(key, [sys.executable, "-c", code, self.target(family), str(port),
                                                 str(timeout)]), capture_output=True, timeout=timeout + 20)
        return cp.returncode == 0

    # ------------------------------------------------------------------ popwatch
    def write_config(self, name: str = "popwatch.toml", *, maxretry: int = 5, findtime: str = "10m",
                     bantime: str = "1h", limits: dict[int, dict[str, Any]] | None = None,
                     ports: Iterable[int] = (110, 143, 22)) -> Path:
        lines = [f"ports = [{', '.join(map(str, ports))}]", f'state_dir = "{self.tmp / "state"}"', "",
                 "[policy]", f"maxretry = {maxretry}", f'findtime = "{findtime}"', f'bantime = "{bantime}"']
        for port, spec in (limits or {}).items():
            lines += ["", f"[limits.{port}]"] + [f"{k} = {json.dumps(v)}" for k, v in spec.items()]
        path = self.tmp / name
        path.write_text("\n".join(lines) + "\n")
        return path

    def legacy_path(self) -> str:
        """A PATH whose ``iptables*`` are the legacy binaries: how a host with the legacy
        alternative selected looks to popwatch's ``iptables --version`` detection."""
        d = self.tmp / "legacy-bin"
        d.mkdir(exist_ok=True)
        for name in ("iptables", "ip6tables", "iptables-save", "ip6tables-save", "iptables-restore",
                     "ip6tables-restore"):
            link = d / name
            if not link.exists():
                link.symlink_to(shutil.which(f"{name.replace('tables', 'tables-legacy', 1)}")
                                or f"/usr/sbin/{name.replace('tables', 'tables-legacy', 1)}")
        return f"{d}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"

    def popwatch(self, *args: str, config: Path | None = None, backend: str = "nft", label: str = "popwatch",
                 events: Path | None = None, duration: float | None = None, auto_ban: bool = True,
                 state_dir: Path | None = None, legacy_host: bool = False) -> Proc:
        """``popwatch watch --no-tui`` in the server namespace on the lab's logs."""
        argv = [sys.executable, "-m", "popwatch", "--backend", backend, "--state-dir",
                str(state_dir or self.tmp / "state"), "--config", str(config or self.write_config()),
                "watch", "--no-tui", "--log", str(self.mail_log), "--log", str(self.auth_log)]
        if events is not None:
            argv += ["--events", str(events)]
        if auto_ban:
            argv.append("--auto-ban")
        if duration is not None:
            argv += ["--duration", str(duration)]
        argv += list(args)
        env = dict(os.environ)
        if legacy_host:
            env["PATH"] = self.legacy_path()
        return self.spawn(label, ["ip", "netns", "exec", self.server, *argv], env=env, cwd=REPO)

    def fw(self, *args: str, backend: str = "nft", state_dir: Path | None = None,
           legacy_host: bool = False, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A popwatch CLI firewall command (status, bans, uninstall...) in the server ns."""
        env = dict(os.environ, PYTHONPATH=str(REPO))
        if legacy_host:
            env["PATH"] = self.legacy_path()
        cp = subprocess.run(["ip", "netns", "exec", self.server, sys.executable, "-m", "popwatch", "--backend",
                             backend, "--state-dir", str(state_dir or self.tmp / "state"), *args],
                            capture_output=True, text=True, timeout=60, env=env, cwd=str(REPO))
        if check and cp.returncode != 0:
            raise RuntimeError(f"popwatch {' '.join(args)}: exit {cp.returncode}: {cp.stderr.strip()}")
        return cp

    def run_server(self, argv: Sequence[str], *, check: bool = True, timeout: float = 30,
                   env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        cp = subprocess.run(["ip", "netns", "exec", self.server, *argv], capture_output=True, text=True,
                            timeout=timeout, env=env)
        if check and cp.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: exit {cp.returncode}: {cp.stderr.strip()}")
        return cp

    def kill_connections(self, ip: str) -> str:
        """Close the server's TCP sockets to ``ip`` (``ss -K``). After a DROP ban the attacker's
        FIN/RST never arrive, so dovecot would hold its pre-login connections (and write their
        summary lines) only at its 180 s inactivity timeout; this makes it write them now."""
        if not is_doc_address(ip):
            raise ValueError(ip)
        return self.run_server(["ss", "-K", "-tn", "dst", ip], check=False).stdout

    def legacy_tables(self) -> bool:
        """Whether the server namespace has legacy iptables tables (read without creating them)."""
        cp = self.run_server(["cat", "/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"], check=False)
        return "filter" in cp.stdout.split()

    def firewall_ready(self, backend: str = "nft") -> bool:
        """popwatch's chain exists in the server namespace (its firewall is installed)."""
        binary = "iptables-legacy" if backend == "legacy" else "iptables-nft"
        cp = self.run_server([binary, "-w", "10", "-S", "POPWATCH"], check=False)
        return cp.returncode == 0 and "-N POPWATCH" in cp.stdout

    def wait_for(self, cond, secs: float, what: str, procs: Sequence[Proc] = ()) -> None:  # noqa: ANN001
        """Poll ``cond`` every 0.1 s for at most ``secs``; fail early if one of ``procs`` died."""
        deadline = time.monotonic() + secs
        while time.monotonic() < deadline:
            if cond():
                return
            for pr in procs:
                if pr.popen.poll() is not None:
                    raise RuntimeError(f"{pr.label} exited {pr.popen.returncode} while waiting for {what}: "
                                       f"{self._read(pr.out)[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"timed out after {secs} s waiting for {what}")

    def uninstall_firewall(self, backend: str = "nft", legacy_host: bool = False) -> None:
        self.fw("uninstall", backend=backend, legacy_host=legacy_host, check=False)


def cleanup_stale_labs() -> list[str]:
    """Namespaces left by a crashed earlier run of this suite (``pwe2e-<pid>-...`` whose pid is
    gone): kill the processes still in them (that run's daemons; by PID), then delete them."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20).stdout
    stale = []
    for line in out.splitlines():
        ns = line.split()[0] if line.split() else ""
        parts = ns.split("-")
        if ns.startswith(PREFIX + "-") and len(parts) > 2 and parts[1].isdigit() \
                and not Path(f"/proc/{parts[1]}").exists():
            stale.append(ns)
    for ns in stale:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10).stdout
        for pid in (int(x) for x in pids.split() if x.isdigit()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return cleanup_stale(PREFIX + "-") if stale else []


# ---------------------------------------------------------------------------- log ground truth
#
# The tests' own reading of the daemons' logs (independent of popwatch's parser): which
# password guesses reached dovecot and sshd, from where, when.

_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+[+-]\d\d:\d\d) (\S+) (\S+?)(?:\[(\d+)\])?: (.*)$")
_DV_AUTH = re.compile(r"^auth: passwd-file\((.*),([0-9a-fA-F:.]+),<([^>]*)>\): (unknown user|Password mismatch)")
_DV_SUMMARY = re.compile(r"^(pop3|imap)-login: (?:Info: )?Disconnected: .*\(auth failed, (\d+) attempts? in \d+ secs\): "
                         r"user=<(.*)>, (?:method=\S+, )?rip=([0-9a-fA-F:.]+),.*session=<([^>]*)>")
_DV_LOGIN = re.compile(r"^(pop3|imap)-login: (?:Info: )?Login: user=<(.*)>, method=\S+, rip=([0-9a-fA-F:.]+),.*session=<([^>]*)>")
_DV_SESSION_SVC = re.compile(r"^(pop3|imap)-login: .*session=<([^>]*)>")
_SSH_FAIL = re.compile(r"^Failed password for (?:invalid user )?(.*) from ([0-9a-fA-F:.]+) port \d+ ssh2$")
_SSH_OK = re.compile(r"^Accepted password for (.*) from ([0-9a-fA-F:.]+) port \d+ ssh2$")


@dataclass(frozen=True)
class Guess:
    """One password guess that reached a daemon (or one successful login)."""

    ts: float
    ip: str
    service: str  # pop3 | imap | ssh | dovecot (auth line whose session was never summarised)
    user: str
    ok: bool
    line: str
    session: str | None = None
    #: the connection: ``sshd[PID]`` or the dovecot session id
    conn: str | None = None


def parse_ts(s: str) -> float:
    return dt.datetime.fromisoformat(s).timestamp()


def syslog_lines(*paths: Path) -> Iterator[tuple[float, re.Match[str], str]]:
    """(time, prefix match, line) for each RFC 3339 syslog line of the files that exist.
    Match groups: 1 time, 2 host, 3 tag, 4 pid, 5 message."""
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            m = _TS.match(line)
            if m:
                yield parse_ts(m.group(1)), m, line


def _norm(ip: str) -> str:
    return ip[7:] if ip.lower().startswith("::ffff:") and "." in ip else ip


def guesses(mail_log: Path, auth_log: Path) -> list[Guess]:
    """Every password guess (and successful login) in the lab's logs, oldest first.

    dovecot: one ``auth: passwd-file(...)`` line per failed attempt (``auth_verbose=yes``), the
    service taken from the session's login line; sshd: ``Failed password``/``Accepted password``.
    """
    out: list[Guess] = []
    svc_of: dict[str, str] = {}
    pending: list[tuple[float, str, str, str, str]] = []
    for ts, m, line in syslog_lines(mail_log, auth_log):
        tag, msg = m.group(3), m.group(5)
        if tag == "dovecot":
            a = _DV_AUTH.match(msg)
            if a:
                pending.append((ts, _norm(a.group(2)), a.group(1), a.group(3), line))
                continue
            s = _DV_SESSION_SVC.match(msg)
            if s:
                svc_of[s.group(2)] = s.group(1)
            lg = _DV_LOGIN.match(msg)
            if lg:
                out.append(Guess(ts, _norm(lg.group(3)), lg.group(1), lg.group(2), True, line, lg.group(4),
                                 lg.group(4)))
        elif tag == "sshd":
            f = _SSH_FAIL.match(msg)
            if f:
                out.append(Guess(ts, _norm(f.group(2)), "ssh", f.group(1), False, line, None,
                                 f"sshd[{m.group(4)}]"))
                continue
            ok = _SSH_OK.match(msg)
            if ok:
                out.append(Guess(ts, _norm(ok.group(2)), "ssh", ok.group(1), True, line, None,
                                 f"sshd[{m.group(4)}]"))
    for ts, ip, user, sess, line in pending:
        out.append(Guess(ts, ip, svc_of.get(sess, "dovecot"), user, False, line, sess, sess))
    out.sort(key=lambda g: g.ts)
    return out


_SESS_ANY = re.compile(r"<([A-Za-z0-9+/=]{12,})>")


def conn_first_seen(mail_log: Path, auth_log: Path) -> dict[str, float]:
    """When each connection first appeared in the logs: ``sshd[PID]`` and dovecot sessions."""
    out: dict[str, float] = {}
    for ts, m, _line in syslog_lines(mail_log, auth_log):
        keys = []
        if m.group(3) == "sshd" and m.group(4):
            keys.append(f"sshd[{m.group(4)}]")
        elif m.group(3) == "dovecot":
            keys += _SESS_ANY.findall(m.group(5))
        for k in keys:
            out.setdefault(k, ts)
    return out


def summaries(mail_log: Path) -> list[dict[str, Any]]:
    """dovecot's per-connection summary lines: ts, service, ip, user, attempts, session."""
    out = []
    for ts, m, line in syslog_lines(mail_log):
        if m.group(3) != "dovecot":
            continue
        s = _DV_SUMMARY.match(m.group(5))
        if s:
            out.append({"ts": ts, "service": s.group(1), "attempts": int(s.group(2)),
                        "user": s.group(3), "ip": _norm(s.group(4)), "session": s.group(5), "line": line})
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # a line cut by a kill
    return out


def audit_bans(state_dir: Path) -> dict[str, dict[str, Any]]:
    """First successful ban per target in popwatch's audit log, with its epoch time."""
    out: dict[str, dict[str, Any]] = {}
    for rec in read_jsonl(state_dir / "audit.jsonl"):
        if rec.get("action") == "ban" and rec.get("ok", True) and rec.get("target") not in out:
            out[rec["target"]] = dict(rec, t=dt.datetime.fromisoformat(rec["time"]).timestamp())
        elif rec.get("action") == "close" and rec.get("target") in out:
            # the ban's record is written ahead of the kernel change; the connections it closed
            # right after are a record of their own
            out[rec["target"]]["closed"] = out[rec["target"]].get("closed", 0) + int(rec.get("closed", 0))
    return out
