"""Modal screens: ban confirm, limit form, IP detail, help. Untrusted text only as ``Text``."""

from __future__ import annotations

import time as _time
from collections.abc import Callable
from importlib import resources
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.validation import ValidationResult, Validator
from textual.widgets import Footer, Input, Select, Static

from ..model import AuthEvent, Ban, PortLimit, Rate, parse_burst
from ..store import AttackerRow, BanLogEntry
from .controller import Controller
from .widgets import SERVICE_STYLE, ago, left, safe, sparkline

#: what the panels mean, below the keys on the help screen (packaged with popwatch/ui)
HELP_TEXT = resources.files(__package__).joinpath("help.md").read_text(encoding="utf-8")


class ConfirmScreen(ModalScreen[bool]):
    """Shows exactly what will run; ``y`` confirms, ``n``/escape cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "dismiss(True)", "Yes, do it"),
        Binding("n,escape", "dismiss(False)", "No"),
    ]
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical { width: 76; max-width: 100%; height: auto; max-height: 90%;
                               border: thick $error; background: $surface; padding: 0 1; }
    ConfirmScreen #title { text-style: bold; }
    """

    def __init__(self, title: str, body: Text) -> None:
        super().__init__()
        self.title_text = title
        self.body = body

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text(self.title_text), id="title")
            yield Static(self.body, id="body")
            yield Static(Text("y: yes   n/Esc: no", style="dim"))
        yield Footer()


class DetailScreen(ModalScreen[None]):
    """Everything known about one IP: users tried, services, timeline, raw lines, bans."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,enter,q", "dismiss(None)", "Close")]
    DEFAULT_CSS = """
    DetailScreen { align: center middle; }
    DetailScreen > VerticalScroll { width: 100%; height: 100%; border: round $primary;
                                    background: $surface; padding: 0 1; }
    """

    def __init__(self, row: AttackerRow, events: list[AuthEvent], ban: Ban | None, now: float,
                 why_protected: str | None, history: list[BanLogEntry] | None = None) -> None:
        super().__init__()
        self.row, self.events, self.ban, self.now, self.why = row, events, ban, now, why_protected
        self.history = history or []

    @staticmethod
    def timeline(events: list[AuthEvent], now: float, minutes: int = 30) -> list[int]:
        """Failed attempts per minute over the last ``minutes`` (oldest first)."""
        bins = [0] * minutes
        for ev in events:
            if ev.kind == "success":
                continue
            age = int((now - ev.ts) // 60)
            if 0 <= age < minutes:
                bins[minutes - 1 - age] += ev.attempts
        return bins

    @staticmethod
    def after_ban(ban: Ban, events: list[AuthEvent]) -> Text:
        """Why lines still arrive from a banned address, and what the ban closed."""
        t = Text()
        at = _time.strftime("%H:%M:%S", _time.localtime(ban.created))
        if ban.closed:
            t.append(f"\nthe ban closed {ban.closed} open connection{'' if ban.closed == 1 else 's'} "
                     f"of this address at {at}", style="magenta")
        n = sum(1 for ev in events if ev.ts > ban.created)
        if n:
            t.append(f"\n{n} line{'' if n == 1 else 's'} arrived after the ban ({at}), marked 'after ban': "
                     "connections opened before a ban stay open until closed (the ban drops new "
                     "packets; the daemon still logs what it had already received, and its summary "
                     "when the session ends)", style="magenta")
        return t

    def body(self) -> Text:
        r = self.row
        t = Text()
        t.append(f"{r.ip}\n", style="bold")
        t.append(f"state: {r.state}")
        if self.ban is not None:
            t.append(f" (ban by {self.ban.origin}: {safe(self.ban.reason, 300) or 'no reason'}, "
                     f"{left(r.ban_left)} left)")
        if self.why:
            t.append(f"  protected: {self.why}", style="green")
        if self.ban is not None:
            t.append(self.after_ban(self.ban, self.events))
        if r.fleet:
            t.append(f"\nbanned fleet-wide (CrowdSec): {safe(r.fleet, 80)}", style="bold red")
        t.append(f"\nfailures: {r.failures:,}   rate: {r.rate:.1f}/min   scanner probes: {r.probes}\n")
        if r.successes:
            t.append(f"logged in successfully {r.successes} time(s): a legitimate user may be behind "
                     "this address\n", style="bold green")
        t.append(f"services: {', '.join(r.services) or '-'}\n")
        t.append(f"first seen: {_time.strftime('%Y-%m-%d %H:%M:%S', _time.localtime(r.first))} "
                 f"({ago(r.first, self.now)} ago)   last: {ago(r.last, self.now)} ago\n\n")
        shown = len(r.users)
        more = f", the {shown} most recent shown" if r.nusers > shown else ""
        t.append(f"usernames tried ({r.nusers}{more}; newest last):\n", style="bold")
        t.append("  " + (", ".join(safe(u, 64) for u in r.users) or "-") + "\n\n", style="yellow")
        bins = self.timeline(self.events, self.now)
        t.append("timeline, failed attempts per minute (last 30 min, now at the right):\n", style="bold")
        t.append("  " + sparkline(bins, len(bins)), style="red")
        t.append(f"  max {max(bins)}/min\n\n", style="dim")
        t.append("ban history (this session):\n", style="bold")
        if not self.history:
            t.append("  never banned\n", style="dim")
        for h in self.history:
            stamp = _time.strftime("%H:%M:%S", _time.localtime(h.ts))
            t.append(f"  {stamp} {h.action}")
            if h.origin:
                t.append(f" by {safe(h.origin, 20)}")
            if h.reason:
                t.append(f": {safe(h.reason, 300)}")
            if h.action == "ban":
                t.append(" (permanent)" if h.expires is None else
                         f" until {_time.strftime('%H:%M:%S', _time.localtime(h.expires))}")
            t.append("\n")
        t.append(f"\nevents from this address still in memory ({len(self.events)}), newest last:\n",
                 style="bold")
        for ev in self.events[-200:]:
            stamp = _time.strftime("%H:%M:%S", _time.localtime(ev.ts))
            t.append(f"  {stamp} ", style="dim")
            if self.ban is not None and ev.ts > self.ban.created:
                t.append("after ban ", style="bold magenta")
            t.append(f"{ev.service:<5} ", style=SERVICE_STYLE.get(ev.service, ""))
            t.append(f"{ev.kind:<12} ", style="green" if ev.kind == "success" else "red")
            t.append(f"{'x' + str(ev.attempts) if ev.attempts > 1 else '':<4}", style="bold red")
            t.append(f"{safe(ev.user, 40) or '-'}\n", style="yellow")
            t.append(f"    {safe(ev.source, 60)}:{ev.lineno or '-'} ", style="dim")
            t.append(safe(ev.line, 400) + "\n")
        if not self.events:
            t.append("  (none left in the in-memory ring)\n", style="dim")
        return t

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(self.body())
        yield Footer()


class _ParseValidator(Validator):
    """Validates with one of firewall/base.py's parsers, so the message is the same as the CLI's."""

    def __init__(self, parse: Callable[[str], object]) -> None:
        super().__init__()
        self.parse = parse

    def validate(self, value: str) -> ValidationResult:
        try:
            self.parse(value)
        except ValueError as e:
            return self.failure(str(e))
        return self.success()


class LimitScreen(ModalScreen[PortLimit | None]):
    """Edit one port's mode, rate and burst; validated as typed, applied with Enter."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss(None)", "Cancel"),
        Binding("ctrl+s", "apply", "Apply"),
    ]
    DEFAULT_CSS = """
    LimitScreen { align: center middle; }
    LimitScreen > Vertical { width: 72; max-width: 100%; height: auto; max-height: 100%;
                             border: thick $accent; background: $surface; padding: 0 1; }
    LimitScreen #title { text-style: bold; }
    LimitScreen Horizontal { height: auto; margin-top: 1; }
    LimitScreen .label { width: 8; }
    LimitScreen Input, LimitScreen Select { width: 1fr; }
    LimitScreen Select { margin-top: 1; }
    LimitScreen .error { color: $error; height: auto; }
    LimitScreen #preview { color: $text-muted; text-style: italic; height: auto; margin: 1 0; }
    """

    def __init__(self, limit: PortLimit) -> None:
        super().__init__()
        self.limit = limit

    def compose(self) -> ComposeResult:
        lim = self.limit
        with Vertical():
            yield Static(Text(f"Port {lim.port}: limit new connections"), id="title")
            yield Select([("mode: count only (no limit)", "count"),
                          ("mode: global (one bucket for everyone, -m limit)", "global"),
                          ("mode: per-source (one bucket per address, -m hashlimit)", "per-source")],
                         value=lim.mode, allow_blank=False, id="mode", compact=True)
            with Horizontal():
                yield Static("rate", classes="label")
                yield Input(str(lim.rate), placeholder="e.g. 5/second, 10/minute",
                            validators=[_ParseValidator(Rate.parse)], id="rate", compact=True)
            yield Static("", id="rate-error", classes="error")
            with Horizontal():
                yield Static("burst", classes="label")
                yield Input(str(lim.burst), placeholder="1-10000", validators=[_ParseValidator(parse_burst)],
                            id="burst", compact=True)
            yield Static("", id="burst-error", classes="error")
            yield Static(Text(lim.meaning()), id="preview")
            yield Static(Text("Enter or ctrl+s: apply   Esc: cancel   Tab: next field", style="dim"))
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#rate", Input).focus()

    def candidate(self) -> tuple[PortLimit | None, dict[str, str]]:
        """The limit the form describes, or the errors that stop it."""
        errors: dict[str, str] = {}
        mode = self.query_one("#mode", Select).value
        rate_s = self.query_one("#rate", Input).value
        burst_s = self.query_one("#burst", Input).value
        rate_v = burst_v = None
        try:
            rate_v = Rate.parse(rate_s)
        except ValueError as e:
            errors["rate"] = str(e)
        try:
            burst_v = parse_burst(burst_s)
        except ValueError as e:
            errors["burst"] = str(e)
        if errors or rate_v is None or burst_v is None:
            return None, errors
        return self.limit.with_(mode=str(mode), rate=rate_v, burst=burst_v), errors

    def _update(self) -> None:
        cand, errors = self.candidate()
        self.query_one("#rate-error", Static).update(Text(errors.get("rate", "")))
        self.query_one("#burst-error", Static).update(Text(errors.get("burst", "")))
        preview = self.query_one("#preview", Static)
        if cand is not None:
            same = " (unchanged)" if cand == self.limit else ""
            preview.update(Text(f"{cand.describe()}{same}: {cand.meaning().split(': ', 1)[-1]}"))
        else:
            preview.update(Text("fix the value above to see what the rule would do"))

    def on_input_changed(self, event: Input.Changed) -> None:
        self._update()

    def on_select_changed(self, event: Select.Changed) -> None:
        self._update()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_apply()

    def action_apply(self) -> None:
        cand, errors = self.candidate()
        self._update()
        if cand is None:
            self.notify("; ".join(errors.values()), severity="error", markup=False)
            return
        self.dismiss(cand)


class WhatIfScreen(ModalScreen[None]):
    """Replay the recent events under a proposed policy or port limit (Controller.what_if); changes
    nothing. The replay runs off the UI loop; the answer is plain text built from the report."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "Close")]
    DEFAULT_CSS = """
    WhatIfScreen { align: center middle; }
    WhatIfScreen > Vertical { width: 90%; height: 90%; border: round $accent; background: $surface;
                              padding: 0 1; }
    WhatIfScreen #answer { height: 1fr; }
    """

    def __init__(self, controller: Controller, port: PortLimit | None = None) -> None:
        super().__init__()
        self.controller = controller
        self.port = port

    def compose(self) -> ComposeResult:
        if self.port is not None and self.port.mode != "count":
            example = f"port={self.port.port},rate={self.port.rate},burst={self.port.burst}"
        else:
            example = "maxretry=5,findtime=10m,bantime=1h"
        with Vertical():
            yield Static(Text("What if? Replay the recent events under another rule; nothing is changed."))
            yield Input(example, id="proposal",
                        placeholder="maxretry=5,findtime=10m[,campaign=on]  or  port=110,rate=2/second,burst=5")
            with VerticalScroll(id="answer"):
                yield Static(Text("Enter runs the replay.", style="dim"), id="report")
        yield Footer()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.query_one("#report", Static).update(Text("replaying…", style="dim"))
        # on the app, whose one handler reports a failed worker
        self.app.run_worker(self._replay(event.value), name="what-if", exclusive=True, exit_on_error=False,
                            group="whatif")

    async def _replay(self, proposal: str) -> None:
        try:
            report = await self.controller.what_if(proposal)  # copies the events on the loop, replays in a thread
            text = Text("\n".join(report.lines()))
        except ValueError as e:  # a proposal that does not parse: said in place
            text = Text(str(e), style="bold red")
        if self.is_attached:  # the screen may have been closed while it ran
            self.query_one("#report", Static).update(text)


class HelpScreen(ModalScreen[None]):
    """Keys, generated from the app's bindings, plus what the panels mean."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,question_mark", "dismiss(None)", "Close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 90%; height: 90%; border: round $primary;
                                  background: $surface; padding: 0 1; }
    """

    def __init__(self, bindings: list[tuple[str, str]], note: str = "") -> None:
        super().__init__()
        self.keys = bindings
        self.note = note

    def body(self) -> Text:
        t = Text()
        t.append("popwatch keys\n", style="bold")
        if self.note:
            t.append(self.note + "\n", style="yellow")
        t.append("\n")
        for key, desc in self.keys:
            t.append(f"  {key:<12}", style="bold cyan")
            t.append(f"{desc}\n")
        t.append("\n" + HELP_TEXT)
        return t

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(self.body())
        yield Footer()
