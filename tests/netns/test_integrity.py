"""Nothing lost, nothing wrong (issue 17): the state dir, the audit log and the kernel agree
under concurrent writers, kill -9, one incident's burst of lines, network bans; real kernel
(ipset + iptables-nft) inside a lab namespace."""

from __future__ import annotations

import ipaddress
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .nslab import REPO, Lab

pytestmark = pytest.mark.netns

T = "Dec  7 05:00:00 mail"


def pw(lab: Lab, state: Path, *args: str, env: dict[str, str] | None = None,
       timeout: float = 60, backend: str = "nft") -> subprocess.CompletedProcess[str]:
    envv = ["env", "-u", "SSH_CONNECTION", "-u", "SSH_CLIENT", f"PYTHONPATH={REPO}"]
    envv += [f"{k}={v}" for k, v in (env or {}).items()]
    return lab.run(lab.server, [*envv, sys.executable, "-m", "popwatch", "--backend", backend,
                                "--state-dir", str(state), *args], check=False, timeout=timeout)


def kernel(lab: Lab) -> set[str]:
    out = set()
    for s in ("popwatch4", "popwatch6"):
        r = lab.run(lab.server, ["ipset", "save", s], check=False)
        out |= {l.split()[2] for l in r.stdout.splitlines() if l.startswith(f"add {s} ")}
    return out


def audit(state: Path) -> list[dict]:
    p = state / "audit.jsonl"
    return [json.loads(l) for l in p.read_text().splitlines()] if p.exists() else []


def audited_bans(state: Path) -> set[str]:
    """Targets of ban records that were not voided (what the audit log says is banned)."""
    recs = audit(state)
    voided = {r.get("voids") for r in recs if r["action"] == "void"}
    out: set[str] = set()
    for r in recs:
        if r["action"] == "ban" and r.get("ok", True) and r["id"] not in voided:
            out.add(r["target"])
        elif r["action"] == "restore":
            out |= set(r.get("targets", []))
        elif r["action"] in ("unban", "expire"):
            out.discard(r["target"])
    return out


def saved(state: Path) -> dict[str, dict]:
    p = state / "bans.json"
    return {b["ip"]: b for b in json.loads(p.read_text())["bans"]} if p.exists() else {}


def start_watch(lab: Lab, state: Path, log: Path, *extra: str, config: Path | None = None,
                backend: str = "nft") -> subprocess.Popen[str]:
    """Start a headless watch; return once it has reconciled (its "bans on start" line)."""
    conf = ["--config", str(config)] if config else []
    p = lab.popen(lab.server, ["env", "-u", "SSH_CONNECTION", "-u", "SSH_CLIENT", sys.executable, "-m",
                               "popwatch", "--backend", backend, *conf, "--state-dir", str(state), "watch",
                               "--no-tui", "--from-start", "--log", str(log), *extra],
                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert p.stderr is not None
    deadline = time.monotonic() + 30
    seen = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([p.stderr], [], [], 0.2)
        if ready:
            line = p.stderr.readline()
            if not line:
                break
            seen.append(line)
            if "bans on start" in line:
                return p
    raise AssertionError(f"watch did not reconcile within 30 s: {''.join(seen)[-2000:]}")


def wait_for(pred, what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def reboot(lab: Lab) -> None:
    """What a reboot does to popwatch's kernel state: the ban sets are empty."""
    for s in ("popwatch4", "popwatch6"):
        lab.run(lab.server, ["ipset", "flush", s], check=False)


def restore(lab: Lab, state: Path) -> None:
    """Start popwatch the way a boot does (watch reconciles the state dir), then stop it."""
    log = state.parent / "empty.log"
    log.touch()
    p = start_watch(lab, state, log)
    lab.stop(p)


# ---------------------------------------------------------------------------------- writers

def test_twenty_concurrent_cli_bans_all_survive_a_reboot(lab: Lab, tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert pw(lab, state, "ban", "203.0.113.200").returncode == 0  # installs the base once
    ips = [f"198.51.100.{i}" for i in range(1, 21)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("SSH_CONNECTION", None)
    env.pop("SSH_CLIENT", None)
    procs = [subprocess.Popen(["ip", "netns", "exec", lab.server, sys.executable, "-m", "popwatch",
                               "--backend", "nft", "--state-dir", str(state), "ban", ip, "--reason",
                               f"concurrent {ip}"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for ip in ips]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert set(ips) <= set(saved(state)), "bans.json lost a concurrent ban"
    reboot(lab)
    assert kernel(lab) == set()
    restore(lab, state)
    k = kernel(lab)
    assert set(ips) <= k
    assert set(ips) <= audited_bans(state)
    bans = {b["ip"]: b for b in json.loads(pw(lab, state, "bans", "--json").stdout)}
    assert all(bans[ip]["reason"] == f"concurrent {ip}" and bans[ip]["origin"] == "cli" for ip in ips)


def test_cli_ban_while_watch_runs_survives_watch_writes(lab: Lab, tmp_path: Path) -> None:
    state = tmp_path / "state"
    log = tmp_path / "auth.log"
    log.write_text("")
    p = start_watch(lab, state, log, "--auto-ban")
    try:
        assert pw(lab, state, "ban", "203.0.113.77", "--reason", "by hand").returncode == 0
        # make watch write bans.json (an auto-ban), then check the CLI's record is still there
        with log.open("a") as f:
            f.writelines(f"{T} sshd[1]: Failed password for root from 198.51.100.50 port 22 ssh2\n"
                         for _ in range(6))
        wait_for(lambda: "198.51.100.50" in saved(state), "watch's write of its auto-ban")
        rec = saved(state).get("203.0.113.77")
        assert rec is not None and rec["reason"] == "by hand" and rec["origin"] == "cli"
    finally:
        lab.stop(p)
    rec = saved(state)["203.0.113.77"]  # and after watch's final flush
    assert rec["reason"] == "by hand" and rec["origin"] == "cli"


# ---------------------------------------------------------------------------------- one incident

@pytest.mark.parametrize("maxretry", [1, 2, 3, 5])
def test_one_incident_gives_one_ban(lab: Lab, tmp_path: Path, maxretry: int) -> None:
    state = tmp_path / "state"
    conf = tmp_path / "popwatch.toml"
    conf.write_text(f"[policy]\nmaxretry = {maxretry}\nbantime = \"1h\"\n")
    log = tmp_path / "auth.log"
    log.write_text("")
    p = start_watch(lab, state, log, "--auto-ban", config=conf)
    try:
        dove = (f"{T} dovecot[9]: imap-login: Login aborted: Connection closed (auth failed, 3 attempts "
                f"in 16 secs) (auth_failed): user=<info>, method=PLAIN, rip=203.0.113.66, "
                f"lip=192.0.2.1, session=<x>\n")
        ssh = f"{T} sshd[2]: Failed password for root from 198.51.100.66 port 22 ssh2\n"
        with log.open("a") as f:  # one write: one batch
            f.write(dove * 4 + ssh * 12)
        wait_for(lambda: {"203.0.113.66", "198.51.100.66"} <= kernel(lab), "both bans in the kernel")
        # a positive marker that the whole batch was processed: a later line's ban
        with log.open("a") as f:
            f.write(f"{T} sshd[3]: Failed password for root from 198.51.100.99 port 22 ssh2\n" * maxretry)
        wait_for(lambda: "198.51.100.99" in kernel(lab), "the marker's ban")
    finally:
        lab.stop(p)
    recs = [r for r in audit(state) if r["action"] == "ban"]
    for ip in ("203.0.113.66", "198.51.100.66"):
        mine = [r for r in recs if r["target"] == ip]
        assert len(mine) == 1, [r["reason"] for r in mine]
        assert "recidive" not in mine[0]["reason"]


# ---------------------------------------------------------------------------------- kill -9

def test_kill_9_in_a_flood_every_kernel_ban_has_its_audit_record(lab: Lab, tmp_path: Path) -> None:
    state = tmp_path / "state"
    conf = tmp_path / "popwatch.toml"
    conf.write_text("[policy]\nmaxretry = 1\n")
    log = tmp_path / "auth.log"
    log.write_text("")
    p = start_watch(lab, state, log, "--auto-ban", config=conf)
    try:
        lines = [f"{T} sshd[2]: Failed password for root from 2001:db8:{i:x}::1 port 22 ssh2\n"
                 for i in range(1, 3001)]
        with log.open("a") as f:
            for i in range(0, len(lines), 100):
                f.write("".join(lines[i:i + 100]))
                f.flush()
        wait_for(lambda: len(kernel(lab)) >= 300, "300 bans in the kernel", 60)
        os.kill(p.pid, signal.SIGKILL)  # the ip-netns-exec process execs python: same pid
        p.wait(timeout=10)
    finally:
        lab.stop(p)
    k = kernel(lab)
    assert len(k) >= 300
    have = audited_bans(state)
    entries = {str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ":" in ip else ip for ip in have}
    missing = k - entries
    assert not missing, f"{len(missing)} kernel bans without an audit record, e.g. {sorted(missing)[:3]}"
    # and a restart adopts them with their reason, not as origin "kernel"
    restore(lab, state)
    bans = json.loads(pw(lab, state, "bans", "--json").stdout)
    assert bans and all(b["origin"] == "auto" for b in bans), {b["origin"] for b in bans}


# ---------------------------------------------------------------------------------- network bans

def test_network_ban_semantics(lab: Lab, tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert pw(lab, state, "ban", "203.0.113.5", "--ttl", "forever", "--reason", "long").returncode == 0
    assert pw(lab, state, "ban", "--net", "203.0.113.0/24", "--ttl", "1h").returncode == 0
    # a network ban does not shorten a longer member ban
    r = lab.run(lab.server, ["ipset", "save", "popwatch4"])
    line = next(l for l in r.stdout.splitlines() if l.split()[2:3] == ["203.0.113.5"])
    assert "timeout 0" in line, line
    # bans lists the network once, not 256 rows of origin kernel
    rows = json.loads(pw(lab, state, "bans", "--json").stdout)
    assert {r["ip"] for r in rows} == {"203.0.113.0/24", "203.0.113.5"}
    # a member unban inside a network ban is refused (exit 5), nothing changes
    r = pw(lab, state, "unban", "203.0.113.6")
    assert r.returncode == 5 and "inside the network ban 203.0.113.0/24" in r.stderr
    assert "203.0.113.6" in kernel(lab)
    # two addresses of one /64: unbanning one lifts the /64 and both records; a reboot keeps it so
    assert pw(lab, state, "ban", "2001:db8:7::1").returncode == 0
    assert pw(lab, state, "ban", "2001:db8:7::2").returncode == 0
    r = pw(lab, state, "unban", "2001:db8:7::1")
    assert r.returncode == 0 and "2001:db8:7::2" in r.stdout
    reboot(lab)
    restore(lab, state)
    k = kernel(lab)
    assert "2001:db8:7::/64" not in k and {"203.0.113.5", "203.0.113.6"} <= k
    # lifting the network keeps the member that was banned on its own
    assert pw(lab, state, "unban", "--net", "203.0.113.0/24").returncode == 0
    k = kernel(lab)
    assert "203.0.113.5" in k and "203.0.113.6" not in k
    assert set(saved(state)) == k


@pytest.mark.parametrize("backend", ["nftables", "nft"])
def test_network_bans_stay_one_ban_across_restarts(lab: Lab, tmp_path: Path, backend: str) -> None:
    """The kernel holds an IPv4 network ban as its 256 addresses (nftables' ban4, ipset's
    hash:ip) and an IPv6 /48 as one interval/net element: a watch start (reconcile), its
    kernel sync and a second start keep exactly the two network records, adopt no member,
    restore nothing, and auto-ban makes no single ban inside them."""
    state = tmp_path / "state"
    net4, net6, marker = "198.51.100.0/24", "2001:db8:7::/48", "203.0.113.99"
    for net in (net4, net6):
        r = pw(lab, state, "ban", "--net", net, "--ttl", "1h", backend=backend)
        assert r.returncode == 0, r.stderr
    conf = tmp_path / "popwatch.toml"
    conf.write_text("[policy]\nmaxretry = 1\nbantime = \"1h\"\n")
    log = tmp_path / "auth.log"
    log.write_text("".join(f"{T} sshd[2]: Failed password for root from {ip} port 22 ssh2\n"
                           for ip in ("198.51.100.7", "2001:db8:7:1::5", marker)))
    for _ in range(2):  # two restarts, each with its kernel sync (every 10 polls)
        p = start_watch(lab, state, log, "--auto-ban", config=conf, backend=backend)
        try:
            wait_for(lambda: any(r["target"] == marker for r in audit(state)), "the marker's ban")
            time.sleep(12)
        finally:
            lab.stop(p)
        assert set(saved(state)) == {net4, net6, marker}
        rows = json.loads(pw(lab, state, "bans", "--json", backend=backend).stdout)
        assert sorted(r["ip"] for r in rows) == sorted([net4, net6, marker]), rows
        assert {r["origin"] for r in rows} == {"cli", "auto"}
        recs = audit(state)
        assert sorted(r["target"] for r in recs if r["action"] == "ban") == sorted([net4, net6, marker])
        assert [r["target"] for r in recs if r["action"] in ("restore", "unban", "expire", "void")] == []


def test_nat64_bans_one_address(lab: Lab, tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert pw(lab, state, "ban", "64:ff9b::c633:6405").returncode == 0
    assert "64:ff9b::c633:6405" in kernel(lab) or "64:ff9b::c633:6405/128" in kernel(lab)
    assert not any(e.startswith("64:ff9b::/") for e in kernel(lab))


# ---------------------------------------------------------------------------------- lock, exemptions

def test_uninstall_while_watch_runs_the_watch_stands_down_and_says_so(lab: Lab, tmp_path: Path) -> None:
    """The admin's `uninstall` wins: the rules go at once, the running watch notices, stops
    enforcing (never puts them back) and says so once on stderr; a second watch is refused."""
    state = tmp_path / "state"
    log = tmp_path / "auth.log"
    log.write_text("")
    p = start_watch(lab, state, log)
    try:
        r = pw(lab, state, "watch", "--no-tui", "--log", str(log), "--duration", "1")
        assert r.returncode == 6 and "already running" in r.stderr
        r = pw(lab, state, "uninstall")
        assert r.returncode == 0 and "stops enforcing" in r.stdout, (r.stdout, r.stderr)
        assert lab.run(lab.server, ["iptables", "-S", "POPWATCH"], check=False).returncode != 0
        assert p.stderr is not None
        deadline = time.monotonic() + 15
        said = ""
        while "uninstall" not in said and time.monotonic() < deadline:
            ready, _, _ = select.select([p.stderr], [], [], 0.2)
            if ready:
                said = p.stderr.readline()
        assert "read-only (watching only)" in said and "uninstall" in said, said
        assert lab.run(lab.server, ["iptables", "-S", "POPWATCH"], check=False).returncode != 0
    finally:
        lab.stop(p)


def test_exemptions_are_the_current_protected_set(lab: Lab, tmp_path: Path) -> None:
    state = tmp_path / "state"
    ssh = {"SSH_CONNECTION": "198.51.100.44 51000 192.0.2.1 22"}
    assert pw(lab, state, "ban", "203.0.113.9", env=ssh).returncode == 0
    st = json.loads(pw(lab, state, "status", "--json", env=ssh).stdout)
    assert "198.51.100.44" in st["exempt"]
    assert pw(lab, state, "unban", "203.0.113.9").returncode == 0  # from the console: unban too
    st = json.loads(pw(lab, state, "status", "--json").stdout)  # status reads, it sets nothing
    assert "198.51.100.44" not in st["exempt"]
    assert pw(lab, state, "ban", "203.0.113.9", env=ssh).returncode == 0
    assert pw(lab, state, "ban", "203.0.113.10").returncode == 0  # from the console
    st = json.loads(pw(lab, state, "status", "--json").stdout)
    assert "198.51.100.44" not in st["exempt"]
    assert "exempt" in pw(lab, state, "status").stdout
    # now a console ban of that address is enforced: it is no longer exempt
    assert pw(lab, state, "ban", "198.51.100.44").returncode == 0
    assert "198.51.100.44" in kernel(lab)


# ---------------------------------------------------------------------------------- state dir

def _in_mountns(lab: Lab, script: str) -> subprocess.CompletedProcess[str]:
    """Run a bash script in the server's netns and a private mount namespace (the mounts it
    makes vanish with it; the host's mounts are untouched)."""
    return lab.run(lab.server, ["unshare", "-m", "--propagation", "private", "bash", "-c", script],
                   check=False, timeout=120)


def _pw_sh(state: Path, *args: str) -> str:
    q = " ".join(f"'{a}'" for a in args)
    return (f"env -u SSH_CONNECTION -u SSH_CLIENT PYTHONPATH={REPO} {sys.executable} -m popwatch "
            f"--backend nft --state-dir {state} {q}")


def _agree(lab: Lab, state: Path) -> None:
    k = kernel(lab)
    sv = set(saved(state))
    assert sv == k, (sv, k)
    assert audited_bans(state) >= sv


@pytest.mark.parametrize("how", ["read-only", "full"])
def test_unwritable_state_dir_one_line_exit_7_nothing_changed(lab: Lab, tmp_path: Path, how: str) -> None:
    state = tmp_path / "state"
    if how == "read-only":
        assert pw(lab, state, "ban", "203.0.113.20").returncode == 0
        setup = f"mount --bind {state} {state} && mount -o remount,bind,ro {state}"
    else:
        state.mkdir()
        setup = (f"mount -t tmpfs -o size=256k,mode=0700 tmpfs {state} && " + _pw_sh(state, "ban", "203.0.113.20")
                 + f" >/dev/null && (dd if=/dev/zero of={state}/filler bs=4k 2>/dev/null; true)")
    steps = [("ban", "203.0.113.21"), ("unban", "203.0.113.20"),
             ("limit", "110", "--mode", "global", "--rate", "3/second"), ("ban", "--net", "198.51.100.0/24")]
    script = setup + " && " + " ; ".join(
        f"{_pw_sh(state, *s)}; echo \"rc=$?\" 1>&2; ls -A {state} | grep -c tmp 1>&2 || true" for s in steps)
    script += f" ; cp {state}/bans.json {tmp_path}/bans.after ; cp {state}/audit.jsonl {tmp_path}/audit.after"
    r = _in_mountns(lab, script)
    err = r.stderr
    assert "Traceback" not in err and "Traceback" not in r.stdout, err
    codes = [l for l in err.splitlines() if l.startswith("rc=")]
    # a full disk may still take one short append (the audit log's last page): then the
    # action is done and recorded; otherwise it is refused with exit 7 and nothing changes
    assert codes[0] == codes[1] == codes[3] == "rc=7", err
    assert codes[2] in (("rc=7",) if how == "read-only" else ("rc=7", "rc=0")), err
    popwatch_lines = [l for l in err.splitlines() if l.startswith("popwatch:")]
    assert len(popwatch_lines) == codes.count("rc=7"), err
    assert all("state dir" in l and "Errno" not in l for l in popwatch_lines), err
    assert all(l.strip() == "0" for l in err.splitlines() if l.strip().isdigit()), "temp files left"
    k = kernel(lab)
    assert "203.0.113.20" in k and "203.0.113.21" not in k and "198.51.100.7" not in k
    after = {b["ip"] for b in json.loads((tmp_path / "bans.after").read_text())["bans"]}
    assert after == k == {"203.0.113.20"}
    recs = [json.loads(l) for l in (tmp_path / "audit.after").read_text().splitlines()]
    voided = {r.get("voids") for r in recs if r["action"] == "void"}
    live = [r for r in recs if r["id"] not in voided]
    assert [r["target"] for r in live if r["action"] == "ban"] == ["203.0.113.20"]
    assert not [r for r in live if r["action"] == "unban"]
    lims = lab.run(lab.server, ["iptables", "-S", "POPWATCH"], check=False).stdout
    assert ("3/sec" in lims) == (codes[2] == "rc=0") == any(r["action"] == "limit" for r in live)


def test_a_running_watchs_ssh_client_cannot_be_banned_unenforced(lab: Lab, tmp_path: Path) -> None:
    state = tmp_path / "state"
    log = tmp_path / "auth.log"
    log.write_text("")
    p = lab.popen(lab.server, ["env", "SSH_CONNECTION=198.51.100.45 51000 192.0.2.1 22", sys.executable, "-m",
                               "popwatch", "--backend", "nft", "--state-dir", str(state), "watch", "--no-tui",
                               "--log", str(log)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (state / "watch-exempt.json").exists(), "watch start")
        r = pw(lab, state, "ban", "198.51.100.45")  # from the console, while that watch runs
        assert r.returncode == 4 and "running popwatch watch" in r.stderr
        st = json.loads(pw(lab, state, "status", "--json").stdout)
        assert "198.51.100.45" in st["exempt"]
    finally:
        lab.stop(p)


def test_without_cap_net_admin_watch_says_so_once_and_ban_exits_3(lab: Lab, tmp_path: Path) -> None:
    log = tmp_path / "auth.log"
    log.write_text("")
    nocap = ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", "env", "-u", "SSH_CONNECTION",
             f"PYTHONPATH={REPO}", sys.executable, "-m", "popwatch", "--backend", "nft", "--state-dir",
             str(tmp_path / "state")]
    r = lab.run(lab.server, [*nocap, "watch", "--no-tui", "--auto-ban", "--log", str(log), "--events", "-",
                             "--duration", "1.5"], check=False)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    warn = [l for l in r.stderr.splitlines() if l.startswith("popwatch: warning:")]
    assert sum("CAP_NET_ADMIN" in l and "read-only" in l for l in warn) == 1, r.stderr
    assert sum("auto-ban is on but cannot act" in l for l in warn) == 1, r.stderr
    assert sum(json.loads(l).get("kind") == "warning" for l in r.stdout.splitlines()) == len(warn)
    r = lab.run(lab.server, [*nocap, "ban", "203.0.113.5"], check=False)
    assert r.returncode == 3 and len(r.stderr.strip().splitlines()) == 1, r.stderr
