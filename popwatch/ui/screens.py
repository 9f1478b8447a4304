"""Modal screens: ban confirm, IP detail, help. Untrusted text only as ``Text``/``Content``."""

from __future__ import annotations

import time as _time

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from ..model import AuthEvent, Ban
from ..store import AttackerRow
from .widgets import ago, left, safe


class ConfirmScreen(ModalScreen[bool]):
    """Shows exactly what will run; ``y`` confirms, ``n``/escape cancels."""

    BINDINGS = [
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

    BINDINGS = [Binding("escape,enter,q", "dismiss(None)", "Close")]
    DEFAULT_CSS = """
    DetailScreen { align: center middle; }
    DetailScreen > VerticalScroll { width: 100%; height: 100%; border: round $primary;
                                    background: $surface; padding: 0 1; }
    """

    def __init__(self, row: AttackerRow, events: list[AuthEvent], ban: Ban | None, now: float,
                 why_protected: str | None) -> None:
        super().__init__()
        self.row, self.events, self.ban, self.now, self.why = row, events, ban, now, why_protected

    def compose(self) -> ComposeResult:
        r = self.row
        t = Text()
        t.append(f"{r.ip}\n", style="bold")
        t.append(f"state: {r.state}")
        if self.ban is not None:
            t.append(f" (ban {self.ban.origin}: {safe(self.ban.reason, 80) or 'no reason'}, "
                     f"{left(r.ban_left)} left)")
        if self.why:
            t.append(f"  protected: {self.why}", style="green")
        t.append(f"\nfailures: {r.failures:,}   rate: {r.rate:.1f}/min   successful logins: {r.successes}"
                 f"   scanner probes: {r.probes}\n")
        t.append(f"services: {', '.join(r.services) or '-'}\n")
        t.append(f"first seen: {_time.strftime('%Y-%m-%d %H:%M:%S', _time.localtime(r.first))} "
                 f"({ago(r.first, self.now)} ago)   last: {ago(r.last, self.now)} ago\n")
        t.append(f"users tried ({r.nusers}, most recent last): ", style="bold")
        t.append(", ".join(safe(u, 64) for u in r.users) or "-", style="yellow")
        t.append("\n\nrecent lines from this address:\n", style="bold")
        for ev in self.events[-200:]:
            t.append(f"{safe(ev.source, 60)}:{ev.lineno or '-'} ", style="dim")
            t.append(safe(ev.line, 400) + "\n")
        if not self.events:
            t.append("(none left in the in-memory ring)\n", style="dim")
        with VerticalScroll():
            yield Static(t)
        yield Footer()


class HelpScreen(ModalScreen[None]):
    """Keys, generated from the app's bindings, plus what the panels mean."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss(None)", "Close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 90%; height: 90%; border: round $primary;
                                  background: $surface; padding: 0 1; }
    """

    def __init__(self, bindings: list[tuple[str, str]]) -> None:
        super().__init__()
        self.keys = bindings

    def compose(self) -> ComposeResult:
        t = Text()
        t.append("popwatch keys\n\n", style="bold")
        for key, desc in self.keys:
            t.append(f"  {key:<12}", style="bold cyan")
            t.append(f"{desc}\n")
        t.append(
            "\nAttackers: one row per address across services. FAILS counts attempts (a dovecot line "
            "'auth failed, 11 attempts' counts 11). STATE: watch, NEAR (close to the auto-ban "
            "threshold), B <time left> (banned), SAFE (protected: your SSH client, loopback, this "
            "host, the allow-list; never banned).\n\n"
            "Ports: new TCP connections per second that passed / were dropped by popwatch's rule for "
            "that port. 'global' is the 2009 rule (-m limit): one bucket shared by everyone, so an "
            "attacker still gets rate x 86,400 tries a day and legitimate users lose the race. "
            "'per-source' (-m hashlimit) gives every address its own bucket.\n")
        with VerticalScroll():
            yield Static(t)
        yield Footer()
