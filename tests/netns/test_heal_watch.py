"""A running ``popwatch watch --no-tui`` puts its rules back after the admin's own firewall tools
removed them, in a lab namespace, with the real tools:

* ``iptables-restore`` of a saved ruleset, ``iptables -F``, ``nft flush ruleset``;
* ``ufw enable`` / ``ufw reload`` (the real ``ufw`` package);
* ``netfilter-persistent reload`` (the real netfilter-persistent + iptables-persistent scripts,
  unpacked from their .debs: ufw's package "Breaks" both, so they cannot be installed side by
  side on one host);
* docker restarting its chains, simulated with docker's chain layout through iptables (docker's
  daemon cannot run inside these test namespaces: it needs its own cgroup and storage setup);
  docker only rewrites FORWARD/DOCKER* chains and the nat table, so popwatch must stay quiet;
* firewalld is not run: it needs the system D-Bus (a bus per namespace would mean running a
  second dbus-daemon and bind-mounting its socket over the host's) and it manages host-wide
  state beyond one network namespace (sysctls, modules, NetworkManager zones). What its reload
  does to other rules depends on version and backend: it deletes only its own tables (recent
  nftables backend), flushes the whole ruleset (old nftables backend) or flushes every
  iptables table (iptables backend); the ``nft flush ruleset``, ``iptables -F`` and
  ``iptables-restore`` cases cover each of those effects on popwatch's rules.

Every tool runs inside ``ip netns exec SRV unshare -m`` with a private overlay of /etc, so
neither the host's /etc nor its firewall is touched. Each case asserts: the banned client's
connections are refused again within the deadline, another client still gets through, the
admin's own rules (one the test added, ufw's chains) are still there, and the audit log and
``status --json`` say what happened. After ``popwatch uninstall`` popwatch stays out."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import need_tools

from .nslab import Lab, cleanup_stale
from .test_policy_netns import ATTACKER, CONFIG, Watch, dove, wait_for

pytestmark = pytest.mark.netns

#: the promise is one counter poll (1 s) plus the repair; the probe itself takes up to 0.5 s
DEADLINE = 4.0
ADMIN_RULE = ["-A", "INPUT", "-s", "198.51.100.77/32", "-p", "tcp", "--dport", "8080", "-j", "ACCEPT"]
SAVED = ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
         "-A INPUT -s 198.51.100.77/32 -p tcp -m tcp --dport 8080 -j ACCEPT\nCOMMIT\n")
SAVED6 = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"


@pytest.fixture(scope="module", autouse=True)
def _stale() -> None:
    cleanup_stale("pwheal-")


@pytest.fixture
def lab() -> Iterator[Lab]:
    need_tools("ip", "iptables-nft", "ipset", "unshare", "nft")
    with Lab(prefix="pwheal", clients=2) as lab:
        yield lab


@pytest.fixture
def watch(lab: Lab, tmp_path: Path) -> Iterator[Watch]:
    w = Watch(lab, tmp_path, CONFIG.replace("[policy]", "[policy]\nauto_ban = true"))
    yield w
    w.stop()


def in_private_etc(lab: Lab, tmp: Path, script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (sh) in the server namespace with a private, writable overlay of /etc."""
    up, work = tmp / "etc-upper", tmp / "etc-work"
    up.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    pre = (f"mount --make-rprivate / && mount -t overlay overlay -o lowerdir=/etc,upperdir={up},"
           f"workdir={work} /etc && ")
    cp = lab.run(lab.server, ["unshare", "-m", "sh", "-ec", pre + script], check=False, timeout=timeout)
    if cp.returncode != 0:
        raise AssertionError(f"{script!r}: exit {cp.returncode}: {cp.stdout[-800:]} {cp.stderr[-800:]}")
    return cp


def banned_and_watched(lab: Lab, watch: Watch) -> None:
    watch.start()
    lab.run(lab.server, ["iptables-nft", "-w", "5", *ADMIN_RULE])
    lab.listen(ports=(110,))
    watch.write(dove(ATTACKER, 5))
    wait_for(lambda: ATTACKER in watch.members(), what="auto-ban")
    assert lab.burst("c0", 110, 1).timeout == 1


def refused_again(lab: Lab, t0: float) -> float:
    """Probe from the banned client until its connection is refused; seconds since ``t0``."""
    let_in = 0
    while True:
        r = lab.burst("c0", 110, 1, timeout=0.4)
        if r.timeout == 1:
            return time.monotonic() - t0
        let_in += r.ok
        if time.monotonic() - t0 > DEADLINE:
            raise AssertionError(f"the ban was not enforced again within {DEADLINE}s "
                                 f"({let_in} connections from the banned address got through)")


def heal_records(watch: Watch) -> list[dict[str, object]]:
    return [a for a in watch.audit() if a["action"] == "heal"]


def admin_rule_kept(lab: Lab) -> bool:
    return "198.51.100.77/32" in lab.run(lab.server, ["iptables-nft", "-w", "5", "-S", "INPUT"]).stdout


def check_healed(lab: Lab, watch: Watch, t0: float, n_heals: int = 1) -> float:
    took = refused_again(lab, t0)
    print(f"\nban enforced again {took:.2f}s after the tool ran (probe included)")
    assert lab.burst("c1", 110, 1).ok == 1                  # nobody else locked out
    wait_for(lambda: len(heal_records(watch)) >= n_heals, timeout=5, what="heal audit record")
    rec = heal_records(watch)[-1]
    assert rec["origin"] == "heal" and "removed by another tool" in str(rec["reason"]) and rec["change"]
    st = json.loads(watch.cli("status", "--json").stdout)
    assert any("another tool removed popwatch's rules" in w for w in st["warnings"]), st["warnings"]
    return took


@pytest.mark.parametrize("tool", ["iptables-restore", "iptables -F", "nft flush ruleset"])
def test_watch_puts_rules_back(lab: Lab, watch: Watch, tmp_path: Path, tool: str) -> None:
    banned_and_watched(lab, watch)
    t0 = time.monotonic()
    if tool == "iptables-restore":
        lab.run(lab.server, ["iptables-nft-restore", "-w", "5"], input=SAVED)
        lab.run(lab.server, ["ip6tables-nft-restore", "-w", "5"], input=SAVED6)
    elif tool == "iptables -F":
        lab.run(lab.server, ["iptables-nft", "-w", "5", "-F"])
        lab.run(lab.server, ["iptables-nft", "-w", "5", *ADMIN_RULE])
    else:
        lab.run(lab.server, ["nft", "flush", "ruleset"])
        lab.run(lab.server, ["iptables-nft", "-w", "5", *ADMIN_RULE])
    check_healed(lab, watch, t0)
    assert admin_rule_kept(lab)
    assert ATTACKER in watch.members()                      # the sets survived: nothing re-added


def test_lost_sets_refilled_from_state(lab: Lab, watch: Watch) -> None:
    banned_and_watched(lab, watch)
    assert watch.proc is not None
    # popwatch paused (SIGSTOP, by PID) while the admin restores a ruleset and then destroys
    # the unreferenced sets: otherwise it would put its rules back before the sets could go
    os.kill(watch.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        lab.run(lab.server, ["iptables-nft-restore", "-w", "5"], input=SAVED)
        lab.run(lab.server, ["ip6tables-nft-restore", "-w", "5"], input=SAVED6)
        for s in ("popwatch4", "popwatch6", "popwatchx4", "popwatchx6"):
            lab.run(lab.server, ["ipset", "destroy", s])
    finally:
        os.kill(watch.proc.pid, signal.SIGCONT)
    check_healed(lab, watch, t0)
    assert ATTACKER in watch.members()
    change = " ".join(map(str, heal_records(watch)[-1]["change"]))
    assert "recreated set" in change and "restored 1 ban from popwatch's state" in change, change


def test_status_warns_while_rules_are_missing(lab: Lab, watch: Watch) -> None:
    """No popwatch running: ``status --json`` says what is missing."""
    assert watch.cli("ban", ATTACKER).returncode == 0
    st = json.loads(watch.cli("status", "--json").stdout)
    assert not any("not all in place" in w for w in st["warnings"]), st["warnings"]
    lab.run(lab.server, ["iptables-nft-restore", "-w", "5"], input=SAVED)
    st = json.loads(watch.cli("status", "--json").stdout)
    [w] = [w for w in st["warnings"] if "not all in place" in w]
    assert "IPv4 chain POPWATCH gone" in w and "popwatch watch" in w


def test_ufw_enable_and_reload(lab: Lab, watch: Watch, tmp_path: Path) -> None:
    need_tools("ufw")
    banned_and_watched(lab, watch)
    # the admin's ufw: allow the mail port, then enable; sysctl.conf emptied in the private copy
    # so that ufw sets nothing outside the namespace
    t0 = time.monotonic()
    in_private_etc(lab, tmp_path, ": > /etc/ufw/sysctl.conf && ufw allow 110/tcp >/dev/null && "
                   "ufw allow 22/tcp >/dev/null && ufw --force enable")
    refused_again(lab, t0)
    assert lab.burst("c1", 110, 1).ok == 1                  # ufw's allow and popwatch's ban both work
    rules = lab.run(lab.server, ["iptables-nft", "-w", "5", "-S"]).stdout
    assert "-A ufw-user-input -p tcp -m tcp --dport 110 -j ACCEPT" in rules and admin_rule_kept(lab)
    assert rules.index("-A INPUT -j POPWATCH") < rules.index("-A INPUT -j ufw-before-logging-input")
    t0 = time.monotonic()
    in_private_etc(lab, tmp_path, "ufw reload")               # ufw's default leaves INPUT's other jumps
    assert refused_again(lab, t0) < DEADLINE
    # with MANAGE_BUILTINS=yes ufw flushes the built-in chains on reload: popwatch's jump goes
    in_private_etc(lab, tmp_path, "sed -i 's/^MANAGE_BUILTINS=.*/MANAGE_BUILTINS=yes/' /etc/default/ufw")
    t0 = time.monotonic()
    in_private_etc(lab, tmp_path, "ufw reload")
    check_healed(lab, watch, t0)
    rules = lab.run(lab.server, ["iptables-nft", "-w", "5", "-S"]).stdout
    assert "-A ufw-user-input -p tcp -m tcp --dport 110 -j ACCEPT" in rules
    inp = [l for l in rules.splitlines() if l.startswith("-A INPUT ")]
    assert inp[0] == "-A INPUT -j POPWATCH" and len(inp) > 1   # ufw flushed INPUT (and the test's
    assert all("-j ufw-" in l for l in inp[1:])                 # rule with it); only the jump came back
    assert "jump from INPUT gone" in str(heal_records(watch)[-1]["reason"])


def enforced(lab: Lab) -> bool:
    return lab.burst("c0", 110, 1, timeout=0.4).timeout == 1


def _debs(tmp: Path) -> list[str]:
    """The two packages' .debs: from apt's cache, else fetched with ``apt-get download``."""
    found = []
    for name in ("netfilter-persistent", "iptables-persistent"):
        hits = sorted(glob.glob(f"/var/cache/apt/archives/{name}_*_all.deb"))
        if not hits:
            subprocess.run(["apt-get", "download", "-q", name], check=False, cwd=tmp, capture_output=True,
                           timeout=120)
            hits = sorted(glob.glob(str(tmp / f"{name}_*_all.deb")))
        if not hits:
            raise AssertionError(f"cannot get {name}'s .deb (apt-get download {name} failed)")
        found.append(hits[-1])
    return found


def test_netfilter_persistent_reload(lab: Lab, watch: Watch, tmp_path: Path) -> None:
    need_tools("dpkg-deb", "run-parts")
    root = tmp_path / "nfp"
    for deb in _debs(tmp_path):
        subprocess.run(["dpkg-deb", "-x", deb, str(root)], check=True, timeout=60)
    banned_and_watched(lab, watch)
    saved = tmp_path / "rules.v4"
    saved.write_text(SAVED)
    (tmp_path / "rules.v6").write_text(SAVED6)
    t0 = time.monotonic()
    # the package's own config hook: /etc/default/netfilter-persistent (sourced by the script)
    # points PLUGINS at the unpacked plugins; the plugins restore /etc/iptables/rules.v4 and v6
    in_private_etc(lab, tmp_path,
                   f"mkdir -p /etc/iptables && cp {saved} /etc/iptables/rules.v4 && "
                   f"cp {tmp_path / 'rules.v6'} /etc/iptables/rules.v6 && "
                   f"echo 'PLUGINS={root}/usr/share/netfilter-persistent/plugins.d' "
                   f"> /etc/default/netfilter-persistent && "
                   f"{root}/usr/sbin/netfilter-persistent reload")
    check_healed(lab, watch, t0)
    assert admin_rule_kept(lab)


def test_docker_chain_restart_leaves_popwatch_alone(lab: Lab, watch: Watch) -> None:
    banned_and_watched(lab, watch)
    ipt = ["iptables-nft", "-w", "5"]
    # what dockerd does on (re)start: its chains recreated, FORWARD rewired, nat rules
    for args in (["-N", "DOCKER"], ["-N", "DOCKER-USER"], ["-N", "DOCKER-ISOLATION-STAGE-1"],
                 ["-A", "DOCKER-USER", "-j", "RETURN"], ["-A", "DOCKER-ISOLATION-STAGE-1", "-j", "RETURN"],
                 ["-I", "FORWARD", "-j", "DOCKER-USER"], ["-I", "FORWARD", "2", "-j", "DOCKER-ISOLATION-STAGE-1"],
                 ["-t", "nat", "-N", "DOCKER"], ["-t", "nat", "-A", "PREROUTING", "-m", "addrtype",
                                                 "--dst-type", "LOCAL", "-j", "DOCKER"],
                 ["-F", "DOCKER-USER"], ["-A", "DOCKER-USER", "-j", "RETURN"],
                 ["-F", "FORWARD"], ["-A", "FORWARD", "-j", "DOCKER-USER"]):
        lab.run(lab.server, [*ipt, *args])
    assert enforced(lab)
    # a positive marker: now remove popwatch's jump; the one repair that follows must name only
    # that (had docker's rewiring looked like damage, it would be listed, or repaired earlier)
    t0 = time.monotonic()
    lab.run(lab.server, [*ipt, "-D", "INPUT", "-j", "POPWATCH"])
    check_healed(lab, watch, t0)
    [rec] = heal_records(watch)
    assert "jump from INPUT gone" in str(rec["reason"]) and "chain" not in str(rec["reason"])
    assert "-A FORWARD -j DOCKER-USER" in lab.run(lab.server, [*ipt, "-S", "FORWARD"]).stdout


def test_stays_out_after_uninstall(lab: Lab, watch: Watch) -> None:
    banned_and_watched(lab, watch)
    watch.cli("uninstall")
    assert (watch.state / "uninstalled").exists()
    assert lab.burst("c0", 110, 1).ok == 1                  # the admin removed popwatch: it is gone
    # popwatch says it stands down (a positive marker), then never puts anything back
    wait_for(lambda: any(a["action"] == "heal-stop" for a in watch.audit()), timeout=5,
             what="popwatch to notice the uninstall")
    assert not watch.chain_exists()
    assert heal_records(watch) == []
    assert lab.burst("c0", 110, 1).ok == 1
    st = json.loads(watch.cli("status", "--json").stdout)
    assert not any("not all in place" in w for w in st["warnings"])


def test_nftables_table_flushed_is_put_back_at_once(lab: Lab, tmp_path: Path) -> None:
    """The native backend: `nft flush ruleset` deletes table inet popwatch; nf_tables' change
    event wakes the check (no wait for the poll) and the table comes back with the ban."""
    w = Watch(lab, tmp_path, CONFIG.replace("[policy]", "[policy]\nauto_ban = true"), backend="nftables")
    try:
        w.start()
        lab.listen(ports=(110,))
        w.write(dove(ATTACKER, 5))

        def banned() -> bool:
            out = lab.run(lab.server, ["nft", "list", "set", "inet", "popwatch", "ban4"], check=False).stdout
            return ATTACKER in out
        wait_for(banned, what="auto-ban into table inet popwatch")
        assert lab.burst("c0", 110, 1).timeout == 1
        t0 = time.monotonic()
        lab.run(lab.server, ["nft", "flush", "ruleset"])
        lab.run(lab.server, ["iptables-nft", "-w", "5", *ADMIN_RULE])
        check_healed(lab, w, t0)
        assert banned() and admin_rule_kept(lab)
        assert lab.run(lab.server, ["ipset", "list", "-n"], check=False).stdout.strip() == ""
    finally:
        w.stop()


#: how each backend's ban set is emptied by hand, rules left in place
FLUSH_SET = {"nft": [["ipset", "flush", "popwatch4"]],
             "nftables": [["nft", "flush", "set", "inet", "popwatch", "ban4"]]}


@pytest.mark.parametrize("backend", ["nft", "nftables"])
def test_ban_set_emptied_by_another_tool_is_refilled(lab: Lab, tmp_path: Path, backend: str) -> None:
    """`ipset flush` (a firewall script's opening `ipset -F`) or `nft flush set` takes the bans
    out and leaves the rules: no popwatch unban is behind it, so the bans go back in (within a
    kernel sync, 10 polls); a `popwatch unban` made meanwhile is followed, not undone."""
    w = Watch(lab, tmp_path, CONFIG.replace("[policy]", "[policy]\nauto_ban = true"), backend=backend)
    try:
        w.start()
        lab.listen(ports=(110,))
        other = "203.0.113.77"
        w.write(dove(ATTACKER, 5), dove(other, 5))
        wait_for(lambda: {ATTACKER, other} <= {b["ip"] for b in json.loads(w.cli("bans", "--json").stdout)},
                 what="auto-bans")
        assert lab.burst("c0", 110, 1).timeout == 1
        assert w.cli("unban", other).returncode == 0         # lifted the popwatch way
        for argv in FLUSH_SET[backend]:
            lab.run(lab.server, argv)
        assert lab.burst("c0", 110, 1).ok == 1               # the flush let the attacker in
        t0 = time.monotonic()
        wait_for(lambda: lab.burst("c0", 110, 1, timeout=0.4).timeout == 1, timeout=20,
                 what="the ban enforced again")
        print(f"\nban enforced again {time.monotonic() - t0:.1f}s after the flush")
        assert lab.burst("c1", 110, 1).ok == 1               # nobody else locked out
        wait_for(lambda: any(r["action"] == "heal" and ATTACKER in r.get("targets", []) for r in w.audit()),
                 timeout=5, what="heal audit record")
        rec = [r for r in w.audit() if r["action"] == "heal"][-1]
        assert rec["targets"] == [ATTACKER] and "removed by another tool" in str(rec["reason"])
        bans = {b["ip"] for b in json.loads(w.cli("bans", "--json").stdout)}
        assert ATTACKER in bans and other not in bans
        st = json.loads(w.cli("status", "--json").stdout)
        assert any("another tool removed" in x and "ban" in x for x in st["warnings"]), st["warnings"]
    finally:
        w.stop()
