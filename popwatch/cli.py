"""Command line: argparse subcommands. Each subcommand lives in ``popwatch/commands/<name>.py``
and exposes ``register(subparsers, common)``, which adds its parser(s) with
``set_defaults(func=run)``; ``run(args) -> int`` gets the parsed args with ``args.cfg`` (the
loaded :class:`~popwatch.config.Config`, command-line overrides applied).

Exit codes: :mod:`popwatch.exitcodes` (one set for every command; README "Exit codes").
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from . import __version__
from .config import BACKENDS, ConfigError, load

EXIT_OK, EXIT_USAGE, EXIT_ROOT, EXIT_PROTECTED = 0, 2, 3, 4

#: subcommand modules, in help order
COMMAND_MODULES = ("watch", "scan", "fw", "undo", "configcmd", "doctor")


class UsageError(Exception):
    """Bad usage or value found after parsing; exit 2 with this one line."""


class _Parser(argparse.ArgumentParser):
    """One clear line on stderr and exit 2, instead of argparse's usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]  # argparse declares error() -> NoReturn; ours raises too
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _common(default_suppress: bool) -> argparse.ArgumentParser:
    """Global options, accepted before or after the subcommand."""
    d = argparse.SUPPRESS if default_suppress else None
    p = _Parser(add_help=False)
    g = p.add_argument_group("global options")
    g.add_argument("--backend", choices=BACKENDS, default=d,
                   help="firewall backend: auto (detect from `iptables --version`), legacy "
                        "(python-iptables), nft (iptables-nft binaries), nftables (popwatch's own "
                        "nft table), sim (simulated), none "
                        "(monitor only). Default: auto, or `backend` in the config")
    g.add_argument("--config", metavar="FILE", type=Path, default=d,
                   help="TOML config file (default /etc/popwatch/popwatch.toml if it exists)")
    g.add_argument("--state-dir", metavar="DIR", type=Path, default=d,
                   help="where bans, history and the audit log live (default /var/lib/popwatch)")
    g.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS if default_suppress else False,
                   help="show the exact firewall changes, apply nothing")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="popwatch",
        parents=[_common(False)],
        description="Watch a mail/SSH server under a dictionary attack: live attacker table, "
                    "per-port connection rates, one-key bans, live --limit/--limit-burst tuning.",
        epilog="Run `popwatch demo` to try it without root. With no subcommand, `watch` runs.",
    )
    parser.add_argument("--version", action="version", version=f"popwatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    common = _common(True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"popwatch.commands.{name}").register(sub, common)
    return parser


def _subcommand_names(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def _with_default_command(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``popwatch --log X`` means ``popwatch watch --log X``."""
    names = _subcommand_names(parser)
    if any(a in ("-h", "--help", "--version") for a in argv[:1]):
        return argv
    if any(a in names for a in argv):
        return argv
    return ["watch", *argv]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from .sanitize import guard_std_streams
    # every output path of every command, errors included (the TUI draws on sys.__stderr__,
    # which this leaves alone)
    guard_std_streams()
    parser = build_parser()
    args = parser.parse_args(_with_default_command(parser, argv))
    try:
        cfg = load(getattr(args, "config", None), required=getattr(args, "config", None) is not None)
        if getattr(args, "backend", None):
            cfg.backend = args.backend
        if getattr(args, "state_dir", None):
            cfg.state_dir = args.state_dir
        args.cfg = cfg
        return int(args.func(args) or 0)
    except (ConfigError, UsageError) as e:
        print(f"popwatch: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `popwatch scan --json ... | head`: the reader went away; not an error.
        sys.stdout = None  # interpreter exit must not flush into the closed pipe
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
