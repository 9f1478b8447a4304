"""The campaigns panel and the campaign screen (popwatch.campaigns on the screen).

The panel lists campaigns (a user name tried from many addresses, or one address guessing slowly):
target, sources, networks, failures, rate sparkline, first/last seen, state, bans made; below a
campaign, in red, any successful login from one of its sources, or for its user from an address
never seen before (possible compromise). ``Enter`` opens the campaign (sources rolled up by
network, users, timeline); ``x`` bans every source of the selected campaign (protected and
known-good addresses skipped, the count confirmed first), ``X`` bans its networks.

Rows come from :meth:`popwatch.campaigns.CampaignTracker.rows` on the app's render tick;
log-derived text goes through ``safe()`` into ``Text`` objects, never markup.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, Protocol

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Footer, Static

from ..campaigns import CampaignRow, nets_of
from ..model import iso
from .controller import Controller
from .widgets import ago, safe, sparkline

STATE = {"active": ("LIVE", "bold white on red"), "ended": ("ended", "dim")}


class Host(Protocol):
    """What a campaign ban needs from the screen that owns the keys (the MainScreen)."""

    controller: Controller
    ban_ttl: float | None

    def can_act(self) -> bool: ...

    def confirm(self, title: str, body: Text, then: Callable[[], None]) -> None: ...

    def spawn(self, job: Coroutine[Any, Any, None], name: str) -> None: ...

    def refresh_view(self, force: bool = False) -> None: ...

    def notify(self, message: str, *, title: str = "", severity: Any = "information",
               timeout: float | None = None, markup: bool = True) -> None: ...


class CampaignsPanel(Widget, can_focus=True):
    """One line per campaign (+ a red line per alert); its own cursor."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("x", "ban_sources", "Ban sources", tooltip="ban every source of the selected campaign"),
        Binding("X", "ban_nets", "Ban networks", tooltip="ban the networks of the selected campaign"),
    ]
    DEFAULT_CSS = """
    CampaignsPanel { height: auto; max-height: 12; min-height: 3; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    class Ban(Message):
        """Ban the sources (or ``nets``: the networks) of campaign ``key``; the screen asks first."""

        def __init__(self, key: str, nets: bool) -> None:
            super().__init__()
            self.key = key
            self.nets = nets

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.rows: list[CampaignRow] = []
        self.now = 0.0
        self.cursor = 0
        self._key: tuple[object, ...] = ()
        self._lines = -1

    def set_rows(self, rows: list[CampaignRow], now: float) -> None:
        key = tuple((r.key, r.sources, r.failures, r.state, r.banned, len(r.alerts)) for r in rows)
        if key == self._key and now - self.now < 2.0:
            return
        self._key = key
        lines = len(rows) + sum(min(2, len(r.alerts)) for r in rows)
        relayout = lines != self._lines
        self._lines = lines
        self.rows, self.now = rows, now
        self.cursor = min(self.cursor, max(0, len(rows) - 1))
        self.refresh(layout=relayout)  # the height changes only with the number of lines

    @property
    def selected(self) -> CampaignRow | None:
        return self.rows[self.cursor] if 0 <= self.cursor < len(self.rows) else None

    def action_cursor(self, d: int) -> None:
        if self.rows:
            self.cursor = max(0, min(len(self.rows) - 1, self.cursor + d))
            self.refresh()

    def action_ban_sources(self) -> None:
        if self.selected is not None:
            self.post_message(self.Ban(self.selected.key, nets=False))

    def action_ban_nets(self) -> None:
        if self.selected is not None:
            self.post_message(self.Ban(self.selected.key, nets=True))

    def render(self) -> Text:
        out = Text(no_wrap=True, overflow="ellipsis")
        w = max(40, self.size.width)
        tw = max(12, min(28, w - 62))
        spark_w = max(0, min(30, w - tw - 62))
        out.append(f"{'':5}{'TARGET':<{tw}} {'SRC':>5} {'NETS':>5} {'FAILS':>6} {'/MIN':>5} "
                   + (f"{'RATE, 30 min':<{spark_w}} " if spark_w else "")
                   + f"{'FIRST':>6} {'LAST':>5} {'BANS':>5}\n", style="bold underline")
        if not self.rows:
            out.append("no campaign: no user tried from many addresses, no slow source\n", style="dim")
            return out
        focus = self.has_focus
        for i, r in enumerate(self.rows):
            label, st = STATE.get(r.state, (r.state, ""))
            line_style = "reverse" if (i == self.cursor and focus) else ""
            out.append(f"{label:<5}", style=st)
            out.append(f"{safe(r.target, tw):<{tw}.{tw}} ", style=line_style or "yellow")
            out.append(f"{r.sources:>5,} {r.networks:>5,} {r.failures:>6,} {r.rate:>5.1f} ", style=line_style)
            if spark_w:
                out.append(sparkline(r.spark, spark_w) + " ", style="red")
            out.append(f"{ago(r.first, self.now):>6} {ago(r.last, self.now):>5} {r.banned:>5}\n",
                       style=line_style)
            for ts, ip, why in r.alerts[-2:]:
                out.append(f"  ! {ago(ts, self.now)} ago {safe(ip, 45)}: {safe(why, 120)}\n", style="bold red")
        return out


class CampaignScreen(ModalScreen[None]):
    """One campaign: its score, alerts, sources rolled up by network, users, timeline."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,enter,q", "dismiss(None)", "Close"),
        Binding("x", "ban_sources", "Ban sources"),
        Binding("X", "ban_nets", "Ban networks"),
    ]
    DEFAULT_CSS = """
    CampaignScreen { align: center middle; }
    CampaignScreen > VerticalScroll { width: 100%; height: 100%; border: round $error;
                                      background: $surface; padding: 0 1; }
    """

    def __init__(self, key: str, host: Host) -> None:
        super().__init__()
        self.key = key
        self.host = host

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(self._body(), id="campaign")
        yield Footer()

    def _body(self) -> Text:
        ctl = self.host.controller
        r = ctl.campaign(self.key, ctl.now())
        out = Text()
        if r is None:
            out.append("this campaign is no longer tracked\n", style="dim")
            return out
        out.append(f"campaign on {safe(r.target, 80)}", style="bold")
        out.append(f"  [{r.state}]\n", style="bold red" if r.state == "active" else "dim")
        out.append(safe(r.score, 200) + "\n")
        out.append(f"first {iso(r.first)}, last {iso(r.last)}; {r.failures:,} failures, {r.banned} bans made "
                   f"by the campaign response\n")
        if r.alerts:
            out.append("\nPossible compromise / worth a look\n", style="bold underline red")
            for ts, ip, why in r.alerts:
                out.append(f"  {iso(ts)}  {safe(ip, 45)}: {safe(why, 160)}\n", style="bold red")
        out.append("\nTimeline (failures per minute, last 30 min)\n", style="bold underline")
        out.append("  " + sparkline(r.spark, len(r.spark) or 1) + "  (oldest left, one bar a minute)\n", style="red")
        out.append(f"  peak {max(r.spark) if r.spark else 0}/min, now {r.rate:.1f}/min\n")
        if r.kind == "user":
            out.append("\nSources by network (/24, /64)\n", style="bold underline")
            for net, n in r.top_nets:
                nb = sum(1 for ip in r.source_ips if nets_of(ip)[0] == net and ctl.is_banned(ip))
                tag = "  network BANNED" if ctl.is_banned(net) else (f"  {nb} banned" if nb else "")
                out.append(f"  {net:<24} {n:>5} sources{tag}\n")
            out.append("\nSources, most recent first\n", style="bold underline")
            for ip in r.source_ips[:100]:
                st = "banned" if ctl.is_banned(ip) else ("known-good" if ctl.known_good(ip) else "")
                out.append(f"  {ip:<40} {st}\n", style="red" if st == "banned" else ("green" if st else ""))
            user = r.key.partition(":")[2]
            out.append("\nUsers\n", style="bold underline")
            out.append(f"  {safe(user, 60)}: {r.target.partition('@')[2]}; logins known from "
                       f"{ctl.login_addresses(user)} addresses\n")
        else:
            out.append(f"\nOne slow source: {safe(r.target, 45)}\n")
        out.append("\nx: ban every source (protected and known-good skipped)   X: ban its networks   "
                   "Esc: close\n", style="dim")
        return out

    def action_ban_sources(self) -> None:
        ban_campaign(self.host, self.key, nets=False)

    def action_ban_nets(self) -> None:
        ban_campaign(self.host, self.key, nets=True)


def ban_campaign(host: Host, key: str, *, nets: bool) -> None:
    """Ban every source (or network) of a campaign, after a confirmation with the count.
    Protected and known-good addresses, and networks holding one, are skipped."""
    if not host.can_act():
        return
    ctl = host.controller
    user = key.partition(":")[2] if key.startswith("user:") else None
    skipped: list[str] = []
    banned = 0
    todo: list[str] = []
    if nets:
        for net in ctl.campaign_networks(key):
            if ctl.is_banned(net):
                banned += 1
                continue
            why = ctl.net_blocker(net)
            if why:
                skipped.append(f"{net} ({why})")
            else:
                todo.append(net)
    else:
        for ip in ctl.campaign_sources(key):
            if ctl.is_banned(ip) or ctl.is_banned(nets_of(ip)[0]):
                banned += 1
            elif ctl.why_protected(ip):
                skipped.append(f"{ip} (protected)")
            elif ctl.known_good(ip) or (user is not None and ctl.knows_login(user, ip)):
                skipped.append(f"{ip} (logged in before)")
            else:
                todo.append(ip)
    what = "networks" if nets else "sources"
    if not todo:
        host.notify(f"no {what} to ban: {banned} already banned, {len(skipped)} skipped", markup=False)
        return
    ttl = host.ban_ttl
    body = Text()
    body.append(f"{len(todo):,} {what} of campaign {key.partition(':')[2]!r} will be banned", style="bold")
    body.append(f" for {int(ttl // 60)} minutes\n" if ttl else " permanently\n")
    if banned:
        body.append(f"  {banned:,} already banned (left as they are)\n")
    if skipped:
        body.append(f"  {len(skipped):,} skipped: " + ", ".join(skipped[:4]) + (" …" if len(skipped) > 4 else "")
                    + "\n", style="green")
    body.append("first: " + ", ".join(todo[:5]) + (" …" if len(todo) > 5 else "") + "\n")
    if ctl.dry_run:
        body.append("(dry run: nothing will be applied)\n", style="yellow")
    reason = f"campaign {key.partition(':')[2]}: {len(todo)} {what} (key)"
    host.confirm(f"Ban {len(todo):,} {what} of this campaign?", body,
                 lambda: host.spawn(_ban(host, todo, nets, reason, ttl), "campaign ban"))


async def _ban(host: Host, targets: list[str], nets: bool, reason: str, ttl: float | None) -> None:
    done, refused = await host.controller.ban_many(targets, ttl=ttl, reason=reason, allow_net=nets)
    msg = f"banned {len(done):,} {'networks' if nets else 'addresses'}"
    if refused:
        msg += f", {len(refused)} refused: {next(iter(refused.values()))}"
    host.notify(msg, markup=False, severity="warning" if refused else "information")
    host.refresh_view(force=True)
