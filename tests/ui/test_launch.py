"""README claims about the program a user launches (not the app factory): a real process in a
pseudo-terminal (tests/ui/ptyterm.py), keys typed, the screen read.

* ``popwatch demo`` starts, shows the attack, ``q`` exits 0.
* ``sudo popwatch`` (as root, in a lab network namespace so the host's firewall is never
  touched): the log's attacker shows up, ``b`` confirms with the exact command, ``y`` bans it
  in the kernel set, ``q`` exits 0.
* Without root popwatch runs read-only and "the acting keys say why": as uid 65534 (without
  CAP_NET_ADMIN) and with ``--backend none``, ``b`` explains instead of banning.
* ``--dry-run`` in the TUI shows the exact commands (the same the CLI's ``--dry-run`` prints)
  and applies nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import need_tools
from tests.netns.nslab import Lab

from .ptyterm import REPO, PtyProc

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs a Linux pty")

ATTACKER = "203.0.113.9"


def attack_log(d: Path) -> Path:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00", time.gmtime())
    log = d / "auth.log"
    log.write_text("".join(
        f"{ts} srv dovecot: pop3-login: Disconnected: Connection closed (auth failed, 12 attempts in 30 secs): "
        f"user=<{u}>, method=PLAIN, rip={ATTACKER}, lip=192.0.2.1, session=<s{i}>\n"
        for i, u in enumerate(["root", "admin", "info"])))
    os.chmod(d, 0o755)
    os.chmod(log, 0o644)
    return log


def popwatch(*args: str) -> list[str]:
    return [sys.executable, "-m", "popwatch", *args]


# what `sudo popwatch` picks on this (nf_tables) host is the native nftables backend; the
# iptables-nft + ipset backend is checked too
BACKENDS = {"auto": f"ban4 {{ {ATTACKER}", "nft": f"popwatch4 {ATTACKER}"}


def members(lab: Lab, backend: str = "nft") -> list[str]:
    if backend == "nft":
        out = lab.run(lab.server, ["ipset", "list", "popwatch4"], check=False).stdout
        return out.split("Members:", 1)[1].split() if "Members:" in out else []
    out = lab.run(lab.server, ["nft", "list", "set", "inet", "popwatch", "ban4"], check=False).stdout
    return re.findall(r"(\d+\.\d+\.\d+\.\d+)", out.split("elements", 1)[1]) if "elements" in out else []


@pytest.fixture
def lab() -> Iterator[Lab]:
    need_tools("ip", "iptables-nft", "ipset")
    with Lab(prefix="pwui", clients=0) as lab:
        yield lab


def test_popwatch_demo_in_a_terminal() -> None:
    with PtyProc(popwatch("demo")) as p:
        p.expect("mail1 (demo)", "attackers:", "ports:", "203.0.113.66", timeout=60)
        p.send("?")
        p.expect("popwatch keys", "Unban:")  # the help screen lists the keys
        p.send("?")                           # closes it again
        p.expect("b Ban")                     # the main footer is back
        p.send("q")
        assert p.wait() == 0


@pytest.mark.netns
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_sudo_popwatch_in_a_terminal_bans_with_one_key(lab: Lab, tmp_path: Path, backend: str) -> None:
    log = attack_log(tmp_path)
    argv = ["ip", "netns", "exec", lab.server,
            *popwatch("--backend", backend, "--state-dir", str(tmp_path / "state"), "--log", str(log),
                      "--from-start")]
    with PtyProc(argv) as p:
        p.expect(ATTACKER, "36", timeout=60)       # its row: 3 lines x 12 failures
        p.send("b")
        p.expect(f"Ban {ATTACKER}?", "will run:", BACKENDS[backend])
        assert members(lab, backend) == []         # nothing yet: the confirm comes first
        p.send("y")
        deadline = time.monotonic() + 30
        while ATTACKER not in members(lab, backend):
            assert time.monotonic() < deadline, f"not banned in the kernel: {p.screen()[-1500:]!r}"
            time.sleep(0.1)
        p.send("q")
        assert p.wait() == 0


@pytest.mark.parametrize("how", ["non-root", "backend-none"])
def test_read_only_without_root_the_keys_say_why(tmp_path: Path, how: str) -> None:
    log = attack_log(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    argv = popwatch("--state-dir", str(state), "--log", str(log), "--from-start")
    # one word each (a notification wraps its text anywhere between words)
    want = "CAP_NET_ADMIN"       # "... not running as root (needs CAP_NET_ADMIN) ... run it with sudo"
    if how == "backend-none":
        argv = popwatch("--backend", "none", "--state-dir", str(state), "--log", str(log), "--from-start")
        want = "'none'"            # "... the firewall backend is 'none' (monitor only) ..."
    elif os.geteuid() == 0:
        # an ordinary user: uid/gid 65534, no capabilities but reading files (this interpreter
        # and the checkout may sit under a 0700 home)
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to run as an ordinary user"
        os.chown(state, 65534, 65534)
        argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
                "--inh-caps=-all,+dac_read_search", "--ambient-caps=+dac_read_search",
                "--bounding-set=-all,+dac_read_search", *argv]
    with PtyProc(argv, env={"HOME": str(tmp_path)}) as p:
        p.expect(ATTACKER, "READ-ONLY" if how == "non-root" else ATTACKER, timeout=60)
        p.send("b")
        p.expect("read-only:", want)                 # the key says why instead of banning
        p.send("+")                                   # a limit key too
        p.expect("read-only:", want)
        p.send("q")
        assert p.wait() == 0


@pytest.mark.netns
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_dry_run_tui_shows_the_exact_commands_and_applies_nothing(lab: Lab, tmp_path: Path,
                                                                   backend: str) -> None:
    log = attack_log(tmp_path)
    state = tmp_path / "state"
    env = ["env", f"PYTHONPATH={REPO}"]
    cli = lab.run(lab.server, [*env, *popwatch("--backend", backend, "--dry-run", "--state-dir", str(state),
                                               "ban", ATTACKER, "--ttl", "1h")], check=False)
    assert cli.returncode == 0, cli.stderr
    exact = [ln.strip() for ln in cli.stdout.splitlines() if BACKENDS[backend] in ln]
    assert exact, cli.stdout
    before = lab.run(lab.server, ["iptables-nft-save"]).stdout
    argv = ["ip", "netns", "exec", lab.server,
            *popwatch("--backend", backend, "--dry-run", "--state-dir", str(state), "--log", str(log),
                      "--from-start")]
    with PtyProc(argv) as p:
        p.expect(ATTACKER, "DRY-RUN", timeout=60)
        p.send("b")
        p.expect(f"Ban {ATTACKER}?", "nothing will be applied", *exact)
        p.send("y")
        p.expect(ATTACKER)
        p.send("q")
        assert p.wait() == 0
    assert members(lab, backend) == [] and lab.run(lab.server, ["ipset", "list", "-n"], check=False).stdout.strip() == ""
    assert "popwatch" not in lab.run(lab.server, ["nft", "list", "tables"]).stdout
    assert lab.run(lab.server, ["iptables-nft-save"]).stdout == before
    assert not (state / "bans.json").exists()
