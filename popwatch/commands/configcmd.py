"""``popwatch config --print-default | --check``: the documented default configuration, and a
validation of the file in use.

The default text is a complete, commented TOML file: every key with its default value and what
it allows. It round-trips: loading it gives exactly the built-in defaults (a test checks this).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..config import BACKENDS, BAN_ACTIONS, DEFAULT_CONFIG, DEFAULT_STATE_DIR, SERVICES, Config, PolicyConfig
from ..model import fmt_duration


def _fmt_dur(secs: float) -> str:
    return fmt_duration(secs, exact=True)


def default_toml() -> str:
    """The default configuration as commented TOML (every key, its default, what is allowed)."""
    c = Config()
    p = PolicyConfig()
    d = _fmt_dur
    return f'''\
# popwatch configuration: {DEFAULT_CONFIG} (or --config FILE).
# Every key is optional; the values below are the defaults. Unknown keys and bad values are
# errors that name the key, the value and what is allowed.
# Durations: seconds, or N followed by s, m, h, d or w ("90", "10m", "1h", "2d", "1w").

# TCP ports to watch and rate-limit (1-65535). --ports overrides.
ports = {list(c.ports)}

# Log files or globs to follow. Empty: discover /var/log/mail.log, maillog, auth.log, secure,
# dovecot's log_path, else journald. --log overrides.
logs = []

# Read journald too (journalctl -f -o json). Unset: only when no syslog file exists.
# journal = true

# Firewall backend: {" | ".join(BACKENDS)}.
# auto reads `iptables --version`: nf_tables -> nft (iptables-nft binaries), legacy -> legacy
# (python-iptables); sim is simulated; none only watches.
backend = "{c.backend}"

# Where active bans, ban history, login history, the audit log and the instance lock live.
state_dir = "{DEFAULT_STATE_DIR}"

[policy]
# Ban automatically (also: watch --auto-ban, or the `a` key at runtime).
auto_ban = {str(p.auto_ban).lower()}
# fail2ban-style: ban an address after maxretry failed attempts within findtime. Attempts, not
# lines: dovecot's "(auth failed, 11 attempts ...)" counts 11. maxretry 1-100000.
maxretry = {p.maxretry}
# `Failed publickey` (a key offered and refused) counts as a failed attempt. Off: it is shown
# as a probe and not counted (an agent holding several keys writes it before a good login).
count_publickey = {str(p.count_publickey).lower()}
findtime = "{d(p.findtime)}"
# How long a ban lasts (in the kernel: ipset timeout, so it expires even if popwatch is down).
bantime = "{d(p.bantime)}"
# Never banned or rate-limited by any path (keys, CLI, auto-ban, mass ban): addresses or CIDRs.
# Also always protected: loopback, this host's own addresses, and your SSH client.
allow = []
# IPv6 bans and per-source limits cover this prefix (16-128): one /64 is one subscriber.
ipv6_prefix = {p.ipv6_prefix}
# What a ban does: {" | ".join(BAN_ACTIONS)} (reject answers with a TCP reset).
ban_action = "{p.ban_action}"
# Repeat offenders: bantime * recidive_factor ^ (earlier bans within recidive_window),
# at most recidive_max. recidive_factor 1-100 (1 = no growth).
recidive_factor = {p.recidive_factor:g}
recidive_max = "{d(p.recidive_max)}"
recidive_window = "{d(p.recidive_window)}"
# An address that logged in successfully within success_grace (0 = off) is auto-banned only
# after success_maxretry failed attempts within findtime (a stale password on a phone).
success_grace = "{d(p.success_grace)}"
success_maxretry = {p.success_maxretry}
# Per-username signal: a user name tried from user_ips or more addresses within findtime is
# targeted; an address failing on it is banned after user_maxretry attempts. user_ips 0 = off.
user_ips = {p.user_ips}
user_maxretry = {p.user_maxretry}
# Recent events kept in memory for what-if replays (the `w` key, scan --what-if): 15m-24h.
whatif_window = "{d(p.whatif_window)}"
# Past bans kept in the state directory (for recidive): 100-10000000 entries.
history_max = {p.history_max}

# Per-service overrides of maxretry, findtime and bantime; each such service counts in its own
# window. Services: {", ".join(SERVICES)}.
# [policy.services.ssh]
# maxretry = 3
# findtime = "1h"
# bantime = "1d"

# Per-port rate limits for new TCP connections. A port listed here is watched too.
# mode: count (no limit, only count), global (-m limit: one bucket shared by everyone),
#       per-source (-m hashlimit: one bucket per address, ipv6_prefix for IPv6).
# rate: N/second, N/minute, N/hour or N/day (also 5/s, 10/min); at most 10000/second.
# burst: 1-10000 new connections at once. Unlisted ports: mode count, rate 1/second, burst 5.
# [limits.110]
# mode = "global"
# rate = "1/second"
# burst = 5
''' + _module_sections()


def _module_sections() -> str:
    """The optional tables (``[crowdsec]``, ``[campaign]``), each as its commented TOML."""
    from ..config import CAMPAIGN_DOC, CROWDSEC_DOC

    return "".join("\n" + doc.rstrip("\n") + "\n" for doc in (CROWDSEC_DOC, CAMPAIGN_DOC))


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("config", parents=[common], help="print the documented default config, or check one",
                       description="--print-default prints every configuration key with its default "
                                   "value and what it allows, as a TOML file you can start from. "
                                   "--check loads the config (--config FILE or the default path) and "
                                   "reports the first error, exit 2.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--print-default", action="store_true", help="print the default config as commented TOML")
    g.add_argument("--check", action="store_true", help="validate the config file and summarise it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.print_default:
        sys.stdout.write(default_toml())
        return 0
    cfg: Config = args.cfg  # loading it already validated it (errors exit 2 in cli.main)
    p = cfg.policy
    src = cfg.source_path or f"{DEFAULT_CONFIG} (absent: built-in defaults)"
    print(f"config {src}: ok")
    print(f"  ports {','.join(map(str, cfg.ports))}  backend {cfg.backend}  state_dir {cfg.state_dir}")
    print(f"  auto_ban {'on' if p.auto_ban else 'off'}: maxretry {p.maxretry} within {_fmt_dur(p.findtime)}, "
          f"bantime {_fmt_dur(p.bantime)} (x{p.recidive_factor:g} per repeat, at most {_fmt_dur(p.recidive_max)})")
    for name in p.services:
        mr, ft, bt = p.for_service(name)
        print(f"  {name}: maxretry {mr} within {_fmt_dur(ft)}, bantime {_fmt_dur(bt)}")
    if p.allow:
        print(f"  allow {', '.join(p.allow)}")
    for port, lim in sorted(cfg.limits.items()):
        print(f"  port {port}: {lim.describe()}")
    return 0
