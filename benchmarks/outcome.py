"""Outcome of one real dictionary attack under four defences (issue 8).

    sudo python benchmarks/outcome.py [--seconds 60] [--scenarios a,b,c,d] [--json FILE]

Runs the e2e lab (``tests/e2e/mailab.py``: dovecot + OpenSSH + rsyslog in network namespaces,
THC hydra and poplib attackers, a legitimate user) once per scenario, each on a fresh lab (fresh
dovecot auth penalties, empty firewall), with the same attack:

    a1  203.0.113.10    hydra pop3, 4 tasks (keeps each connection for many guesses)
    a2  203.0.113.11    poplib, one guess per connection, 8 in parallel (the 2009-style attack)
    a3  198.51.100.20   hydra ssh, 2 tasks
    a4  2001:db8:4::21  poplib over IPv6, one guess per connection, 2 in parallel

    legit 203.0.113.50  alice checks mail (POP3, right password) every 2 s, 10 s client timeout

Scenarios:

    a  no protection
    b  the 2009 rule: iptables INPUT, port 110, NEW, ``-m limit --limit 1/second --limit-burst 1``
       ACCEPT, then DROP (IPv4 only, as it was)
    c  popwatch per-source limit on 110, 143 and 22 (``per-source 30/minute burst 5``, v4 and v6/64):
       the tightest limit the legitimate user (one login every 2 s) never hits
    d  popwatch auto-ban (``maxretry 5``, findtime 10m, bantime 1h), no rate limit

Measured from the daemons' own log lines (not from popwatch): password guesses that reached
dovecot/sshd per attacker, whether it found a password (``test``'s is the 13th guess), and the
time to stop it (the ban's audit time from the attack's start; "not stopped" when no defence
cut it off: then it guessed for the whole run, as fast as dovecot's auth penalty let it); and
the legitimate user's login success rate and latency during the attack. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.mailab import HOSTS, USERS, MailLab, audit_bans, guesses, read_jsonl  # noqa: E402

SCENARIOS = {
    "a": "no protection",
    "b": "2009 rule (global 1/s burst 1 + DROP on 110)",
    "c": "popwatch per-source limit (30/min burst 5)",
    "d": "popwatch auto-ban (maxretry 5)",
}
#: key -> (label, tool, service, family, parallel connections)
ATTACKERS = {
    "a1": ("hydra pop3 x4", "hydra", "pop3", 4, 4),
    "a2": ("poplib x8", "py", "pop3", 4, 8),
    "a3": ("hydra ssh x2", "hydra", "ssh", 4, 2),
    "a4": ("poplib v6 x2", "py", "pop3", 6, 2),
}
MAXRETRY = 5
SEED_RULE = [
    ["-A", "INPUT", "-p", "tcp", "--dport", "110", "-m", "state", "--state", "NEW", "-m", "limit",
     "--limit", "1/second", "--limit-burst", "1", "-j", "ACCEPT"],
    ["-A", "INPUT", "-p", "tcp", "--dport", "110", "-m", "state", "--state", "NEW", "-j", "DROP"],
]


@dataclass
class AttackerResult:
    key: str
    ip: str
    label: str
    guesses: int
    found: bool
    stopped_after: float | None  # seconds from the attack's start, None = not stopped
    banned: bool
    last_guess: float | None


@dataclass
class ScenarioResult:
    scenario: str
    title: str
    seconds: float
    attackers: list[AttackerResult] = field(default_factory=list)
    legit_ok: int = 0
    legit_total: int = 0
    legit_slow: int = 0  # logins that failed or whose SYN was dropped (the kernel retransmitted it)
    legit_p50: float | None = None
    legit_max: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def legit_rate(self) -> float:
        return self.legit_ok / self.legit_total if self.legit_total else 0.0


def ip_of(key: str) -> str:
    v4, v6 = HOSTS[key]
    return v6 if ATTACKERS[key][3] == 6 else v4


def run_scenario(scenario: str, seconds: float, workdir: Path) -> ScenarioResult:
    res = ScenarioResult(scenario, SCENARIOS[scenario], seconds)
    d = Path(tempfile.mkdtemp(prefix=f"pwe2e-outcome-{scenario}-", dir=workdir))
    with MailLab(d) as lab:
        state = d / "state"
        pw = None
        if scenario == "b":
            for rule in SEED_RULE:
                lab.run_server(["iptables-nft", "-w", "10", *rule])
        elif scenario in ("c", "d"):
            if scenario == "c":
                lim = {"mode": "per-source", "rate": "30/minute", "burst": 5}
                cfg = lab.write_config(limits={110: lim, 143: lim, 22: lim})
            else:
                cfg = lab.write_config(maxretry=MAXRETRY, findtime="10m", bantime="1h")
            pw = lab.popwatch("--from-start", config=cfg, backend="nft", state_dir=state,
                              events=d / "events.jsonl", auto_ban=scenario == "d")
            lab.wait_for(lambda: lab.firewall_ready("nft"), 30, "popwatch's firewall", [pw])
        legit_out = d / "legit.jsonl"
        t0 = time.time()
        legit = lab.legit(legit_out, seconds=seconds, interval=2.0, timeout=10.0)
        procs = []
        for key, (_label, tool, svc, fam, par) in ATTACKERS.items():
            if tool == "hydra":
                procs.append(lab.hydra(key, svc, tasks=par, family=fam, seconds=seconds))
            else:
                procs.append(lab.mailclient(key, "attack", out=d / f"{key}.jsonl", family=fam, proto=svc,
                                            seconds=seconds, parallel=par, timeout=25,
                                            max_attempts=len(USERS) * 24))
        time.sleep(seconds)
        t_end = time.time()
        for p in procs:
            lab.stop(p)
        lab.stop(legit, wait=15)
        bans = audit_bans(state) if pw is not None else {}
        if pw is not None:
            lab.stop(pw, wait=15)
        truth = guesses(lab.mail_log, lab.auth_log)
        for key, (label, _tool, _svc, _fam, _par) in ATTACKERS.items():
            ip = ip_of(key)
            mine = [g for g in truth if g.ip == ip and t0 <= g.ts]
            fails = [g for g in mine if not g.ok]
            ban = next((b for t, b in bans.items() if t == ip or _covers(t, ip)), None)
            last = max((g.ts for g in fails), default=None)
            # stopped = banned (the defence acted); otherwise it ran as long as it wanted
            stopped = max(0.0, ban["t"] - t0) if ban is not None else None
            res.attackers.append(AttackerResult(key, ip, label, len(fails), any(g.ok for g in mine), stopped,
                                                ban is not None, None if last is None else last - t0))
        recs = [r for r in read_jsonl(legit_out) if t0 <= r["t"] <= t_end]
        res.legit_total = len(recs)
        res.legit_ok = sum(1 for r in recs if r["ok"])
        # counted by the kernel (TCP_INFO), not by the clock: a loaded host is slow, not dropping
        res.legit_slow = sum(1 for r in recs if not r["ok"] or (r.get("retrans") or 0) > 0)
        lat = sorted(r["secs"] for r in recs if r["ok"])
        if lat:
            res.legit_p50 = lat[len(lat) // 2]
            res.legit_max = lat[-1]
        if scenario == "b":
            cp = lab.run_server(["iptables-nft", "-w", "10", "-L", "INPUT", "-v", "-n", "-x"], check=False)
            res.notes.append("seed rule counters: " + " | ".join(
                " ".join(line.split()[:3]) for line in cp.stdout.splitlines()[2:]))
    if not os.environ.get("PWE2E_KEEP"):
        shutil.rmtree(d, ignore_errors=True)
    return res


def _covers(target: str, ip: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(ip) in ipaddress.ip_network(target, strict=False)
    except ValueError:
        return False


def table(results: list[ScenarioResult]) -> str:
    keys = list(ATTACKERS)
    head = ["scenario"] + [f"{k} {ATTACKERS[k][0]}" for k in keys] + ["legit user logins"]
    rows = []
    for r in results:
        cells = [f"({r.scenario}) {r.title}"]
        for a in r.attackers:
            stop = "not stopped" if a.stopped_after is None else f"banned after {a.stopped_after:.0f}s"
            cells.append(f"{a.guesses} guesses{', FOUND pw' if a.found else ''}; {stop}")
        lat = "" if r.legit_p50 is None else f", p50 {r.legit_p50:.2f}s max {r.legit_max:.1f}s"
        cells.append(f"{r.legit_ok}/{r.legit_total} ok ({r.legit_rate:.0%}){lat}")
        rows.append(cells)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    sep = "-+-".join("-" * w for w in widths)
    return "\n".join([fmt.format(*head), sep] + [fmt.format(*row) for row in rows])


def run(scenarios: str = "abcd", seconds: float = 60.0, workdir: Path | None = None) -> list[ScenarioResult]:
    workdir = workdir or Path(tempfile.gettempdir())
    return [run_scenario(s, seconds, workdir) for s in scenarios]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="attack length per scenario (default 60)")
    ap.add_argument("--scenarios", default="abcd", help="which of a,b,c,d (default all)")
    ap.add_argument("--json", metavar="FILE", help="also write the raw results as JSON")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("outcome.py needs root (network namespaces, daemons, iptables)", file=sys.stderr)
        return 3
    if not 10 <= a.seconds <= 600:
        print("--seconds must be 10-600", file=sys.stderr)
        return 2
    scen = a.scenarios.replace(",", "")
    t0 = time.monotonic()
    results = run(scen, a.seconds)
    print(f"Same attack, {a.seconds:.0f} s per scenario (guesses = password attempts dovecot/sshd logged):")
    print(table(results))
    for r in results:
        for n in r.notes:
            print(f"({r.scenario}) {n}")
    print(f"total {time.monotonic() - t0:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps([asdict(r) | {"legit_rate": r.legit_rate} for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
