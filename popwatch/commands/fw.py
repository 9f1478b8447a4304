"""Firewall subcommands: ``ban``, ``unban``, ``bans``, ``limit``, ``status``, ``uninstall``.

Every change goes through the same :class:`~popwatch.monitor.Monitor` action methods the TUI
keys and auto-ban use (policy check -> audit log, written ahead -> firewall -> state dir).
Exit codes: :mod:`popwatch.exitcodes`.

``bans`` and ``status`` read the kernel (the source of truth for what is banned and for the
counters) and join it with the state dir's records (reason, origin).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..actions import run_sync
from ..addr import AddressError, parse_target
from ..config import Config, parse_duration
from ..exitcodes import CONFLICT as EXIT_CONFLICT
from ..exitcodes import STATE as EXIT_STATE
from ..firewall.base import Firewall, FirewallError, NeedsRoot
from ..firewall.rules import MAX_TIMEOUT
from ..model import MODES, Ban, PortLimit, Rate, iso, parse_burst

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_ROOT, EXIT_PROTECTED = 0, 1, 2, 3, 4
_FOREVER = ("0", "forever", "permanent", "never", "none")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("ban", parents=[common], help="ban an address (kernel ipset, with a timeout)",
                       description="Ban one address (IPv6: its /64, or the configured prefix) in "
                                   "the kernel's ban set; the ban expires in the kernel after --ttl.")
    p.add_argument("ip", help="IPv4 or IPv6 address (hostnames are refused); a network with --net")
    p.add_argument("--ttl", default=None,
                   help="how long: 90s, 10m, 1h, 2d, 1w, or 'forever' (default: policy bantime, 1h)")
    p.add_argument("--reason", default="", help="free text kept with the ban")
    p.add_argument("--net", action="store_true", help="allow a network (CIDR) instead of one address")
    p.set_defaults(func=run_ban)

    p = sub.add_parser("unban", parents=[common], help="lift a ban")
    p.add_argument("ip", help="the address (or, with --net, network) to unban")
    p.add_argument("--net", action="store_true", help="the target is a network (CIDR)")
    p.set_defaults(func=run_unban)

    p = sub.add_parser("bans", parents=[common], help="list active bans")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=run_bans)

    p = sub.add_parser("limit", parents=[common], help="show or change one port's rate limit",
                       description="Without options: show the port's rule. With --rate/--burst/--mode: "
                                   "replace the port's rules atomically, carrying the counters over.")
    p.add_argument("port", help="TCP port, e.g. 110")
    p.add_argument("--rate", help="N/second, N/minute, N/hour or N/day (e.g. 5/second)")
    p.add_argument("--burst", help="bucket size: how many new connections may come at once")
    p.add_argument("--mode", choices=MODES, help="count (no limit), global (one bucket for everyone), "
                                                  "per-source (a bucket per address, /64 for IPv6)")
    p.set_defaults(func=run_limit)

    p = sub.add_parser("status", parents=[common], help="ports, limits, counters, bans, warnings")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_status)

    p = sub.add_parser("uninstall", parents=[common],
                       help="remove everything popwatch added to the firewall (chains, jump, sets)")
    p.set_defaults(func=run_uninstall)


# ------------------------------------------------------------------------------ plumbing

class _Exit(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _err(code: int, message: str) -> int:
    print(f"popwatch: {message}", file=sys.stderr)
    return code


def _dry(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "dry_run", False))


def _firewall(cfg: Config, dry_run: bool) -> Firewall:
    from ..firewall.detect import default_exempt, make_firewall
    from ..persist import watch_exempt

    # exactly the protected set of this call, plus what a running watch protects
    exempt = default_exempt(cfg.policy.allow) + watch_exempt(cfg.state_dir)
    try:
        return make_firewall(cfg.backend, limits=cfg.port_limits(), ipv6_prefix=cfg.policy.ipv6_prefix,
                             ban_action=getattr(cfg.policy, "ban_action", "drop"), dry_run=dry_run,
                             allow=cfg.policy.allow, exempt=exempt)
    except NeedsRoot as e:
        raise _Exit(EXIT_ROOT, str(e)) from None
    except FirewallError as e:
        from ..hostcheck import explain

        raise _Exit(EXIT_FAIL, explain(str(e))) from None


def _monitor(cfg: Config, fw: Firewall, dry_run: bool) -> Any:
    """A Monitor for one action: the same policy/audit/state path as the TUI."""
    from ..monitor import Monitor
    from ..persist import Persist
    from ..policy import Protector
    from ..store import StateStore

    store = StateStore(clock=time.time)
    persist = None
    if not dry_run:
        try:
            persist = Persist(cfg.state_dir)
        except OSError as e:
            raise _Exit(EXIT_STATE, f"state dir {cfg.state_dir}: {e.strerror}") from None
        for b in persist.load_bans():  # keep the other bans' records when this one is saved
            store.set_ban(b)
    return Monitor(store=store, parser=None, firewall=fw, protector=Protector.from_env(cfg.policy.allow),
                   persist=persist, dry_run=dry_run, default_ttl=cfg.policy.bantime)


def _records(cfg: Config) -> list[Ban]:
    from ..persist import Persist

    try:
        if not cfg.state_dir.is_dir():
            return []
        return Persist(cfg.state_dir).load_bans()
    except OSError:
        return []


def _guard(fn: Any, args: argparse.Namespace) -> int:
    from ..actions import Conflict
    from ..persist import StateDirError
    from ..policy import Refused

    try:
        return int(fn(args) or 0)
    except _Exit as e:
        return _err(e.code, str(e))
    except Conflict as e:
        return _err(EXIT_CONFLICT, str(e))
    except Refused as e:
        return _err(EXIT_PROTECTED, str(e))
    except StateDirError as e:
        return _err(EXIT_STATE, str(e))
    except NeedsRoot as e:
        return _err(EXIT_ROOT, str(e))
    except (AddressError, ValueError) as e:
        return _err(EXIT_USAGE, str(e))
    except FirewallError as e:
        from ..hostcheck import explain

        return _err(EXIT_FAIL, explain(str(e)))
    except OSError as e:  # the state dir (or the lock) in a way not foreseen: still one line
        return _err(EXIT_STATE, f"state dir {args.cfg.state_dir}: {e.strerror or e}")


def _refresh_exempt(cfg: Config, fw: Firewall) -> None:
    """The exemptions are exactly this call's protected set (plus a running watch's), also for
    commands that build nothing (``unban``); nothing to refresh when popwatch is not installed."""
    from ..firewall.detect import default_exempt
    from ..persist import watch_exempt

    try:
        fw.set_exempt(default_exempt(cfg.policy.allow) + watch_exempt(cfg.state_dir))
    except FirewallError:
        pass  # no sets to refresh: popwatch's rules are not in place


def _ensure_base(fw: Firewall, dry_run: bool) -> list[str]:
    """Sets, chain, ban rule and jump (never the ports' rules, which may have been tuned live)."""
    if fw.name == "none":
        raise _Exit(EXIT_USAGE, "backend none only monitors: it cannot change the firewall "
                                "(use --backend auto, nft or legacy)")
    if not fw.can_write and not dry_run:
        raise FirewallError(next(iter(fw.warnings()), f"backend {fw.name} cannot change the firewall"))
    if dry_run:
        with fw.recording() as plan:
            fw.ensure_base()
        return plan
    fw.ensure_base()
    return []


def _ttl(text: str | None, default: float | None) -> float | None:
    if text is None:
        return default
    if text.strip().lower() in _FOREVER:
        return None
    secs = parse_duration(text, "ttl")
    if secs > MAX_TIMEOUT:
        raise ValueError(f"ttl {text[:40]!r} is longer than the kernel's ban set can hold: at most "
                         f"{MAX_TIMEOUT} s (24.8 days); use --ttl forever for a permanent ban")
    return secs


# ------------------------------------------------------------------------------ ban / unban

def run_ban(args: argparse.Namespace) -> int:
    return _guard(_ban, args)


def _ban(args: argparse.Namespace) -> int:
    cfg: Config = args.cfg
    dry = _dry(args)
    target = str(parse_target(args.ip, allow_net=args.net))  # exit 2 before anything runs
    ttl = _ttl(args.ttl, cfg.policy.bantime)
    fw = _firewall(cfg, dry)
    mon = _monitor(cfg, fw, dry)
    from ..policy import Refused

    # refuse before anything is installed (the Monitor checks the same again on its path)
    why = mon.protector.why_protected(target)
    try:
        entry = fw.ban_key(target, net=args.net or None)
    except FirewallError as e:  # e.g. a network too large for the set: a bad value
        raise ValueError(str(e)) from None
    if why is None and entry != target:  # an IPv6 ban covers its /64
        why2 = mon.protector.why_protected(entry)
        why = f"banning {target} bans all of {entry}: {why2}" if why2 else None
    if why is None:
        why = _watch_protects(cfg, entry)
    if why:
        raise Refused(f"refused: {why}")
    plan = _ensure_base(fw, dry)
    r = run_sync(mon.actions.ban(target, ttl=ttl, reason=args.reason, origin="cli", allow_net=args.net))
    for line in plan + list(r.change if dry else ()):
        print(line)
    print(r.message, file=sys.stderr if dry else sys.stdout)
    return EXIT_OK


def _watch_protects(cfg: Config, entry: str) -> str | None:
    """A running watch's protected sources (its SSH client...) stay exempt in the kernel: a ban
    there would be printed but not enforced, so it is refused."""
    import ipaddress

    from ..persist import watch_exempt

    try:
        target = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None
    for e in watch_exempt(cfg.state_dir):
        try:
            net = ipaddress.ip_network(e, strict=False)
        except ValueError:
            continue
        if net.version == target.version and net.overlaps(target):
            return (f"{entry} is protected by the running popwatch watch ({net}: its SSH client, "
                    f"allow-list or host addresses)")
    return None


def run_unban(args: argparse.Namespace) -> int:
    return _guard(_unban, args)


def _unban(args: argparse.Namespace) -> int:
    cfg: Config = args.cfg
    dry = _dry(args)
    target = str(parse_target(args.ip, allow_net=args.net))
    fw = _firewall(cfg, dry)
    if fw.name == "none":
        raise _Exit(EXIT_USAGE, "backend none only monitors: it cannot change the firewall")
    if not fw.can_write and not dry:
        raise FirewallError(next(iter(fw.warnings()), f"backend {fw.name} cannot change the firewall"))
    mon = _monitor(cfg, fw, dry)
    if dry:
        for line in fw.describe_unban(target):
            print(line)
    else:
        _refresh_exempt(cfg, fw)
    r = run_sync(mon.actions.unban(target, origin="cli"))
    print(r.message, file=sys.stderr if dry else sys.stdout)
    return EXIT_OK


# ------------------------------------------------------------------------------ bans

def active_bans(fw: Firewall, records: list[Ban], now: float) -> list[dict[str, Any]]:
    """Kernel entries joined with the state dir's records (reason, origin)."""
    kernel = fw.bans()
    by_entry: dict[str, Ban] = {}
    for b in records:
        try:
            entry = fw.ban_key(b.ip)
        except (FirewallError, ValueError):
            continue
        by_entry.setdefault(entry, b)
    import ipaddress

    nets = [(ipaddress.ip_network(b.ip), b) for b in records if "/" in b.ip and ":" not in b.ip]
    out = []
    shown_nets: set[str] = set()
    for entry in sorted(kernel, key=_sort_key):
        left = kernel[entry]
        rec = by_entry.get(entry)
        if rec is None and nets and ":" not in entry and "/" not in entry:
            # a member of a recorded IPv4 network ban (hash:ip holds each address): one row
            a = ipaddress.ip_address(entry)
            net = next((b for n, b in nets if a in n), None)
            if net is not None:
                if net.ip not in shown_nets:
                    shown_nets.add(net.ip)
                    out.append({"ip": net.ip, "expires": None if net.expires is None else iso(net.expires),
                                "reason": net.reason, "origin": net.origin})
                continue
        out.append({
            "ip": rec.ip if rec else entry,
            "expires": None if left is None else iso(now + left),
            "reason": rec.reason if rec else "",
            "origin": rec.origin if rec else "kernel",
        } | ({"entry": entry} if rec and rec.ip != entry else {}))
    return out


def _sort_key(entry: str) -> tuple[int, Any]:
    import ipaddress

    try:
        n = ipaddress.ip_network(entry, strict=False)
        return (n.version, n.network_address.packed, n.prefixlen)  # type: ignore[return-value]  # a sort key of mixed types by address family
    except ValueError:
        return (9, entry)


def run_bans(args: argparse.Namespace) -> int:
    return _guard(_bans, args)


def _bans(args: argparse.Namespace) -> int:
    cfg: Config = args.cfg
    fw = _firewall(cfg, _dry(args))
    rows = active_bans(fw, _records(cfg), time.time())
    if args.json:
        print(json.dumps(rows, indent=1))
        return EXIT_OK
    if not rows:
        print("no active bans")
        return EXIT_OK
    from ..sanitize import clean_field

    for r in rows:
        exp = r["expires"] or "never"
        what = r["ip"] + (f" ({r['entry']})" if "entry" in r else "")
        print(f"{what:<42} expires {exp:<32} {r['origin']:<6} {clean_field(r['reason'], 200)}")
    return EXIT_OK


# ------------------------------------------------------------------------------ limit

def run_limit(args: argparse.Namespace) -> int:
    return _guard(_limit, args)


def _limit(args: argparse.Namespace) -> int:
    cfg: Config = args.cfg
    dry = _dry(args)
    try:
        if not str(args.port).isascii():
            raise ValueError
        port = int(str(args.port))
        if not 1 <= port <= 65535:
            raise ValueError
    except ValueError:
        raise ValueError(f"bad port {str(args.port)[:40]!r}: expected a number 1-65535 (ASCII digits)") from None
    rate = Rate.parse(args.rate) if args.rate is not None else None
    burst = parse_burst(args.burst) if args.burst is not None else None
    fw = _firewall(cfg, dry)
    current = fw.limits().get(port) or cfg.limit_for(port)
    if rate is None and burst is None and args.mode is None:
        print(f"port {port}: {current.describe()} - {current.meaning()}")
        return EXIT_OK
    new = PortLimit(port, args.mode or current.mode, rate or current.rate, burst or current.burst)
    if args.mode is None and current.mode == "count" and (rate or burst):
        raise ValueError(f"port {port} only counts (mode count): pass --mode global or "
                         f"--mode per-source to make --rate/--burst take effect")
    plan = _ensure_base(fw, dry)
    mon = _monitor(cfg, fw, dry)
    if dry:
        plan += fw.describe_limit(new) if fw.limits() else []
    r = run_sync(mon.actions.set_limit(new, origin="cli"))
    for line in plan:
        print(line)
    print(r.message, file=sys.stderr if dry else sys.stdout)
    if not dry:
        print(new.meaning())
    return EXIT_OK


# ------------------------------------------------------------------------------ status

def status_dict(cfg: Config, fw: Firewall) -> dict[str, Any]:
    limits = fw.limits()
    counters = fw.counters() if limits else {}
    ports = []
    order = list(cfg.ports) + [p for p in limits if p not in cfg.ports]
    for port in order:
        lim = limits.get(port) or cfg.limit_for(port)
        c = counters.get(port)
        ports.append({"port": port, "mode": lim.mode, "rate": str(lim.rate), "burst": lim.burst,
                      "passed": c.passed if c else 0, "dropped": c.dropped if c else 0,
                      "installed": port in limits})
    try:
        exempt = list(fw.exempted())
    except FirewallError:
        exempt = []
    from ..heal import status_warnings

    return {"backend": fw.name, "backend_why": fw.why, "ports": ports, "bans": len(fw.bans()),
            "banned_dropped": fw.banned_dropped(), "warnings": fw.warnings() + status_warnings(cfg.state_dir, fw),
            "exempt": exempt}


def run_status(args: argparse.Namespace) -> int:
    return _guard(_status, args)


def _status(args: argparse.Namespace) -> int:
    cfg: Config = args.cfg
    fw = _firewall(cfg, _dry(args))
    st = status_dict(cfg, fw)
    if args.json:
        print(json.dumps(st, indent=1))
        return EXIT_OK
    why = f" ({st['backend_why']})" if st["backend_why"] else ""
    print(f"backend: {st['backend']}{why}    bans: {st['bans']}    dropped by bans: {st['banned_dropped']}")
    for p in st["ports"]:
        lim = "count only" if p["mode"] == "count" else f"{p['mode']} {p['rate']} burst {p['burst']}"
        state = "" if p["installed"] else "   (not installed)"
        print(f"  {p['port']:>5}/tcp  {lim:<32} passed {p['passed']:>8}  dropped {p['dropped']:>8}{state}")
    if st["exempt"]:
        print(f"exempt (never banned or limited): {', '.join(st['exempt'])}")
    for w in st["warnings"]:
        print(f"warning: {w}")
    return EXIT_OK


# ------------------------------------------------------------------------------ uninstall

def run_uninstall(args: argparse.Namespace) -> int:
    return _guard(_uninstall, args)


def _uninstall(args: argparse.Namespace) -> int:
    cfg: Config = args.cfg
    dry = _dry(args)
    from ..persist import AlreadyRunning, Persist

    running = None
    if not dry and cfg.state_dir.is_dir():
        try:  # a running watch is told through the marker below: it stands down and says so
            p = Persist(cfg.state_dir)
            p.lock()
            p.unlock()
        except AlreadyRunning as e:
            running = str(e)
        except OSError:
            pass  # an unwritable state dir does not stop an uninstall
    fw = _firewall(cfg, dry)
    if dry:
        for line in fw.describe_uninstall():
            print(line)
        return EXIT_OK
    from ..heal import mark_uninstalled

    mark_uninstalled(cfg.state_dir)  # first: a running popwatch must not put the rules back
    fw.uninstall()
    for w in fw.warnings():
        print(f"warning: {w}", file=sys.stderr)
    print(f"removed popwatch's chains, jumps and ban sets ({fw.name})")
    if running is not None:
        print("the running popwatch watch stops enforcing and keeps watching (read-only); "
              "restart it to install the rules again")
    return EXIT_OK
