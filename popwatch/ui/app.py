"""The Textual app and its factory.

``make_app(monitor, ...)`` is the one way to build the app: the CLI, the demo, the tests and
the screenshot generator all inject their own sources, firewall and clock through the Monitor.
The app holds the global keys (help, quit), starts the Monitor's run loop and the render tick,
and owns the one handler for failed workers; the panels, their keys and actions live in
:class:`~popwatch.ui.main_screen.MainScreen`, which reaches the core only through the
:class:`~popwatch.ui.controller.Controller`. Styles: ``popwatch.tcss``; help text: ``help.md``.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import ClassVar

from textual import on
from textual.app import App
from textual.binding import Binding, BindingType
from textual.widgets import Input
from textual.worker import Worker, WorkerState

from ..monitor import Monitor
from ..policy import Refused
from .controller import Controller
from .main_screen import MainScreen
from .screens import HelpScreen

#: the app's own actions (see check_action)
GLOBAL_ACTIONS = frozenset({"help", "quit"})


class PopwatchApp(App[None]):
    TITLE = "popwatch"
    ENABLE_COMMAND_PALETTE = False
    #: absolute, so a subclass defined anywhere (a script, a test) finds it too
    CSS_PATH = Path(__file__).with_name("popwatch.tcss")

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "help", "Help", key_display="?", id="help", priority=True),
        Binding("q", "quit", "Quit", id="quit", priority=True),
    ]
    #: keys the help screen lists besides the bindings
    EXTRA_KEYS: ClassVar[list[tuple[str, str]]] = [
        ("↑/↓ j/k", "move in the focused panel (PgUp/PgDn, Home/End in attackers)"),
        ("g/Home", ("attackers: back to the top row (the cursor stays there until you move it; "
                    "once moved it follows that address)")),
        ("Tab", "next panel: attackers, ports")]

    def __init__(self, monitor: Monitor, *, mode: str = "live", host: str | None = None,
                 tick: float = 0.5, run_monitor: bool = True, ban_ttl: float | None = 3600.0,
                 exit_after: float | None = None) -> None:
        super().__init__()
        self.exit_after = exit_after
        self.monitor = monitor
        self.controller = Controller(monitor)
        self.mode = mode
        self.host = host or socket.gethostname()
        self.tick = tick
        self.run_monitor = run_monitor
        self.ban_ttl = ban_ttl
        self.main: MainScreen | None = None

    def get_default_screen(self) -> MainScreen:
        self.main = MainScreen(self.controller, host=self.host, mode=self.mode, ban_ttl=self.ban_ttl)
        return self.main

    def on_mount(self) -> None:
        self.set_interval(self.tick, self.refresh_view)
        if self.exit_after is not None:
            self.set_timer(self.exit_after, self.exit)
        if self.run_monitor:
            self.run_worker(self.controller.run(), name="monitor", group="monitor", exit_on_error=False)

    # ------------------------------------------------------- for scripts driving the app
    def refresh_view(self, force: bool = False) -> None:
        """Render the main screen now (``force``: even when the store did not change)."""
        if self.main is not None:
            self.main.refresh_view(force)

    @property
    def sort(self) -> str:
        """The attacker table's sort key."""
        return self.main.sort if self.main is not None else "failures"

    @sort.setter
    def sort(self, key: str) -> None:
        if self.main is not None:
            self.main.sort = key

    @property
    def campaigns_shown(self) -> bool | None:
        """The campaigns panel: shown, hidden, or ``None`` (automatic, by terminal size)."""
        return self.main.campaigns_shown if self.main is not None else None

    @campaigns_shown.setter
    def campaigns_shown(self, shown: bool | None) -> None:
        if self.main is not None:
            self.main.campaigns_shown = shown

    def _layout_users(self) -> None:
        # kept for benchmarks/campaigns.py, which sets campaigns_shown and relayouts (use app.main)
        if self.main is not None:
            self.main._layout_users()

    # ------------------------------------------------------------------ global keys
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Help and quit step aside while a modal screen or the filter input has the keyboard."""
        busy = len(self.screen_stack) > 1 or isinstance(self.focused, Input)
        return not (action in GLOBAL_ACTIONS and busy)

    def help_keys(self) -> list[tuple[str, str]]:
        keys = []
        for b in [*MainScreen.BINDINGS, *self.BINDINGS]:
            if not isinstance(b, Binding) or b.action == "why_read_only":
                continue
            desc = b.tooltip or b.description
            if b.description and b.tooltip:
                desc = f"{b.description}: {b.tooltip}"
            keys.append((b.key_display or b.key, desc))
        return keys + self.EXTRA_KEYS

    def action_help(self) -> None:
        note = self.main.read_only_reason() if self.main is not None and self.main.read_only else ""
        self.push_screen(HelpScreen(self.help_keys(), note))

    async def action_quit(self) -> None:
        self.exit()

    # ------------------------------------------------------------------ workers
    @on(Worker.StateChanged)
    def worker_failed(self, event: Worker.StateChanged) -> None:
        """The one place a failed worker is reported: a notification, and the app keeps running."""
        if event.state != WorkerState.ERROR:
            return
        e = event.worker.error
        if isinstance(e, Refused):  # the policy's own words
            self.notify(str(e), severity="error", markup=False)
        else:
            self.notify(f"{event.worker.name} failed: {e}", severity="error", markup=False)
        self.refresh_view(force=True)


def make_app(monitor: Monitor, *, mode: str = "live", host: str | None = None, tick: float = 0.5,
             run_monitor: bool = True, ban_ttl: float | None = 3600.0,
             exit_after: float | None = None) -> PopwatchApp:
    """Build the app around an injected Monitor (sources, firewall and clock live in it)."""
    return PopwatchApp(monitor, mode=mode, host=host, tick=tick, run_monitor=run_monitor, ban_ttl=ban_ttl,
                       exit_after=exit_after)
