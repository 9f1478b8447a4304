"""``popwatch undo [--any]``: revert the last ban, unban or limit change (the TUI's ``U``).

It reads the audit log in the state directory, so it undoes what any popwatch (TUI key, CLI)
did last; auto-bans are skipped unless ``--any``. Repeated undos walk further back. With
``--dry-run`` it prints the exact firewall change and applies nothing. Exit codes
(:mod:`popwatch.exitcodes`): 1 failed, 3 needs root, 4 refused (protected), 5 nothing to undo,
7 the state dir cannot be written.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("undo", parents=[common], help="revert the last ban, unban or limit change",
                       description="Revert the last action recorded in the state directory's audit "
                                   "log (a ban is lifted, an unban is re-applied with the time it had "
                                   "left, a limit change is reverted). Run again to go further back.")
    p.add_argument("--any", action="store_true", help="also undo automatic bans (default: only "
                                                      "actions made by a person)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..actions import Conflict, run_sync
    from ..exitcodes import CONFLICT, STATE
    from ..firewall.base import FirewallError, NeedsRoot
    from ..firewall.detect import make_firewall
    from ..monitor import Monitor
    from ..persist import Persist, StateDirError
    from ..policy import Protector, Refused
    from ..store import StateStore

    cfg = args.cfg
    dry = bool(getattr(args, "dry_run", False))
    if not cfg.state_dir.is_dir():
        print(f"popwatch: nothing to undo: no state directory {cfg.state_dir}", file=sys.stderr)
        return CONFLICT
    try:
        fw = make_firewall(cfg.backend, limits=cfg.port_limits(), ipv6_prefix=cfg.policy.ipv6_prefix,
                           ban_action=cfg.policy.ban_action, dry_run=dry)
    except NeedsRoot as e:
        print(f"popwatch: {e}", file=sys.stderr)
        return 3
    except FirewallError as e:
        print(f"popwatch: {e}", file=sys.stderr)
        return 1
    try:
        persist = Persist(cfg.state_dir, history_max=cfg.policy.history_max)
    except OSError as e:
        print(f"popwatch: state dir {cfg.state_dir}: {e.strerror}", file=sys.stderr)
        return STATE
    store = StateStore(clock=time.time)
    for b in persist.load_bans():
        store.set_ban(b)
    mon = Monitor(store=store, parser=None, firewall=fw, protector=Protector.from_env(cfg.policy.allow),
                  persist=persist, dry_run=dry, policy=cfg.policy, default_ttl=cfg.policy.bantime)
    try:
        r = run_sync(mon.actions.undo(include_auto=args.any))
    except Conflict as e:
        print(f"popwatch: {e}", file=sys.stderr)
        return CONFLICT
    except StateDirError as e:
        print(f"popwatch: {e}", file=sys.stderr)
        return STATE
    except Refused as e:
        print(f"popwatch: {e}", file=sys.stderr)
        return 4
    except NeedsRoot as e:
        print(f"popwatch: {e}", file=sys.stderr)
        return 3
    except (FirewallError, ValueError) as e:
        print(f"popwatch: undo failed: {e}", file=sys.stderr)
        return 1
    finally:
        mon.close()
    if dry:
        for line in r.change:
            print(line)
    print(r.message)
    return 0
