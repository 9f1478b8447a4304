"""``popwatch watch`` (the default) and ``popwatch demo``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from typing import IO, TYPE_CHECKING, Any

from ..config import Config, parse_duration, parse_ports
from ..firewall.base import FirewallError, NeedsRoot

if TYPE_CHECKING:
    from ..monitor import Monitor


def _ports(value: str) -> list[int]:
    try:
        return parse_ports(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _duration(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0 < v <= 1000:
        raise argparse.ArgumentTypeError(f"{value!r} must be between 0 and 1000")
    return v


METRICS_PORT = 9177


def add_metrics_arguments(p: argparse.ArgumentParser) -> None:
    """``--metrics``, ``--metrics-textfile``, ``--metrics-allow-remote`` (see popwatch/metrics.py)."""
    p.add_argument("--metrics", metavar="[HOST:]PORT", help="serve Prometheus metrics over HTTP, e.g. "
                   f"127.0.0.1:{METRICS_PORT} (loopback only unless --metrics-allow-remote)")
    p.add_argument("--metrics-textfile", metavar="PATH", help="also write the metrics to PATH every 10 s "
                   "(atomically) for node_exporter's textfile collector; PATH should end in .prom")
    p.add_argument("--metrics-allow-remote", action="store_true", help="allow --metrics on a non-loopback "
                   "address (the endpoint has no authentication: firewall it)")


def start_exporters(monitor: Monitor, args: argparse.Namespace, cfg: Any = None) -> Any:
    from ..metrics import start_exporters as start

    return start(monitor, args, cfg)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    w = sub.add_parser("watch", parents=[common], help="watch live logs and firewall counters (default)",
                       description="Tail the auth logs and the firewall counters; show the live screen "
                                   "(or, with --no-tui, print events). Needs root to change the firewall; "
                                   "without it popwatch runs read-only.")
    w.add_argument("--log", action="append", metavar="PATH", default=[],
                   help="log file or glob to follow (repeatable). Default: discover /var/log/mail.log, "
                        "maillog, auth.log, secure, dovecot's log_path, else journald")
    w.add_argument("--journal", action="store_true", help="also read journald (journalctl -f -o json)")
    w.add_argument("--ports", type=_ports, metavar="LIST", help="watched TCP ports, e.g. 110,143,22 "
                   "(default from the config, else 110,143,22)")
    w.add_argument("--no-tui", action="store_true", help="run headless (as a service); see --events")
    w.add_argument("--events", metavar="FILE|-", help="write one JSON event per line to FILE or stdout")
    w.add_argument("--auto-ban", action="store_true", help="ban automatically after maxretry failures "
                   "within findtime (config [policy])")
    w.add_argument("--from-start", action="store_true", help="read log files from the beginning")
    w.add_argument("--backfill", metavar="N|DURATION", help="on start, read the last N lines or the last "
                   "DURATION (e.g. 10m) of each file to fill the table")
    w.add_argument("--duration", type=_duration, metavar="S", help="stop after S seconds (headless runs, tests)")
    add_metrics_arguments(w)
    w.set_defaults(func=run_watch)

    d = sub.add_parser("demo", parents=[common], help="a simulated attack on real log lines; no root needed",
                       description="Replay an attack built from real dovecot and OpenSSH lines against a "
                                   "simulated firewall. Ban, unban and tune limits as on a real server.")
    d.add_argument("--speed", type=_positive, default=1.0, metavar="X", help="scenario speed factor (default 1)")
    d.add_argument("--no-tui", action="store_true", help="run headless and print JSON events to stdout")
    d.add_argument("--duration", type=_duration, metavar="S", help="stop after S seconds (default: forever; "
                   "with --no-tui, 10)")
    d.add_argument("--seed", type=int, default=2009, help="random seed of the scenario (default 2009)")
    add_metrics_arguments(d)
    d.set_defaults(func=run_demo)


# ------------------------------------------------------------------------ demo

async def _run_for(monitor: Monitor, duration: float | None) -> None:
    task = asyncio.create_task(monitor.run())
    try:
        if duration is None:
            await task
        else:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), duration)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def run_demo(args: argparse.Namespace) -> int:
    from ..demo import build_demo

    if args.no_tui:
        monitor, _ = build_demo(speed=args.speed, seed=args.seed, events_out=sys.stdout)
        stop_exporters = start_exporters(monitor, args)
        try:
            asyncio.run(_run_for(monitor, args.duration if args.duration is not None else 10.0))
        finally:
            stop_exporters()
            monitor.close()
        return 0
    monitor, _ = build_demo(speed=args.speed, seed=args.seed)
    stop_exporters = start_exporters(monitor, args)
    from ..ui.app import make_app

    app = make_app(monitor, mode="demo", host="mail1 (demo)", exit_after=args.duration)
    try:
        app.run()
    finally:
        stop_exporters()
        monitor.close()
    return 0


# ----------------------------------------------------------------------- watch

def _open_events(spec: str | None) -> IO[str] | None:
    if spec is None:
        return None
    if spec == "-":
        return sys.stdout
    return open(spec, "a", encoding="utf-8", buffering=1)


def _make_firewall(cfg: Config, dry_run: bool) -> tuple[Any, str | None]:
    """The configured backend, or a read-only 'none' with the reason when we lack the rights
    or something the backend needs is missing (iptables, a kernel module)."""
    from ..firewall.base import NoFirewall
    from ..hostcheck import explain, short

    try:
        from ..firewall.detect import make_firewall
    except ImportError:  # pragma: no cover - during bring-up
        return NoFirewall(cfg.port_limits()), "firewall backends not available"
    try:
        return make_firewall(cfg.backend, ports=cfg.port_limits(), ipv6_prefix=cfg.policy.ipv6_prefix,
                             ban_action=cfg.policy.ban_action, allow=cfg.policy.allow,
                             dry_run=dry_run), None
    except NeedsRoot as e:
        return NoFirewall(cfg.port_limits(), needs_root=True, short="no root"), str(e)
    except FirewallError as e:
        why = explain(str(e))
        return NoFirewall(cfg.port_limits(), reason=why, short=short(why)), why


def _make_sources(cfg: Config, args: argparse.Namespace) -> list[Any]:
    from ..sources.discover import discover

    logs = list(args.log) or list(cfg.logs)
    kw: dict[str, Any] = {"from_start": args.from_start}
    backfill = getattr(args, "backfill", None)
    if backfill:  # the sources take the last N lines or the last DURATION seconds
        if str(backfill).strip().isdigit():
            kw["backfill_lines"] = int(backfill)
        else:
            kw["backfill_seconds"] = _duration(str(backfill))
    return discover(logs, True if args.journal else cfg.journal, **kw)


async def _headless(monitor: Monitor, duration: float | None) -> None:
    """Run until ``duration`` or SIGTERM/SIGINT, then shut down cleanly (state flushed)."""
    import signal

    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(_run_for(monitor, duration))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _say_problem(text: str, events_out: IO[str] | None) -> None:
    print(f"popwatch: warning: {text}", file=sys.stderr, flush=True)
    if events_out is not None:
        import json

        from ..model import iso
        events_out.write(json.dumps({"ts": iso(time.time()), "kind": "warning", "service": "popwatch",
                                     "ip": None, "user": None, "message": text}) + "\n")
        events_out.flush()


def run_watch(args: argparse.Namespace) -> int:
    cfg: Config = args.cfg
    if args.ports:
        cfg.ports = args.ports
    if args.auto_ban:
        cfg.policy.auto_ban = True
    dry_run = bool(getattr(args, "dry_run", False))
    from ..exitcodes import BUSY as EXIT_BUSY
    from ..parse import Parser
    from ..persist import AlreadyRunning, Persist

    persist = None
    if os.geteuid() == 0 and (not dry_run or cfg.state_dir.is_dir()):
        try:
            persist = Persist(cfg.state_dir, history_max=cfg.policy.history_max)
            if not dry_run:
                persist.lock()  # before any firewall change: one popwatch per state dir
                from ..firewall.detect import default_exempt
                persist.publish_exempt(default_exempt(cfg.policy.allow))
        except AlreadyRunning as e:
            print(f"popwatch: {e}", file=sys.stderr)
            return EXIT_BUSY
        except OSError as e:
            print(f"popwatch: state dir {cfg.state_dir}: {e.strerror}; bans will not persist",
                  file=sys.stderr)
            persist = None
    firewall, why_ro = _make_firewall(cfg, dry_run)
    from ..conns import established
    from ..monitor import Monitor
    from ..policy import Protector
    from ..store import StateStore

    store = StateStore(clock=time.time)
    events_out = _open_events(args.events)
    monitor = Monitor(store=store, parser=Parser(now=time.time, count_publickey=cfg.policy.count_publickey),
                      sources=_make_sources(cfg, args),
                      firewall=firewall, protector=Protector.from_env(cfg.policy.allow), persist=persist,
                      dry_run=dry_run, events_out=events_out, policy=cfg.policy,
                      default_ttl=cfg.policy.bantime, conns=None if args.no_tui else established,
                      campaign=cfg.campaign)
    if args.no_tui:  # what watch cannot do, once, on stderr and in the events stream
        monitor.on_problem.append(lambda text: _say_problem(text, events_out))
    try:
        plan = monitor.start_firewall(cfg.port_limits())
    except FirewallError as e:  # e.g. a kernel module missing, or uid 0 without CAP_NET_ADMIN
        from ..firewall.base import NoFirewall
        from ..hostcheck import explain, short

        why_ro = explain(str(e))
        firewall.close()
        monitor.firewall = firewall = NoFirewall(cfg.port_limits(), reason=why_ro, short=short(why_ro))
        plan = monitor.start_firewall(cfg.port_limits())
    if why_ro:
        monitor.say_once(f"read-only (watching only): {why_ro}")
    if cfg.policy.auto_ban and not dry_run and (why_ro or not firewall.can_write):
        monitor.say_once("auto-ban is on but cannot act: popwatch cannot change the firewall here "
                         f"({why_ro or 'backend ' + firewall.name + ' is read-only'})")
    if persist is None and not dry_run:
        monitor.say_once("no state directory: bans and the audit log will not be kept")
    from ..hostcheck import source_problems

    for line in source_problems(monitor.sources):
        monitor.say_once(line)
    for line in [*plan, *monitor.reconcile()]:
        if args.no_tui:
            print(f"popwatch: {line}" if not dry_run or line in plan else f"popwatch: dry run: {line}",
                  file=sys.stderr)
    if dry_run and args.no_tui:
        monitor.on_dry_run.append(lambda r: print(f"popwatch: {r.message}: {'; '.join(r.change)}",
                                                  file=sys.stderr, flush=True))
    mode = "dry-run" if dry_run else ("read-only" if why_ro or not firewall.can_write else "live")
    try:
        stop_exporters = start_exporters(monitor, args, cfg)  # --metrics, [crowdsec]
    except BaseException:
        monitor.close()
        raise
    try:
        if args.no_tui:
            asyncio.run(_headless(monitor, args.duration))
        else:
            from ..ui.app import make_app

            app = make_app(monitor, mode=mode, exit_after=args.duration)
            app.run()
    finally:
        stop_exporters()
        monitor.close()
        if events_out is not None and events_out is not sys.stdout:
            events_out.close()
    return 0
