"""Auto-ban latency: from the failure line that crosses ``maxretry`` being written to the log,
to the ban being in the kernel (the ipset add returned), while a flood is ingested.

    sudo python benchmarks/autoban.py [--rate 10000] [--seconds 15] [--attackers 150] [--no-fail2ban]

Runs in a throwaway network namespace (tests/netns/nslab.py; prefix ``pwpol-bench``) so the
host's firewall is never touched. Inside it, a Monitor with the real ``nft`` backend
(iptables-nft + ipset over netlink) tails a log file through the real tail source, parser and
auto-ban (maxretry 5 within 10 m). A writer process appends:

* phase ``idle``: attackers crossing the threshold one every 100 ms, nothing else (baseline);
* phase ``flood``: ``--rate`` lines/s of sshd/dovecot failures from ever-new addresses (each
  below the threshold, so the store fills with hundreds of thousands of IPs), with an attacker
  crossing every ``seconds/attackers`` s in the middle of it.

For each crossing it records when the line was written (after ``write`` returned) and, inside
the namespace, when ``Firewall.ban`` returned; the difference is the latency. Both processes
use CLOCK_REALTIME on the same host. It prints median / p90 / p99 / max per phase, and the
detect-to-kernel part (from :attr:`Monitor.auto_latency`, monotonic) separately.

Baseline, same run (unless ``--no-fail2ban``): fail2ban (the Debian package) on the same log
file pattern in its own namespace, jail sshd, maxretry 5, an action that adds to an ipset and
timestamps it; same idle and flood phases (20 and 40 crossings), fail2ban's default backend.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MAXRETRY = 5



def install_fail2ban() -> None:
    """The baseline needs Debian's fail2ban; tests/run.py does not install it (benchmark only).
    Installed as root through tests/hostsafe.py: its service is left disabled and stopped."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import hostsafe

    if shutil.which("fail2ban-server") is None:
        hostsafe.apt_install(["fail2ban"], "(no fail2ban baseline)")

def _ts() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00", time.gmtime())


def ssh_fail(ip: str, user: str = "root") -> str:
    return f"{_ts()} mail sshd[4242]: Failed password for invalid user {user} from {ip} port 40000 ssh2\n"


def dove_fail(ip: str, n: int) -> str:
    return (f"{_ts()} mail dovecot: pop3-login: Disconnected: Connection closed (auth failed, {n} attempts "
            f"in 20 secs): user=<admin>, method=PLAIN, rip={ip}, lip=192.0.2.1, session=<{random.getrandbits(48):x}>\n")


# ------------------------------------------------------------------------------ inside the ns

def inner(log: str, lock: str, seconds: float) -> None:
    """The popwatch side: Monitor + nft backend + tail source; prints a JSON result."""
    from popwatch.config import PolicyConfig
    from popwatch.model import PortLimit
    from popwatch.firewall.iptables import IptablesFirewall
    from popwatch.monitor import Monitor
    from popwatch.parse import Parser
    from popwatch.policy import Protector
    from popwatch.sources.tail import make_file_sources
    from popwatch.store import StateStore

    fw = IptablesFirewall(flavour="nft", lock_path=lock)
    kernel_at: dict[str, float] = {}
    real_ban = fw.ban

    def ban(ip: str, ttl: float | None = None, **kw: object) -> None:
        real_ban(ip, ttl, **kw)  # type: ignore[arg-type]
        kernel_at[ip] = time.time()
    fw.ban = ban  # type: ignore[method-assign]
    policy = PolicyConfig(auto_ban=True, maxretry=MAXRETRY, findtime=600, bantime=3600, user_ips=0)
    mon = Monitor(store=StateStore(clock=time.time), parser=Parser(now=time.time),
                  sources=make_file_sources([log]), firewall=fw, policy=policy,
                  protector=Protector(own={"192.0.2.1"}))
    mon.start_firewall([PortLimit(110), PortLimit(22)])

    async def main() -> None:
        task = asyncio.create_task(mon.run())
        await asyncio.sleep(1.0)
        print("ready", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        del line
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    asyncio.run(main())
    kernel = fw.bans()
    mon.close()
    out = {"kernel_at": kernel_at, "lines_in": mon.lines_in, "ips": len(mon.store.attackers),
           "in_kernel": len(kernel),
           "detect_to_kernel_ms": {ip: (k - m) * 1000 for ip, _, m, k in mon.auto_latency}}
    print(json.dumps(out), flush=True)


# ------------------------------------------------------------------------------ writer

def write_phase(log: Path, attackers: list[str], *, rate: int, seconds: float, kind: str,
                flood_seed: int = 1) -> dict[str, float]:
    """Append the phase's lines; returns {attacker: time its crossing line was written}."""
    rng = random.Random(flood_seed)
    written: dict[str, float] = {}
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        # 4 attempts each, in advance (below the threshold)
        pre = "".join(ssh_fail(ip) for ip in attackers for _ in range(MAXRETRY - 1))
        os.write(fd, pre.encode())
        time.sleep(0.5)
        tick = 0.01
        per_tick = int(rate * tick)
        gap = seconds / max(1, len(attackers))
        t0 = time.monotonic()
        next_cross = t0 + gap / 2
        i = 0
        n = 0
        while time.monotonic() - t0 < seconds or i < len(attackers):
            chunk = []
            for _ in range(per_tick):
                n += 1
                ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
                chunk.append(ssh_fail(ip, f"u{n % 5000}") if n % 3 else dove_fail(ip, 2))
            crossing = None
            if i < len(attackers) and time.monotonic() >= next_cross:
                crossing = attackers[i]
                # the crossing line sits in the middle of this tick's flood
                chunk.insert(len(chunk) // 2, ssh_fail(crossing))
                i += 1
                next_cross += gap
            os.write(fd, "".join(chunk).encode())
            if crossing:
                written[crossing] = time.time()
            time.sleep(tick)
    finally:
        os.close(fd)
    return written


def stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    v = sorted(values)
    q = lambda p: v[min(len(v) - 1, int(round(p * (len(v) - 1))))]  # noqa: E731
    return {"n": len(v), "median": statistics.median(v), "p90": q(0.9), "p99": q(0.99), "max": v[-1]}


def fmt(s: dict[str, float]) -> str:
    if not s.get("n"):
        return "no bans"
    return (f"n={s['n']:<4} median {s['median']:8.1f} ms   p90 {s['p90']:8.1f} ms   "
            f"p99 {s['p99']:8.1f} ms   max {s['max']:8.1f} ms")


def run_popwatch(lab: object, d: Path, args: argparse.Namespace) -> dict[str, object]:
    log = d / "pw.log"
    log.touch()
    p = lab.popen(lab.server, [sys.executable, str(Path(__file__).resolve()), "--inner", str(log),  # type: ignore[attr-defined]
                               str(d / "fw.lock"), str(args.seconds)],
                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stdin is not None
    if p.stdout.readline().strip() != "ready":
        raise SystemExit(f"popwatch side failed: {p.stderr.read() if p.stderr else ''}")
    idle_att = [f"203.0.113.{i}" for i in range(1, 41)]
    flood_att = [f"198.51.100.{i % 250 + 1}" if i < 250 else f"2001:db8:{i:x}::1" for i in range(args.attackers)]
    idle = write_phase(log, idle_att, rate=0, seconds=len(idle_att) * 0.1, kind="idle")
    time.sleep(1.0)
    flood = write_phase(log, flood_att, rate=args.rate, seconds=args.seconds, kind="flood")
    time.sleep(2.0)
    p.stdin.write("stop\n")
    p.stdin.flush()
    out, err = p.communicate(timeout=120)
    lab.stop(p)  # type: ignore[attr-defined]
    res = json.loads(out.strip().splitlines()[-1])
    k = res["kernel_at"]

    def lat(written: dict[str, float]) -> tuple[list[float], int]:
        vals, missing = [], 0
        for ip, t in written.items():
            if ip in k:  # Firewall.ban is called with the address (an IPv6 one becomes its /64)
                vals.append((k[ip] - t) * 1000)
            else:
                missing += 1
        return vals, missing
    idle_v, idle_miss = lat(idle)
    flood_v, flood_miss = lat(flood)
    d2k = res["detect_to_kernel_ms"]
    return {"idle": stats(idle_v), "flood": stats(flood_v), "idle_missing": idle_miss,
            "flood_missing": flood_miss, "lines_in": res["lines_in"], "ips": res["ips"],
            "in_kernel": res["in_kernel"],
            "detect_to_kernel_flood": stats([d2k[ip] for ip in flood if ip in d2k])}


# ------------------------------------------------------------------------------ fail2ban baseline

F2B_CONF = """[Definition]
loglevel = WARNING
logtarget = {d}/f2b.log
socket = {d}/f2b.sock
pidfile = {d}/f2b.pid
dbfile = :memory:
"""
F2B_JAIL = """[DEFAULT]
backend = {backend}
[bench]
enabled = true
filter = sshd
logpath = {log}
maxretry = {maxretry}
findtime = 600
bantime = 3600
action = bench
"""
F2B_ACTION = """[Definition]
actionstart = ipset -exist create f2bbench hash:ip timeout 0
actionstop = ipset destroy f2bbench
actioncheck =
actionban = ipset -exist add f2bbench <ip> timeout 3600 && echo "<ip> $(date +%%s.%%N)" >> {d}/f2b-bans
actionunban = ipset -exist del f2bbench <ip>
"""


def run_fail2ban(lab: object, d: Path, args: argparse.Namespace) -> dict[str, object] | None:
    if shutil.which("fail2ban-server") is None:
        return None
    cfg = d / "f2b"
    for sub in ("", "filter.d", "action.d", "jail.d"):
        (cfg / sub).mkdir(parents=True, exist_ok=True)
    for name in ("filter.d/sshd.conf", "filter.d/common.conf", "paths-common.conf", "paths-debian.conf"):
        src = Path("/etc/fail2ban") / name
        if src.exists():
            shutil.copy(src, cfg / name)
    log = d / "f2b-auth.log"
    log.touch()
    (cfg / "fail2ban.conf").write_text(F2B_CONF.format(d=d))
    (cfg / "jail.conf").write_text(F2B_JAIL.format(log=log, maxretry=MAXRETRY, backend="auto"))
    (cfg / "action.d" / "bench.conf").write_text(F2B_ACTION.format(d=d))
    p = lab.popen(lab.server, ["fail2ban-server", "-f", "-x", "-c", str(cfg)],  # type: ignore[attr-defined]
                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            cp = lab.run(lab.server, ["fail2ban-client", "-c", str(cfg), "status", "bench"], check=False)  # type: ignore[attr-defined]
            if cp.returncode == 0:
                break
            time.sleep(0.3)
        else:
            return {"error": "fail2ban did not start"}
        time.sleep(1.0)
        idle_att = [f"203.0.113.{i}" for i in range(1, 21)]
        flood_att = [f"198.51.100.{i}" for i in range(1, 41)]
        idle = write_phase(log, idle_att, rate=0, seconds=len(idle_att) * 0.2, kind="idle")
        time.sleep(3.0)
        flood = write_phase(log, flood_att, rate=args.f2b_rate, seconds=args.seconds, kind="flood")
        deadline = time.monotonic() + 60
        bans_file = d / "f2b-bans"
        while time.monotonic() < deadline:
            got = bans_file.read_text().split("\n") if bans_file.exists() else []
            if len([g for g in got if g.strip()]) >= len(idle) + len(flood):
                break
            time.sleep(0.5)
        at = {}
        for line in (bans_file.read_text().splitlines() if bans_file.exists() else []):
            ip, t = line.split()
            at.setdefault(ip, float(t))
        res: dict[str, object] = {}
        for name, w in (("idle", idle), ("flood", flood)):
            res[name] = stats([(at[ip] - t) * 1000 for ip, t in w.items() if ip in at])
            res[f"{name}_missing"] = sum(1 for ip in w if ip not in at)
        res["rate"] = args.f2b_rate
        return res
    finally:
        lab.run(lab.server, ["fail2ban-client", "-c", str(cfg), "stop"], check=False, timeout=30)  # type: ignore[attr-defined]
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        lab.stop(p)  # type: ignore[attr-defined]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--inner":
        inner(sys.argv[2], sys.argv[3], float(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=10000, help="flood lines per second (default 10000)")
    ap.add_argument("--seconds", type=float, default=15.0, help="flood duration (default 15)")
    ap.add_argument("--attackers", type=int, default=150, help="crossings during the flood (default 150)")
    ap.add_argument("--f2b-rate", type=int, default=None, help="flood rate for the fail2ban baseline "
                                                               "(default: the same as --rate)")
    ap.add_argument("--no-fail2ban", action="store_true", help="skip the fail2ban baseline")
    args = ap.parse_args()
    if args.f2b_rate is None:
        args.f2b_rate = args.rate
    if os.geteuid() != 0:
        raise SystemExit("needs root: network namespaces and the kernel firewall (in a namespace only)")
    from tests.netns.nslab import Lab

    with tempfile.TemporaryDirectory(prefix="pwbench-") as tmp, Lab(prefix="pwpol-bench", clients=0) as lab:
        d = Path(tmp)
        print(f"popwatch auto-ban, nft backend in netns {lab.server}: maxretry {MAXRETRY}, "
              f"flood {args.rate} lines/s for {args.seconds:g} s, {args.attackers} crossings", flush=True)
        r = run_popwatch(lab, d, args)
        print(f"  idle  (no flood), write -> kernel:   {fmt(r['idle'])}")  # type: ignore[arg-type]
        print(f"  flood,            write -> kernel:   {fmt(r['flood'])}")  # type: ignore[arg-type]
        print(f"  flood,           detect -> kernel:   {fmt(r['detect_to_kernel_flood'])}")  # type: ignore[arg-type]
        print(f"  lines ingested {r['lines_in']:,}, IPs in the store {r['ips']:,}, bans in the kernel "
              f"{r['in_kernel']}, crossings not banned: idle {r['idle_missing']}, flood {r['flood_missing']}")
        if not args.no_fail2ban:
            install_fail2ban()
            with Lab(prefix="pwpol-bench", clients=0) as lab2:
                f = run_fail2ban(lab2, d, args)
            if f is None:
                print("baseline: fail2ban not installed (apt-get install fail2ban)")
            elif "error" in f:
                print(f"baseline: {f['error']}")
            else:
                print(f"baseline fail2ban ({args.f2b_rate} lines/s flood, default backend, same log format):")
                print(f"  idle,             write -> kernel:   {fmt(f['idle'])}")  # type: ignore[arg-type]
                print(f"  flood,            write -> kernel:   {fmt(f['flood'])}")  # type: ignore[arg-type]
                print(f"  crossings not banned: idle {f['idle_missing']}, flood {f['flood_missing']}")


if __name__ == "__main__":
    main()
