"""Issue 15: distributed and low-and-slow attacks in the real-attack lab, with and without the
campaign response (``[campaign] auto_ban``).

Three attacks at once, while the mailbox's owner (alice, from the ``legit`` host 203.0.113.50)
logs in every 3 s after one typo:

* **v4 swarm**: 60 addresses of 198.51.100.0/24 (added to ``a3``), 2 POP3 guesses each at
  alice, round robin;
* **v6 swarm**: 40 addresses in 40 different /48s (2001:db8:100::5 ... 2001:db8:127::5, added
  to ``a4``), 2 guesses each at the mailbox ``test`` (another mailbox, so that the three
  attacks are measured independently in one run);
* **slow**: one address (``a2``, 203.0.113.11) guessing bob's password every 6 s, 10 guesses,
  each waiting for its answer (dovecot's auth penalty, up to 15 s, is not compressed, so
  the guesses end up 6-17 s apart).

Durations are compressed for CI, same shape: the v4 swarm's two minutes become 40 s (x3), the
v6 swarm's minute 20 s (x3), the slow attacker's 30 s spacing 6 s (x5) with its window and
rates scaled alike (``findtime`` 20 s so no per-address threshold sees it; ``slow_window``
10m, ``slow_maxretry`` 5, ``slow_rate`` 15/min; dovecot's uncompressed auth penalty lets the
slow attacker make about 7 guesses in the 85 s the run lasts, so it is banned at its 5th). The attackers' /24 is 198.51.100.0/24, not
the owner's 203.0.113.0/24: a network holding a known-good address is never banned (see
tests/unit/test_campaigns.py).

Ground truth is dovecot's own ``auth_verbose`` lines (``mailab.guesses``).
"""

from __future__ import annotations

import ipaddress
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need_tools

from .conftest import LAB_TOOLS
from .mailab import MAIL_ACCOUNTS, PASSWORDS, MailLab, audit_bans, guesses, read_jsonl

pytestmark = [pytest.mark.daemons, pytest.mark.netns]

V4 = [f"198.51.100.{100 + i}" for i in range(60)]
V6 = [f"2001:db8:{0x100 + i:x}::5" for i in range(40)]
SLOW = "203.0.113.11"
OWNER = "203.0.113.50"
V4_SECONDS, V6_SECONDS, SLOW_GAP, SLOW_GUESSES, SLOW_SECONDS = 40, 20, 6.0, 10, 85.0
#: no mailbox's real password is ever guessed (the mailbox is not cracked, whatever happens)
WORDS = [p for p in PASSWORDS if p not in MAIL_ACCOUNTS.values()]

CAMPAIGN = """
[campaign]
auto_ban = {on}
window = "5m"
user_sources = 5
net_sources = 4
slow_window = "10m"
slow_maxretry = 5
slow_rate = 15
bantime = "1h"
net_bantime = "1h"
"""


def add_sources(lab: MailLab) -> None:
    for ip in V4:
        lab.lab._ip("-n", lab.hosts["a3"].ns, "addr", "add", f"{ip}/32", "dev", "eth0")
    for ip in V6:
        lab.lab._ip("-n", lab.hosts["a4"].ns, "-6", "addr", "add", f"{ip}/128", "dev", "eth0", "nodad")


def swarm(lab: MailLab, key: str, srcs: list[str], *, user: str, guesses_each: int, seconds: float,
          out: Path, family: int, timeout: float = 3.0) -> Any:
    import sys
    argv = [sys.executable, "-m", "tests.e2e.tools.swarm", "--host", lab.target(family), "--sources",
            ",".join(srcs), "--user", user, "--passwords", ",".join(WORDS), "--guesses",
            str(guesses_each), "--seconds", str(seconds), "--timeout", str(timeout), "--out", str(out)]
    from tests.netns.nslab import REPO
    return lab.spawn(f"swarm-{out.stem}", lab.in_client(key, argv), cwd=REPO)


def run_mode(lab: MailLab, tmp: Path, *, campaign: bool, known: Path | None = None) -> dict[str, Any]:
    tag = "on" if campaign else "off"
    state = lab.tmp / f"state-{tag}"
    cfg = lab.write_config(f"popwatch-{tag}.toml", maxretry=5, findtime="20s", bantime="1h")
    cfg.write_text(cfg.read_text() + CAMPAIGN.format(on=str(campaign).lower()))
    events = tmp / f"events-{tag}.jsonl"
    if known is not None:  # the owner's address is known: it logged in before (logins.json)
        state.mkdir(parents=True, exist_ok=True)
        (state / "logins.json").write_bytes(known.read_bytes())
    pw = lab.popwatch(config=cfg, events=events, state_dir=state, label=f"popwatch-{tag}")
    lab.wait_for(lambda: lab.firewall_ready("nft"), 30, "popwatch's firewall", [pw])
    time.sleep(1.0)  # popwatch follows the logs from their end: let it open them
    t0 = time.time()
    # the owner: one typo, then a login every 3 s
    typo = tmp / f"typo-{tag}.jsonl"
    lab.mailclient("legit", "legit", out=typo, user="alice", password="Wonderland-2008", seconds=5,
                   interval=1, max_attempts=1, timeout=5)
    lab.wait_for(lambda: len(read_jsonl(typo)) >= 1, 20, "the owner's typo")
    legit_out = tmp / f"legit-{tag}.jsonl"
    legit = lab.mailclient("legit", "legit", out=legit_out, user="alice", password=MAIL_ACCOUNTS["alice"],
                           seconds=SLOW_SECONDS, interval=3.0, proto="pop3", timeout=5,
                           max_attempts=int(SLOW_SECONDS / 3) + 2)
    lab.wait_for(lambda: any(r.get("ok") for r in read_jsonl(legit_out)), 20, "the owner's first login", [legit])
    time.sleep(1.0)  # its login line is in the log and ingested
    t_attack = time.time()
    procs = [
        swarm(lab, "a3", V4, user="alice", guesses_each=2, seconds=V4_SECONDS, out=tmp / f"v4-{tag}.jsonl", family=4),
        swarm(lab, "a4", V6, user="test", guesses_each=2, seconds=V6_SECONDS, out=tmp / f"v6-{tag}.jsonl", family=6),
        swarm(lab, "a2", [SLOW], user="bob", guesses_each=SLOW_GUESSES, seconds=SLOW_GAP * SLOW_GUESSES,
              out=tmp / f"slow-{tag}.jsonl", family=4, timeout=20),
    ]
    deadline = time.monotonic() + SLOW_SECONDS
    while time.monotonic() < deadline and any(p.popen.poll() is None for p in procs):
        time.sleep(0.5)
    for p in procs:
        lab.stop(p)
    lab.wait_for(lambda: legit.popen.poll() is not None, 60, "the owner's client to finish")
    # close what the bans left open (dovecot writes the summary lines now, to this popwatch and
    # not the next mode's), and a fresh dovecot forgets its per-IP auth penalties
    for net in ("198.51.100.0/24", "2001:db8::/32", SLOW):
        lab.run_server(["ss", "-K", "-tn", "dst", net], check=False)
    time.sleep(1.0)
    lab.restart_dovecot()
    time.sleep(2.0)
    lab.stop(pw, sig=signal.SIGINT, wait=15)
    t_end = time.time()
    lab.uninstall_firewall("nft")
    g = [x for x in guesses(lab.mail_log, lab.auth_log) if t0 - 1 <= x.ts <= t_end]
    bans = audit_bans(state)
    res: dict[str, Any] = {"mode": tag, "bans": bans,
                           "campaign_events": [e for e in read_jsonl(events) if e.get("type") == "campaign"]}
    for name, srcs, total in (("v4", V4, 120), ("v6", V6, 80), ("slow", [SLOW], SLOW_GUESSES)):
        fails = [x for x in g if x.ip in srcs and not x.ok]
        recs = read_jsonl(tmp / f"{name}-{tag}.jsonl")
        nets = [ipaddress.ip_network(s_) for s_ in srcs]
        banned = {t for t in bans if any(ipaddress.ip_network(t, strict=False).overlaps(n) for n in nets)}
        res[name] = {"reached": len(fails), "of": total, "tried": len(recs),
                     # dropped by a ban: no connection, or no answer on one opened just before it
                     "blocked": sum(1 for r in recs if r["result"] in ("blocked", "error")),
                     "found": sum(1 for r in recs if r["result"] == "found") + sum(1 for x in g if x.ip in srcs and x.ok),
                     "stop": (max(x.ts for x in fails) - t_attack) if fails else 0.0,
                     "bans": len(banned), "nets": sorted(t for t in banned if "/" in t)}
    own = read_jsonl(legit_out)
    res["owner"] = {"ok": sum(1 for r in own if r.get("ok")), "total": len(own),
                    "refused": [r for r in own if not r.get("ok")][:3], "banned": OWNER in bans,
                    "typo_failed": [r.get("ok") for r in read_jsonl(typo)] == [False]}
    if res["slow"]["reached"] and SLOW in bans:
        slow_fails = sorted(x.ts for x in g if x.ip == SLOW and not x.ok)
        res["slow"]["banned_after"] = sum(1 for t in slow_fails if t <= bans[SLOW]["t"] + 0.5)
    return res


def table(rows: list[dict[str, Any]]) -> str:
    out = [(f"{'campaign response':<18}{'attack':<8}{'guesses reaching dovecot':>26}{'no answer':>11}"
            f"{'time to stop':>14}{'bans':>6}  networks banned")]
    for r in rows:
        for name in ("v4", "v6", "slow"):
            a = r[name]
            stop = f"{a['stop']:.1f} s" if a["reached"] else "-"
            out.append(f"{r['mode']:<18}{name:<8}{a['reached']:>18} of {a['of']:<4}{a['blocked']:>11}{stop:>14}"
                       f"{a['bans']:>6}  {', '.join(a['nets']) or '-'}")
        o = r["owner"]
        out.append(f"{r['mode']:<18}{'owner':<8}{o['ok']:>18} of {o['total']:<4} logins ok; banned: {o['banned']}")
    return "\n".join(out)


def test_campaign_response_stops_distributed_and_slow_attacks(maillab: MailLab, tmp_path: Path) -> None:
    need_tools(*LAB_TOOLS)
    lab = maillab
    add_sources(lab)
    off = run_mode(lab, tmp_path, campaign=False)  # ends with a fresh dovecot (no auth penalties)
    # the owner's address is known from the first run's login history, as it would be on a
    # server where the owner has been checking mail
    known = lab.tmp / "state-off" / "logins.json"
    assert "203.0.113.50" in known.read_text()
    on = run_mode(lab, tmp_path, campaign=True, known=known)
    print("\n" + table([off, on]))
    print(json.dumps({k: on[k] for k in ("v4", "v6", "slow", "owner")}, default=str))
    # without the campaign response nothing stops the swarms before they are done
    assert off["v4"]["reached"] >= 100 and off["v6"]["reached"] >= 70, table([off, on])
    # with it: issue 15's targets
    assert on["v4"]["reached"] <= 30, table([off, on])
    assert on["v6"]["reached"] <= 50, table([off, on])
    assert on["v4"]["found"] == on["v6"]["found"] == on["slow"]["found"] == 0
    assert SLOW in on["bans"] and on["bans"][SLOW].get("origin") == "campaign"
    # banned at its long-window threshold, long before its 8th guess: the next ones are dropped
    assert on["slow"]["reached"] <= 5 < off["slow"]["reached"], table([off, on])
    assert SLOW not in off["bans"]  # no per-address threshold saw it
    o = on["owner"]
    assert o["typo_failed"] and o["total"] >= 8 and o["ok"] == o["total"] and not o["banned"], o
    assert any(e["event"] == "start" and e["target"].startswith("alice@") for e in on["campaign_events"])
    assert all(b.get("origin") in ("campaign", "auto") for b in on["bans"].values())
