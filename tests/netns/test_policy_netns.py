"""Policy in a real network namespace with the real nft backend: ``popwatch watch --no-tui`` runs
as a subprocess in the server namespace, tailing a log file the test writes to.

Auto-ban after maxretry (and the attacker's SYNs really dropped), protected addresses never
banned, expiry in the kernel, recidive growth, restart after ``kill -9`` restoring exactly the
active bans, a second instance refused, a corrupt state file survived, undo from the CLI.
Every wait is bounded; processes are stopped by PID and namespaces removed by the Lab.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.conftest import need_tools

from .nslab import Lab, cleanup_stale

pytestmark = pytest.mark.netns

ATTACKER = "203.0.113.10"          # the lab's c0
SSH_ADMIN = "203.0.113.99"         # the SSH client popwatch must never ban (from SSH_CONNECTION)
OFFICE = "198.51.100.0/24"         # allow-listed


def dove(ip: str, n: int, user: str = "root", svc: str = "pop3") -> str:
    dove.i += 1  # type: ignore[attr-defined]
    ts = time.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00", time.gmtime())
    return (f"{ts} srv dovecot: {svc}-login: Disconnected: Connection closed (auth failed, {n} attempts "
            f"in 10 secs): user=<{user}>, method=PLAIN, rip={ip}, lip=192.0.2.1, "
            f"session=<s{dove.i}>\n")  # type: ignore[attr-defined]


dove.i = 0  # type: ignore[attr-defined]


def sshd(ip: str) -> str:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00", time.gmtime())
    return f"{ts} srv sshd[{os.getpid()}]: Failed password for root from {ip} port 40000 ssh2\n"


def wait_for(cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Watch:
    """One ``popwatch watch --no-tui`` in the server namespace, and its files."""

    def __init__(self, lab: Lab, d: Path, config: str, backend: str = "nft") -> None:
        self.lab, self.d = lab, d
        self.backend = backend
        self.log = d / "mail.log"
        self.events = d / "events.jsonl"
        self.state = d / "state"
        self.cfg = d / "popwatch.toml"
        self.cfg.write_text(config)
        self.log.touch()
        self.proc: subprocess.Popen[str] | None = None

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "popwatch", "--backend", self.backend, "--config", str(self.cfg),
                "--state-dir", str(self.state), *args]

    def start(self, *, wait: bool = True) -> subprocess.Popen[str]:
        self.events.touch()
        argv = ["env", f"SSH_CONNECTION={SSH_ADMIN} 50022 192.0.2.1 22",
                *self.argv("watch", "--no-tui", "--log", str(self.log), "--ports", "110,22",
                           "--events", str(self.events))]
        self.proc = self.lab.popen(self.lab.server, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if wait:  # the chain is in place and the log is followed: a first event goes through
            try:
                wait_for(lambda: self.chain_exists(), timeout=40, what="popwatch's chain")
                n = self.n_events()

                def probe() -> bool:  # the tail starts at the end of the file: repeat the probe
                    if self.n_events() > n:
                        return True
                    self.write(sshd("198.51.100.250"))
                    time.sleep(0.2)
                    return False
                wait_for(probe, what="popwatch to follow the log")
            except AssertionError as e:
                if self.proc.poll() is None:
                    os.kill(self.proc.pid, signal.SIGTERM)
                try:
                    _, err = self.proc.communicate(timeout=10)
                finally:
                    self.lab.stop(self.proc)
                raise AssertionError(f"{e}; popwatch exit {self.proc.returncode} said: {err}") from None
        return self.proc

    def chain_exists(self) -> bool:
        if self.backend == "nftables":
            argv = ["nft", "list", "chain", "inet", "popwatch", "input"]
        else:
            argv = ["iptables-nft", "-w", "5", "-S", "POPWATCH"]
        return self.lab.run(self.lab.server, argv, check=False).returncode == 0

    def write(self, *lines: str) -> None:
        with open(self.log, "a") as f:
            f.write("".join(lines))

    def n_events(self) -> int:
        try:
            return len(self.events.read_text().splitlines())
        except FileNotFoundError:
            return 0

    def members(self, name: str = "popwatch4") -> dict[str, int]:
        cp = self.lab.run(self.lab.server, ["ipset", "list", name], check=False)
        body = cp.stdout.split("Members:", 1)[1] if "Members:" in cp.stdout else ""
        out = {}
        for line in body.splitlines():
            parts = line.split()
            if parts:
                out[parts[0]] = int(parts[2]) if len(parts) > 2 and parts[1] == "timeout" else 0
        return out

    def settle(self, marker: str) -> None:
        """Wait until everything written so far was processed: a marker address crosses the
        threshold last; the firewall thread is FIFO, so earlier decisions are done by then."""
        self.write(dove(marker, 1000))
        wait_for(lambda: marker in self.members(), what=f"marker {marker} banned")

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.lab.stop(self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.lab.stop(self.proc)

    def stop_and_read(self) -> str:
        """SIGTERM (a clean shutdown), then what it said on stderr."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=30)
        finally:
            self.lab.stop(self.proc)
        return err or ""

    def saved(self) -> set[str]:
        try:
            return {b["ip"] for b in json.loads((self.state / "bans.json").read_text())["bans"]}
        except (FileNotFoundError, ValueError):
            return set()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cp = self.lab.run(self.lab.server, ["env", f"PYTHONPATH={Path(__file__).resolve().parents[2]}",
                                            *self.argv(*args)], check=False)
        if check and cp.returncode != 0:
            raise AssertionError(f"popwatch {' '.join(args)}: exit {cp.returncode}: {cp.stderr}")
        return cp

    def audit(self) -> list[dict[str, Any]]:
        try:
            return [json.loads(l) for l in (self.state / "audit.jsonl").read_text().splitlines()]
        except FileNotFoundError:
            return []


CONFIG = f'''
[policy]
maxretry = 5
findtime = "10m"
bantime = "1h"
allow = ["{OFFICE}"]
'''


@pytest.fixture(scope="module", autouse=True)
def _stale() -> None:
    """Namespaces a crashed earlier run of this module left behind (its pid is gone)."""
    if os.geteuid() == 0:
        cleanup_stale("pwpol-")


@pytest.fixture
def lab() -> Iterator[Lab]:
    need_tools("ip", "iptables-nft", "ipset", "env")
    with Lab(prefix="pwpol", clients=2) as lab:
        yield lab


@pytest.fixture
def watch(lab: Lab, tmp_path: Path) -> Iterator[Watch]:
    w = Watch(lab, tmp_path, CONFIG)
    yield w
    w.stop()


def test_auto_ban_after_maxretry_drops_the_attacker(lab: Lab, watch: Watch) -> None:
    watch.cfg.write_text(CONFIG.replace("[policy]", "[policy]\nauto_ban = true"))
    watch.start()
    lab.listen(ports=(110,))
    assert lab.burst("c0", 110, 3).ok == 3                 # before: connections get through
    watch.write(dove(ATTACKER, 2), dove(ATTACKER, 2))      # 4 attempts: below maxretry 5
    watch.settle("203.0.113.200")
    assert ATTACKER not in watch.members()
    watch.write(dove(ATTACKER, 1))                         # the 5th attempt crosses
    wait_for(lambda: ATTACKER in watch.members(), what="auto-ban")
    assert 3500 < watch.members()[ATTACKER] <= 3600
    r = lab.burst("c0", 110, 3)
    assert r.ok == 0 and r.timeout == 3                    # the kernel drops the attacker's SYNs
    assert lab.burst("c1", 110, 2).ok == 2                 # others still get through
    [a] = [a for a in watch.audit() if a["action"] == "ban" and a["target"] == ATTACKER]
    assert a["origin"] == "auto" and "5 failed attempts within 10m" in a["reason"]
    assert any(ATTACKER in c for c in a["change"])


def test_protected_addresses_never_banned(lab: Lab, watch: Watch) -> None:
    watch.cfg.write_text(CONFIG.replace("[policy]", "[policy]\nauto_ban = true"))
    watch.start()
    watch.write(dove(SSH_ADMIN, 100), dove(f"::ffff:{SSH_ADMIN}", 100),     # the admin's SSH client
                dove("198.51.100.7", 100), dove("::ffff:c633:6407", 100),   # allow-listed, hex mapped
                dove("127.0.0.1", 100), dove("192.0.2.1", 100),             # loopback, own address
                *[sshd(SSH_ADMIN) for _ in range(20)])
    watch.settle("203.0.113.201")
    assert set(watch.members()) == {"203.0.113.201"}
    # the CLI path refuses too, with exit 4, and the kernel stays as it was
    for target in (SSH_ADMIN, "198.51.100.7", "::ffff:198.51.100.8", "198.51.100.0/25"):
        cp = lab.run(lab.server, ["env", f"SSH_CONNECTION={SSH_ADMIN} 50022 192.0.2.1 22",
                                  "env", f"PYTHONPATH={Path(__file__).resolve().parents[2]}",
                                  *watch.argv("ban", target, *(["--net"] if "/" in target else []))],
                     check=False)
        assert cp.returncode == 4 and "refused" in cp.stderr, (target, cp.stderr)
    assert set(watch.members()) == {"203.0.113.201"}


def test_expiry_and_recidive_growth_in_the_kernel(lab: Lab, watch: Watch) -> None:
    watch.cfg.write_text('[policy]\nauto_ban = true\nmaxretry = 2\nbantime = "2s"\n'
                         'recidive_factor = 4\nrecidive_max = "1h"\n')
    watch.start()
    timeouts = []
    for round_ in range(3):
        watch.write(dove(ATTACKER, 2))
        t = wait_for(lambda: watch.members().get(ATTACKER), what=f"ban #{round_ + 1}")
        timeouts.append(t)
        if round_ < 2:   # the kernel lifts it by itself
            wait_for(lambda: ATTACKER not in watch.members(), timeout=15, what="expiry")
    assert timeouts[0] <= 2 and 2 < timeouts[1] <= 8 and 8 < timeouts[2] <= 32
    bans = [a for a in watch.audit() if a["action"] == "ban"]
    assert [b["ttl"] for b in bans] == [2, 8, 32]
    assert "recidive" in bans[2]["reason"] and "ban #3" in bans[2]["reason"]


def test_restart_after_kill9_restores_exactly_the_active_bans(lab: Lab, watch: Watch) -> None:
    watch.cfg.write_text(CONFIG.replace("[policy]", "[policy]\nauto_ban = true")
                         + '\n[policy.services.ssh]\nmaxretry = 2\nbantime = "3s"\n')
    watch.start()
    rules_before = lab.run(lab.server, ["iptables-nft-save"]).stdout.count("-A ")
    watch.write(dove(ATTACKER, 5), dove("2001:db8:1::10", 5), sshd("203.0.113.11"), sshd("203.0.113.11"))
    wait_for(lambda: {ATTACKER, "203.0.113.11"} <= set(watch.members()), what="bans")
    wait_for(lambda: "2001:db8:1::/64" in watch.members("popwatch6"), what="v6 ban")
    wait_for(lambda: watch.saved() >= {ATTACKER, "2001:db8:1::10", "203.0.113.11"}, what="bans.json")
    watch.kill9()
    # a reboot empties the sets; the short ssh ban runs out meanwhile; someone adds an entry
    lab.run(lab.server, ["ipset", "flush", "popwatch4"])
    lab.run(lab.server, ["ipset", "flush", "popwatch6"])
    lab.run(lab.server, ["ipset", "add", "popwatch4", "203.0.113.77", "timeout", "900"])
    # wait (popwatch down) until the short ssh ban's saved expiry has passed: no fixed sleep
    saved = json.loads((watch.state / "bans.json").read_text())["bans"]
    ends = [b["expires"] for b in saved if b["ip"] == "203.0.113.11"]
    assert ends and ends[0] is not None, saved
    wait_for(lambda: time.time() > ends[0] + 0.2, timeout=30, what="the ssh ban to run out")
    t_kill = time.time()
    watch.start()
    wait_for(lambda: ATTACKER in watch.members(), what="restore")
    assert set(watch.members()) == {ATTACKER, "203.0.113.77", "198.51.100.250"} - {"198.51.100.250"}
    assert set(watch.members("popwatch6")) == {"2001:db8:1::/64"}
    assert watch.members()[ATTACKER] < 3600 - (time.time() - t_kill) + 1   # the time left, not anew
    assert lab.run(lab.server, ["iptables-nft-save"]).stdout.count("-A ") == rules_before
    wait_for(lambda: watch.saved() == {ATTACKER, "2001:db8:1::10", "203.0.113.77"}, what="bans.json")
    # a plain kill -9 and restart (no reboot): bans adopted, nothing duplicated
    watch.kill9()
    watch.start()
    assert set(watch.members()) == {ATTACKER, "203.0.113.77"}
    assert lab.run(lab.server, ["iptables-nft-save"]).stdout.count("-A ") == rules_before
    acts = [(a["action"], a["target"]) for a in watch.audit() if a["origin"] == "reconcile"]
    assert ("restore", ATTACKER) in acts and ("expire", "203.0.113.11") in acts


def test_second_instance_refused(lab: Lab, watch: Watch) -> None:
    first = watch.start()
    second = Watch(lab, watch.d, CONFIG)
    p = second.start(wait=False)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 6  # busy (popwatch.exitcodes)
    assert "already running" in err and f"pid {first.pid}" in err and "--state-dir" in err
    assert first.poll() is None                            # the first one is unaffected
    watch.write(dove(ATTACKER, 1))
    n = watch.n_events()
    watch.write(dove(ATTACKER, 1))
    wait_for(lambda: watch.n_events() > n, what="first instance still working")


def test_corrupt_state_file_is_survived(lab: Lab, watch: Watch) -> None:
    watch.state.mkdir(mode=0o700)
    (watch.state / "bans.json").write_bytes(b'{"version": 1, "bans": [{"ip": "203.0.113.5", "crea')
    (watch.state / "successes.json").write_bytes(b"\x00\x01garbage")
    watch.cfg.write_text(CONFIG.replace("[policy]", "[policy]\nauto_ban = true"))
    proc = watch.start()
    assert proc.poll() is None
    assert list(watch.state.glob("bans.json.corrupt-*")) and list(watch.state.glob("successes.json.corrupt-*"))
    watch.write(dove(ATTACKER, 5))
    wait_for(lambda: ATTACKER in watch.members(), what="auto-ban after a corrupt state file")
    wait_for(lambda: watch.saved() == {ATTACKER}, what="a fresh bans.json")
    err = watch.stop_and_read()
    assert "bans.json was corrupt" in err and "successes.json was corrupt" in err and "set aside" in err
    assert proc.returncode == 0                            # and a clean exit on SIGTERM


def test_undo_from_the_cli(lab: Lab, watch: Watch) -> None:
    watch.start()
    watch.stop()                                           # chain and sets stay installed
    watch.cli("ban", "203.0.113.50", "--ttl", "1h", "--reason", "test")
    assert "203.0.113.50" in watch.members()
    watch.cli("unban", "203.0.113.50")
    assert "203.0.113.50" not in watch.members()
    dry = watch.cli("--dry-run", "undo")
    assert "ipset" in dry.stdout and "203.0.113.50" in dry.stdout
    assert "203.0.113.50" not in watch.members()           # dry run: nothing applied
    watch.cli("undo")                                      # the unban undone: banned again,
    left = watch.members()["203.0.113.50"]                 # with the time it had left
    assert 3000 < left < 3600
    watch.cli("undo")                                      # the ban undone
    assert "203.0.113.50" not in watch.members()
    cp = watch.cli("undo", check=False)
    assert cp.returncode == 5 and "nothing to undo" in cp.stderr
    undos = [a for a in watch.audit() if a.get("undoes")]
    assert len(undos) >= 2


def test_dry_run_watch_shows_exact_commands_and_applies_nothing(lab: Lab, watch: Watch) -> None:
    before = lab.run(lab.server, ["iptables-nft-save"]).stdout
    watch.cfg.write_text(CONFIG.replace("[policy]", "[policy]\nauto_ban = true"))
    argv = ["env", f"SSH_CONNECTION={SSH_ADMIN} 50022 192.0.2.1 22",
            *watch.argv("--dry-run", "watch", "--no-tui", "--log", str(watch.log), "--ports", "110",
                        "--events", str(watch.events))]
    errf = watch.d / "dry-run.err"
    with open(errf, "w") as fh:
        p = lab.popen(lab.server, argv, stdout=subprocess.DEVNULL, stderr=fh)
    n = watch.n_events()

    def probe() -> bool:
        if watch.n_events() > n:
            return True
        watch.write(dove(ATTACKER, 10))
        time.sleep(0.3)
        return False
    wait_for(probe, timeout=40, what="the dry run to follow the log")
    wait_for(lambda: f"would ban {ATTACKER}" in errf.read_text(), timeout=30, what="the dry-run ban")
    os.kill(p.pid, signal.SIGTERM)
    p.wait(timeout=30)
    lab.stop(p)
    err = errf.read_text()
    assert "iptables-nft-restore" in err and "POPWATCH" in err            # the install it would do
    assert f"would ban {ATTACKER}" in err and f"add popwatch4 {ATTACKER}" in err
    assert lab.run(lab.server, ["iptables-nft-save"]).stdout == before   # nothing applied
    assert lab.run(lab.server, ["ipset", "list", "-n"], check=False).stdout.strip() == ""
    assert not (watch.state / "audit.jsonl").exists() and not (watch.state / "bans.json").exists()
