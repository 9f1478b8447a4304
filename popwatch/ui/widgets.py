"""The panels. Each renders from a :class:`~popwatch.store.Snapshot`; none touches the store.

Log-derived text (users, lines) was sanitised at parse time; here it is additionally only ever
put into ``rich`` Segments / ``Text`` objects (never parsed as markup), and passed through
``safe()`` as a second gate, so a hostile line can neither style nor escape the screen.
"""

from __future__ import annotations

import itertools
import time as _time
from collections.abc import Sequence
from typing import Any, ClassVar

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

from ..sanitize import clean, is_clean
from ..store import AttackerRow, PortRow, Snapshot

SPARK = "▁▂▃▄▅▆▇█"
#: seconds of counter history a port sparkline covers, whatever its width
SPARK_SPAN = 120
#: columns of the ports panel's "open" figures: established connections, the top source's share
OPEN_W = 14
#: from this width on the attacker table also shows how long ago an address was first seen
FIRST_MIN_WIDTH = 110
SERVICE_STYLE = {"ssh": "bold cyan", "pop3": "bold magenta", "imap": "bold blue", "smtp": "bold yellow",
                 "submission": "bold yellow", "sieve": "green"}
STATE_STYLE = {"banned": Style(color="black", bgcolor="red", bold=True),
               "near": Style(color="black", bgcolor="yellow"),
               "protected": Style(color="black", bgcolor="green"),
               "watching": Style(dim=True)}
STATE_LABEL = {"banned": "BAN", "near": "NEAR", "protected": "SAFE", "watching": "watch"}


def safe(text: str | None, cap: int = 256) -> str:
    """Second gate for log-derived text: escape anything the parse-time gate missed."""
    if not text:
        return ""
    return text if is_clean(text) and len(text) <= cap else clean(text, cap)


def ago(ts: float, now: float) -> str:
    d = max(0.0, now - ts)
    if d < 60:
        return f"{int(d)}s"
    if d < 3600:
        return f"{int(d // 60)}m"
    if d < 86400:
        return f"{int(d // 3600)}h"
    return f"{int(d // 86400)}d"


def left(secs: float | None) -> str:
    if secs is None:
        return "∞"
    if secs < 60:
        return f"{int(secs)}s"
    if secs < 3600:
        return f"{int(secs // 60)}m"
    return f"{secs / 3600:.0f}h"


def sparkline(values: Sequence[float], width: int, span: int | None = None) -> str:
    """Bars for the last ``span`` values (default ``width``), each bar the mean of its share of
    them, scaled from 0 to their max (a gap is exactly 0)."""
    vals = list(values)[-(span or width):]
    if len(vals) > width:
        n = len(vals)
        bounds = [i * n // width for i in range(width + 1)]  # near-equal buckets, oldest first
        vals = [sum(vals[a:b]) / (b - a) for a, b in itertools.pairwise(bounds) if b > a]
    if not vals:
        return " " * width
    top = max(vals)
    if top <= 0:
        s = SPARK[0] * len(vals)
    else:
        s = "".join(SPARK[min(7, int(v / top * 7.999))] if v > 0 else " " for v in vals)
    return s.rjust(width)


def rate(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.0f}"
    return f"{v:.1f}"


class AttackerTable(Widget, can_focus=True):
    """One row per IP, drawn with the Line API (no DataTable: it re-renders every cell on any
    change).

    Until the user moves the cursor it stays on the top row, whatever sorts there (during an
    attack ``b`` bans what the top of the table shows); once the user has moved it, it follows
    that address across refreshes and re-sorts (``follow``); Home/``g`` returns to top-row mode."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor(-1)", "Up", show=False, priority=True),
        Binding("down,j", "cursor(1)", "Down", show=False, priority=True),
        Binding("pageup", "page(-1)", "Page up", show=False, priority=True),
        Binding("pagedown", "page(1)", "Page down", show=False, priority=True),
        Binding("home,g", "edge(0)", "Top", show=False, priority=True),
        Binding("end", "edge(1)", "Bottom", show=False, priority=True),
    ]

    DEFAULT_CSS = """
    AttackerTable { height: 2fr; min-height: 4; }
    """

    class Selected(Message):
        def __init__(self, ip: str | None) -> None:
            super().__init__()
            self.ip = ip

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.rows: tuple[AttackerRow, ...] = ()
        self.cursor_ip: str | None = None
        self.cursor = 0
        #: False: the cursor stays on the top row; True: it follows ``cursor_ip`` (the user moved it)
        self.follow = False
        self.top = 0
        self.now = _time.time()
        self.total = 0
        self.shown_of = 0
        self.rollup = False
        self._ipw = 15
        #: drawn rows by content (row, age text, width, selected, layout): an unchanged row is
        #: never redrawn, and only the lines whose key changed are repainted
        self._cache: dict[tuple[object, ...], Strip] = {}
        self._shown: list[tuple[object, ...] | None] = []

    # ---- data
    def set_rows(self, rows: tuple[AttackerRow, ...], now: float, total: int, shown_of: int,
                 rollup: bool = False) -> None:
        if rollup != self.rollup:
            self.cursor_ip = None
            self.cursor = 0
            self.top = 0
            self.follow = False
        old_top, old_ipw, old_shown = self.top, self._ipw, self._shown
        self.rows = rows
        self.now = now
        self.total = total
        self.shown_of = shown_of
        self.rollup = rollup
        self._ipw = max([15] + [len(r.ip) for r in rows[:500]])
        if len(self._cache) > 4000:
            self._cache.clear()
        if not self.follow:
            self.cursor = 0
        elif self.cursor_ip is not None:
            for i, r in enumerate(rows):
                if r.ip == self.cursor_ip:
                    self.cursor = i
                    break
            else:
                self.cursor = min(self.cursor, max(0, len(rows) - 1))
        if rows:
            self.cursor = min(self.cursor, len(rows) - 1)
            self.cursor_ip = rows[self.cursor].ip
        self._scroll_to_cursor()
        self._shown = self._visible_keys()
        if self.top != old_top or self._ipw != old_ipw or len(self._shown) != len(old_shown):
            self.refresh()
            return
        width = self.size.width
        for y, (new, old) in enumerate(zip(self._shown, old_shown, strict=True), start=1):
            if new != old:
                self.refresh(Region(0, y, width, 1))

    def _line_key(self, i: int, width: int) -> tuple[object, ...] | None:
        if i >= len(self.rows):
            return None
        r = self.rows[i]
        first = ago(r.first, self.now) if width >= FIRST_MIN_WIDTH else ""
        return (r, ago(r.last, self.now), first, width, i == self.cursor, self._ipw, self.rollup)

    def _visible_keys(self) -> list[tuple[object, ...] | None]:
        width = self.size.width
        return [self._line_key(self.top + y, width) for y in range(self._body_height())]

    @property
    def selected(self) -> AttackerRow | None:
        if 0 <= self.cursor < len(self.rows):
            return self.rows[self.cursor]
        return None

    def _body_height(self) -> int:
        return max(1, self.size.height - 1)

    def _scroll_to_cursor(self) -> None:
        h = self._body_height()
        if self.cursor < self.top:
            self.top = self.cursor
        elif self.cursor >= self.top + h:
            self.top = self.cursor - h + 1
        self.top = max(0, min(self.top, max(0, len(self.rows) - h)))

    def _move(self, to: int, follow: bool = True) -> None:
        self.follow = follow and bool(self.rows)
        if not self.rows:
            return
        self.cursor = max(0, min(len(self.rows) - 1, to))
        self.cursor_ip = self.rows[self.cursor].ip
        self._scroll_to_cursor()
        self._shown = self._visible_keys()
        self.refresh()
        self.post_message(self.Selected(self.cursor_ip))

    def action_cursor(self, d: int) -> None:
        self._move(self.cursor + d)

    def action_page(self, d: int) -> None:
        self._move(self.cursor + d * self._body_height())

    def action_edge(self, end: int) -> None:
        self._move(len(self.rows) - 1 if end else 0, follow=bool(end))

    def on_resize(self) -> None:
        self._cache.clear()
        self._scroll_to_cursor()
        self._shown = self._visible_keys()

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self.rows) + 1

    # ---- drawing
    def _widths(self, width: int) -> tuple[int, int, int]:
        """(ip, users, services) column widths for this terminal width: the address column
        grows for IPv6 (up to 39) while the users column keeps at least 12."""
        fixed = 6 + 7 + 6 + 6 + 5  # state, fails, rate, last, spaces
        if width >= FIRST_MIN_WIDTH:
            fixed += 6  # first seen
        svcw = 9 if width < 100 else 16
        ipw = max(15, min(self._ipw, 39, width - fixed - svcw - 13))
        if width >= 100:
            ipw = max(ipw, 24 if not self.rollup else 20)
        usersw = max(8, width - fixed - ipw - svcw - 1)
        return ipw, usersw, svcw

    def _header(self, width: int) -> Strip:
        ipw, usersw, svcw = self._widths(width)
        first = "NETWORK" if self.rollup else "IP"
        users = " IPS USERS" if self.rollup else "USERS (n: latest first)"
        text = (f"{'STATE':<6}{first:<{ipw}} {'FAILS':>6} {'/MIN':>5} "
                f"{users[:usersw]:<{usersw}} {'SERVICES':<{svcw}} "
                + (f"{'FIRST':>5} " if width >= FIRST_MIN_WIDTH else "") + f"{'LAST':>5}")
        return Strip([Segment(text[:width].ljust(width), Style(bold=True, underline=True))])

    def _row(self, r: AttackerRow, width: int, selected: bool) -> Strip:
        ipw, usersw, svcw = self._widths(width)
        base = Style(reverse=True) if selected else Style()
        label = STATE_LABEL.get(r.state, r.state)
        if r.state == "banned":
            label = f"B {left(r.ban_left)}"
        elif self.rollup and r.banned_ips:
            label = f"{r.banned_ips}B"
        elif r.fleet and r.state != "protected":
            label = "FLEET"
        lstyle = Style(color="red", bold=True) if label == "FLEET" else STATE_STYLE.get(r.state, Style())
        segs = [Segment(f"{label:<5}"[:5], lstyle), Segment(" ", base)]
        ip = r.ip if len(r.ip) <= ipw else r.ip[: ipw - 1] + "…"
        ip_style = base + Style(bold=True) if r.successes == 0 else base + Style(bold=True, color="green")
        segs.append(Segment(f"{ip:<{ipw}} ", ip_style))
        segs.append(Segment(f"{r.failures:>6,} ", base + Style(bold=r.failures >= 100)))
        segs.append(Segment(f"{rate(r.rate):>5} ", base))
        users = ", ".join(safe(u, 40) for u in reversed(r.users[-4:]))
        if r.nusers > 1:
            users = f"{r.nusers}: {users}"
        if r.probes and not r.nusers:
            users = f"scanner: {r.probes} probe{'s' if r.probes != 1 else ''}, no login tried"
        if r.successes:
            users = f"✓login {users}"
        if self.rollup:
            users = f"{r.nips:>4} {users}"
        users = users if len(users) <= usersw else users[: usersw - 1] + "…"
        segs.append(Segment(f"{users:<{usersw}} ", base))
        svcs = ",".join(r.services)
        svcs = svcs if len(svcs) <= svcw else svcs[: svcw - 1] + "…"
        segs.append(Segment(f"{svcs:<{svcw}} ", base + Style(color="cyan")))
        if width >= FIRST_MIN_WIDTH:
            segs.append(Segment(f"{ago(r.first, self.now):>5} ", base + Style(dim=True)))
        segs.append(Segment(f"{ago(r.last, self.now):>5}", base + Style(dim=True)))
        strip = Strip(segs)
        return strip.crop_extend(0, width, base)

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        if y == 0:
            return self._header(width)
        i = self.top + y - 1
        if i >= len(self.rows):
            if i == 0 and y == 1:
                msg = "nothing matches the filter (/ to change, Esc in it clears)" if self.shown_of == 0 and \
                    self.total else "no failed logins seen yet"
                return Strip([Segment(msg[:width].ljust(width), Style(dim=True))])
            return Strip.blank(width)
        key = self._line_key(i, width)
        assert key is not None  # i < len(self.rows)
        strip = self._cache.get(key)
        if strip is None:
            strip = self._cache[key] = self._row(self.rows[i], width, i == self.cursor)
        return strip


class PortsPanel(Widget, can_focus=True):
    """Per watched port: rule, passed/s and dropped/s with sparklines, what the rule means."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "move(-1)", "Up", show=False, priority=True),
        Binding("down,j", "move(1)", "Down", show=False, priority=True),
    ]
    DEFAULT_CSS = """
    PortsPanel { height: auto; max-height: 9; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    selected_port: reactive[int | None] = reactive(None, always_update=True)

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.ports: tuple[PortRow, ...] = ()
        self.share: dict[int, str] = {}
        self.ban_drop: tuple[float, tuple[float, ...]] | None = None

    def set_ports(self, ports: tuple[PortRow, ...], share: dict[int, str] | None = None,
                  ban_drop: tuple[float, tuple[float, ...]] | None = None) -> None:
        share = share or {}
        if (ports, share, ban_drop) == (self.ports, self.share, self.ban_drop):
            return  # an idle server: nothing to repaint
        old_lines = self._lines()
        self.ports = ports
        self.share = share
        self.ban_drop = ban_drop
        if ports and self.selected_port not in {p.port for p in ports}:
            # start on the first port that has a limit: that is the one to tune
            limited = [p.port for p in ports if p.limit.mode != "count"]
            self.selected_port = (limited or [ports[0].port])[0]
        self.refresh(layout=self._lines() != old_lines)

    def action_move(self, d: int) -> None:
        if not self.ports:
            return
        ports = [p.port for p in self.ports]
        i = ports.index(self.selected_port) if self.selected_port in ports else 0
        self.selected_port = ports[(i + d) % len(ports)]
        self.refresh(layout=True)  # the share line may come or go

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    def selected(self) -> PortRow | None:
        for p in self.ports:
            if p.port == self.selected_port:
                return p
        return None

    def _lines(self) -> int:
        extra = 1 if self.ban_drop is not None else 0
        share = self.share.get(self.selected_port or 0)
        return max(1, len(self.ports) + extra + 1 + (share.count("\n") + 1 if share else 0))

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return self._lines()

    def render(self) -> Text:
        width = self.size.width or 80
        # established connections (socket table), when collected: "open  12 67%"
        open_w = OPEN_W if any(p.conns is not None for p in self.ports) else 0
        spark_w = max(3, (width - 57 - open_w) // 2)
        out = Text(no_wrap=True, overflow="ellipsis")
        if not self.ports:
            out.append("no watched ports", style="dim")
            return out
        focused = self.has_focus
        for p in self.ports:
            sel = p.port == self.selected_port
            mark = "▶" if sel and focused else " "
            out.append(f"{mark}{p.port:>5} ", style="bold reverse" if sel and focused else "bold")
            out.append(f"{p.limit.describe():<22.22} ", style="reverse" if sel and focused else
                       ("bold" if sel else ""))
            out.append(f"ok {rate(p.passed_s):>5}/s ", style="green")
            out.append(sparkline(p.passed_hist, spark_w, SPARK_SPAN), style="green")
            out.append(f" drop {rate(p.dropped_s):>5}/s ", style="red")
            out.append(sparkline(p.dropped_hist, spark_w, SPARK_SPAN), style="red")
            if open_w:
                c = p.conns
                n = c.established if c is not None else 0
                out.append(f" open {n:>3}", style="bold cyan" if n else "dim")
                out.append(f" {c.top_share:>4.0%}" if c is not None and n else "     ", style="cyan")
            out.append("\n")
        if self.ban_drop is not None:
            v, hist = self.ban_drop
            out.append(f" {'bans':>5} {'dropped by the ban list':<22} {'':>11} {' ' * spark_w}", style="dim")
            out.append(f" drop {rate(v):>5}/s ", style="red")
            out.append(sparkline(hist, spark_w, SPARK_SPAN), style="red")
            out.append("\n")
        chosen = self.selected()
        if chosen is not None:
            out.append(f"{chosen.port}: ", style="bold")
            out.append(chosen.limit.meaning(), style="italic")
            extra = self.share.get(chosen.port)
            for line in extra.split("\n") if extra else ():
                out.append("\n")
                out.append(f"{chosen.port}: ", style="bold")
                out.append(line, style="italic")
        return out


class LiveLog(Widget):
    """The newest failures (and logins), newest at the bottom. Built from Text, never markup."""

    DEFAULT_CSS = """
    LiveLog { height: 1fr; min-height: 3; max-height: 14; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.snapshot: Snapshot | None = None

    def set_snapshot(self, snap: Snapshot) -> None:
        old = self.snapshot
        self.snapshot = snap
        if old is not None and old.events and snap.events and old.events[-1] is snap.events[-1]:
            return  # no new line: nothing to repaint
        self.refresh()

    def render(self) -> Text:
        snap = self.snapshot
        out = Text(no_wrap=True, overflow="ellipsis")
        if snap is None or not snap.events:
            out.append("waiting for log lines…", style="dim")
            return out
        h = max(1, self.size.height)
        evs = snap.events[-h:]
        ips = {ev.ip for ev in evs}
        banned_at = {b.ip: b.created for b in snap.bans if b.ip in ips}
        for i, ev in enumerate(evs):
            t = _time.strftime("%H:%M:%S", _time.localtime(ev.ts))
            out.append(f"{t} ", style="dim")
            out.append(f"{ev.service:<5} ", style=SERVICE_STYLE.get(ev.service, ""))
            out.append(f"{(ev.ip or safe(ev.host, 40) or '?'):<16} ", style="bold")
            if ev.ip in banned_at and ev.ts > banned_at[ev.ip]:
                out.append("after ban ", style="bold magenta")  # an open connection: see the detail view
            if ev.kind == "success":
                out.append("login ok ", style="green")
            else:
                out.append(f"{ev.kind} ", style="red")
            if ev.attempts > 1:
                out.append(f"×{ev.attempts} ", style="bold red")
            out.append(safe(ev.user, 48) or "-", style="yellow")
            if i < len(evs) - 1:
                out.append("\n")
        return out


class UsersPanel(Widget):
    """Usernames tried across all IPs: a slow distributed attack on one mailbox shows here."""

    DEFAULT_CSS = """
    UsersPanel { width: 34; height: 1fr; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.snapshot: Snapshot | None = None

    #: seconds between repaints when only the counts moved (the ranking changing repaints at once)
    SLOW = 2.0

    def set_snapshot(self, snap: Snapshot) -> None:
        old = self.snapshot
        if old is not None and old.users == snap.users:
            return
        names = [u.user for u in snap.users]
        if old is not None and names == [u.user for u in old.users] and snap.now - old.now < self.SLOW:
            return  # a flood moves every count every tick: a slow aggregate need not repaint 4x/s
        self.snapshot = snap
        self.refresh()

    def render(self) -> Text:
        out = Text(no_wrap=True, overflow="ellipsis")
        out.append(f"{'USER':<16}{'FAILS':>7}{'IPS':>6}\n", style="bold underline")
        if self.snapshot is None:
            return out
        for u in self.snapshot.users[: max(0, self.size.height - 1)]:
            out.append(f"{safe(u.user, 15):<16.16}", style="yellow")
            out.append(f"{u.failures:>7,}{u.nips:>6}\n")
        return out


class HeaderBar(Widget):
    """One line: host, mode, backend, sources and their health, events/s."""

    DEFAULT_CSS = """
    HeaderBar { height: 1; background: $primary-background; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    HEALTH_STYLE: ClassVar[dict[str, str]] = {
        "following": "green", "replay": "green", "journal": "green", "waiting": "yellow",
        "denied": "bold red", "error": "bold red", "stopped": "dim"}

    def __init__(self, host: str, mode: str, backend: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.host = host
        self.mode = mode
        self.backend = backend
        self.flags: list[tuple[str, str]] = []  # (text, style): auto-ban, dry run
        self.snapshot: Snapshot | None = None
        self._key: tuple[object, ...] = ()

    def set_snapshot(self, snap: Snapshot) -> None:
        key = (tuple(self.flags), snap.sources, round(snap.events_per_s, 1), snap.total_ips, len(snap.bans))
        self.snapshot = snap
        if key != self._key:
            self._key = key
            self.refresh()

    def render(self) -> Text:
        full = self._line(compact=False)
        if full.cell_len <= max(1, self.size.width):
            return full
        return self._line(compact=True)

    def _line(self, compact: bool) -> Text:
        """The header; ``compact`` drops labels so the figures fit at 80 columns."""
        out = Text(no_wrap=True, overflow="ellipsis")
        if not compact:
            out.append(" popwatch ", style="bold reverse")
        out.append(f" {safe(self.host, 40)} ", style="bold")
        mode_style = {"live": "bold green", "demo": "bold cyan", "read-only": "bold yellow",
                      "dry-run": "bold yellow"}.get(self.mode, "bold")
        out.append(f"{self.mode.upper()} ", style=mode_style)
        out.append(f"fw:{self.backend} ", style="dim")
        for text, style in self.flags:
            out.append(f"{text.replace('auto-ban:', 'auto:') if compact else text} ", style=style)
        snap = self.snapshot
        if snap is not None:
            for s in snap.sources:
                out.append("●" if compact else "● ", style=self.HEALTH_STYLE.get(s.state, ""))
                name = safe(s.name.rsplit("/", 1)[-1], 30)
                ok = s.state in ("following", "replay", "journal")
                if compact and ok:
                    out.append(f"{name} ")
                else:
                    out.append(f"{name}:{s.state} ", style="" if ok else "bold")
            sep = " " if compact else " │ "
            out.append(f"│ {snap.events_per_s:,.1f} ev/s{sep}{snap.total_ips:,} IPs{sep}{len(snap.bans)} bans",
                       style="bold")
        return out
