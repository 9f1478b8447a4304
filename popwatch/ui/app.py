"""The Textual app and its factory.

``make_app(monitor, ...)`` is the one way to build the app: the CLI, the demo, the tests and
the screenshot generator all inject their own sources, firewall and clock through the Monitor.
The app renders from store snapshots on a timer (never per event) and sends every action to
the Monitor, whose firewall work runs off the UI thread.
"""

from __future__ import annotations

import socket

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Input

from ..firewall.base import MODES, PortLimit, Rate
from ..monitor import Monitor
from ..policy import Refused
from ..store import SORT_KEYS, Snapshot
from .screens import ConfirmScreen, DetailScreen, HelpScreen
from .widgets import AttackerTable, HeaderBar, LiveLog, PortsPanel, UsersPanel

PORT_SERVICE = {110: "pop3", 995: "pop3", 143: "imap", 993: "imap", 22: "ssh", 25: "smtp",
                465: "submission", 587: "submission", 4190: "sieve"}
BURSTS = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)


class PopwatchApp(App[None]):
    TITLE = "popwatch"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    Screen { layout: vertical; }
    #main { height: 1fr; }
    #left { width: 1fr; }
    .panel { border-top: solid $primary-darken-2; border-title-color: $text-muted; }
    .panel:focus-within, .panel:focus { border-top: solid $accent; border-title-color: $accent; }
    #users { display: none; border-left: solid $primary-darken-2; padding-left: 1; }
    #ports { margin-bottom: 0; }
    #filter { dock: bottom; display: none; height: 1; border: none; padding: 0 1; }
    #filter.-show { display: block; }
    """

    BINDINGS = [
        Binding("b", "ban", "Ban"),
        Binding("u", "unban", "Unban"),
        Binding("plus,equals_sign", "rate(1)", "Rate+", key_display="+"),
        Binding("minus", "rate(-1)", "Rate-", key_display="-"),
        Binding("right_square_bracket", "burst(1)", "Burst+", key_display="]"),
        Binding("left_square_bracket", "burst(-1)", "Burst-", key_display="["),
        Binding("m", "mode", "Mode"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("s", "sort", "Sort"),
        Binding("enter", "detail", "Detail", show=False),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, monitor: Monitor, *, mode: str = "live", host: str | None = None,
                 tick: float = 0.5, run_monitor: bool = True, ban_ttl: float | None = 3600.0,
                 exit_after: float | None = None) -> None:
        super().__init__()
        self.exit_after = exit_after
        self.monitor = monitor
        self.store = monitor.store
        self.mode = mode
        self.host = host or socket.gethostname()
        self.tick = tick
        self.run_monitor = run_monitor
        self.ban_ttl = ban_ttl
        self.sort = "failures"
        self.filter = ""
        self.snapshot: Snapshot | None = None
        self._version = -1
        self._ticks = 0

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield HeaderBar(self.host, self.mode, self.monitor.firewall.name, id="header")
        with Horizontal(id="main"):
            with Vertical(id="left"):
                t = AttackerTable(id="attackers", classes="panel")
                t.border_title = "attackers"
                yield t
                p = PortsPanel(id="ports", classes="panel")
                p.border_title = "ports (new connections/s)"
                yield p
                log = LiveLog(id="log", classes="panel")
                log.border_title = "live log"
                yield log
            u = UsersPanel(id="users")
            u.border_title = "users tried"
            yield u
        yield Input(placeholder="filter: IP, prefix (203.0.113.0/24), user or service; Enter applies, Esc clears",
                    id="filter")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(AttackerTable).focus()
        self.refresh_view(force=True)
        self.set_interval(self.tick, self.refresh_view)
        if self.exit_after is not None:
            self.set_timer(self.exit_after, self.exit)
        if self.run_monitor:
            self.run_worker(self.monitor.run(), name="monitor", group="monitor", exit_on_error=False)

    def on_resize(self) -> None:
        wide = self.size.width >= 120 and self.size.height >= 30
        self.query_one("#users").display = wide

    # ------------------------------------------------------------------ render
    def refresh_view(self, force: bool = False) -> None:
        """One render tick: skip when nothing changed (idle costs nothing)."""
        self._ticks += 1
        # ages and rates drift even without new events: re-render every ~2 s regardless
        if not force and self.store.version == self._version and self._ticks % 4:
            return
        self._version = self.store.version
        snap = self.store.snapshot(k=200, sort=self.sort, flt=self.filter)
        self.snapshot = snap
        with self.batch_update():
            table = self.query_one(AttackerTable)
            table.set_rows(snap.rows, snap.now, snap.total_ips, snap.shown_of)
            flt = f" filter {self.filter!r}" if self.filter else ""
            table.border_title = Text(f"attackers: {snap.shown_of:,} of {snap.total_ips:,} IPs, by {snap.sort}{flt}")
            self.query_one(PortsPanel).set_ports(snap.ports, self._shares(snap))
            self.query_one(LiveLog).set_snapshot(snap)
            self.query_one(UsersPanel).set_snapshot(snap)
            self.query_one(HeaderBar).set_snapshot(snap)

    def _shares(self, snap: Snapshot) -> dict[int, str]:
        """For each port: how much of the last minute's failures the top attacker made."""
        out: dict[int, str] = {}
        for p in snap.ports:
            svc = PORT_SERVICE.get(p.port)
            if svc is None:
                continue
            rates = [(r.rate, r.ip) for r in snap.rows if svc in r.services and r.rate > 0]
            total = sum(r for r, _ in rates)
            if total > 0:
                top, ip = max(rates)
                out[p.port] = f"top attacker {ip} made {top / total:.0%} of the last minute's {svc} failures"
        return out

    # ----------------------------------------------------------------- helpers
    def _can_act(self) -> bool:
        if self.mode == "read-only" or not self.monitor.firewall.can_write:
            self.notify("read-only: popwatch cannot change the firewall here (needs root, or backend "
                        "'none'); run it with sudo to ban and tune limits", severity="warning", markup=False)
            return False
        return True

    def _selected_ip(self) -> str | None:
        row = self.query_one(AttackerTable).selected
        return row.ip if row else None

    def _selected_port(self) -> PortLimit | None:
        p = self.query_one(PortsPanel).selected()
        return p.limit if p else None

    # ----------------------------------------------------------------- actions
    def action_ban(self) -> None:
        row = self.query_one(AttackerTable).selected
        if row is None:
            self.notify("no attacker selected", markup=False)
            return
        if not self._can_act():
            return
        why = self.monitor.protector.why_protected(row.ip)
        if why:
            self.notify(f"refused: {why}. popwatch never bans it.", severity="error", markup=False)
            return
        ttl = self.ban_ttl
        change = self.monitor.firewall.describe_ban(row.ip, ttl)
        body = Text()
        body.append(f"{row.ip}: {row.failures:,} failures, {row.nusers} users, {', '.join(row.services)}\n")
        body.append(f"ban for {'ever' if ttl is None else f'{int(ttl // 60)} minutes'}; this will run:\n")
        for c in change:
            body.append(f"  {c}\n", style="bold")
        if self.monitor.dry_run:
            body.append("(dry run: nothing will be applied)\n", style="yellow")

        def done(ok: bool | None) -> None:
            if ok:
                self._do_ban(row.ip, f"manual: {row.failures} failures", ttl)

        self.push_screen(ConfirmScreen(f"Ban {row.ip}?", body), done)

    @work(group="fw", exit_on_error=False)
    async def _do_ban(self, ip: str, reason: str, ttl: float | None) -> None:
        try:
            r = await self.monitor.aban(ip, ttl=ttl, reason=reason, origin="key")
            self.notify(r.message, markup=False)
        except Refused as e:
            self.notify(str(e), severity="error", markup=False)
        except Exception as e:  # noqa: BLE001 - show any firewall error, keep running
            self.notify(f"ban failed: {e}", severity="error", markup=False)
        self.refresh_view(force=True)

    def action_unban(self) -> None:
        ip = self._selected_ip()
        if ip is None or not self._can_act():
            return
        if ip not in self.store.bans:
            self.notify(f"{ip} is not banned", markup=False)
            return
        self._do_unban(ip)

    @work(group="fw", exit_on_error=False)
    async def _do_unban(self, ip: str) -> None:
        try:
            r = await self.monitor.aunban(ip, origin="key")
            self.notify(r.message, markup=False)
        except Exception as e:  # noqa: BLE001
            self.notify(f"unban failed: {e}", severity="error", markup=False)
        self.refresh_view(force=True)

    def _retune(self, new: PortLimit) -> None:
        if not self._can_act():
            return
        self._do_limit(new)

    @work(group="fw", exit_on_error=False)
    async def _do_limit(self, new: PortLimit) -> None:
        try:
            r = await self.monitor.aset_limit(new, origin="key")
            self.notify(r.message, markup=False, timeout=2)
        except Exception as e:  # noqa: BLE001
            self.notify(f"limit change failed: {e}", severity="error", markup=False)
        self.refresh_view(force=True)

    def action_rate(self, d: int) -> None:
        lim = self._selected_port()
        if lim is None:
            return
        new_rate: Rate = lim.rate.step(d > 0)
        if lim.mode == "count":
            self.notify(f"port {lim.port} only counts; press m to pick global or per-source first",
                        markup=False)
            return
        self._retune(lim.with_(rate=new_rate))

    def action_burst(self, d: int) -> None:
        lim = self._selected_port()
        if lim is None:
            return
        if d > 0:
            b = next((x for x in BURSTS if x > lim.burst), lim.burst)
        else:
            b = next((x for x in reversed(BURSTS) if x < lim.burst), lim.burst)
        if lim.mode == "count":
            self.notify(f"port {lim.port} only counts; press m to pick global or per-source first",
                        markup=False)
            return
        self._retune(lim.with_(burst=b))

    def action_mode(self) -> None:
        lim = self._selected_port()
        if lim is None:
            return
        nxt = MODES[(MODES.index(lim.mode) + 1) % len(MODES)]
        self._retune(lim.with_(mode=nxt))

    def action_sort(self) -> None:
        self.sort = SORT_KEYS[(SORT_KEYS.index(self.sort) + 1) % len(SORT_KEYS)]
        self.refresh_view(force=True)

    def action_filter(self) -> None:
        inp = self.query_one("#filter", Input)
        inp.add_class("-show")
        inp.value = self.filter
        inp.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            self.filter = event.value.strip()
            event.input.remove_class("-show")
            self.query_one(AttackerTable).focus()
            self.refresh_view(force=True)

    def on_key(self, event) -> None:  # noqa: ANN001
        inp = self.query_one("#filter", Input)
        if event.key == "escape" and inp.has_focus:
            self.filter = ""
            inp.remove_class("-show")
            self.query_one(AttackerTable).focus()
            self.refresh_view(force=True)
            event.stop()

    def action_detail(self) -> None:
        row = self.query_one(AttackerTable).selected
        if row is None:
            return
        self.push_screen(DetailScreen(row, self.store.events_of(row.ip), self.store.bans.get(row.ip),
                                      self.store.clock(), self.monitor.protector.why_protected(row.ip)))

    def action_help(self) -> None:
        keys = [(b.key_display or b.key, b.description) for b in self.BINDINGS if isinstance(b, Binding)]
        keys += [("↑/↓ j/k", "move in the focused panel"), ("Tab", "next panel (attackers, ports)"),
                 ("Enter", "detail of the selected IP")]
        self.push_screen(HelpScreen(keys))

    async def action_quit(self) -> None:
        self.exit()


def make_app(monitor: Monitor, *, mode: str = "live", host: str | None = None, tick: float = 0.5,
             run_monitor: bool = True, ban_ttl: float | None = 3600.0,
             exit_after: float | None = None) -> PopwatchApp:
    """Build the app around an injected Monitor (sources, firewall and clock live in it)."""
    return PopwatchApp(monitor, mode=mode, host=host, tick=tick, run_monitor=run_monitor, ban_ttl=ban_ttl,
                       exit_after=exit_after)
