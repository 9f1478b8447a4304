"""The main screen: the panels, their bindings and actions, and the render tick.

It renders from store snapshots on a timer (never per event) and sends every action through the
:class:`~popwatch.ui.controller.Controller`; firewall work runs as app workers, so a failure
reaches the app's one worker-error handler. Read-only is decided by :meth:`check_action` alone:
acting keys stay in the footer but greyed, and a hidden binding on the same keys says why.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Input

from ..model import MODES, PortLimit, Rate
from ..policy import Refused
from ..store import SORT_KEYS, AttackerRow, PortRow, Snapshot
from .campaigns import CampaignScreen, CampaignsPanel, ban_campaign
from .controller import Controller
from .screens import ConfirmScreen, DetailScreen, LimitScreen, WhatIfScreen
from .widgets import AttackerTable, HeaderBar, LiveLog, PortsPanel, UsersPanel, left

PORT_SERVICE = {110: "pop3", 995: "pop3", 143: "imap", 993: "imap", 22: "ssh", 25: "smtp",
                465: "submission", 587: "submission", 4190: "sieve"}
BURSTS = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)
#: actions that change the firewall: greyed out in the footer when popwatch cannot write
ACTING = frozenset({"ban", "ban_all", "unban", "rate", "burst", "mode", "edit", "auto_ban", "undo"})
#: rows drawn in the attacker table (the rest are counted as hidden)
TOP_K = 200
#: a mass ban reports its progress every this many addresses
BAN_CHUNK = 500

_RATE = Binding.Group("Rate", compact=True)
_BURST = Binding.Group("Burst", compact=True)


#: guesses per new connection from which they are said to arrive over long-lived connections
#: (one guess per connection is ~1; dovecot allows 3 failed logins per connection, hydra uses them)
LONG_LIVED = 2.0


def long_lived(p: PortRow, guesses_min: Callable[[str], float]) -> str:
    """The plain-language line when guesses arrive over few long-lived connections: then a
    per-connection limit, not a new-connection limit, is what matters. Judged on the source
    holding the most of the port's open connections: its failures per minute (any service: a
    mail daemon names the service of a failed attempt only later) against the port's new
    connections per minute (any source, so the judgement errs towards saying nothing)."""
    c = p.conns
    if c is None or not c.established or not c.top_ip:
        return ""
    # new connections in the last minute (one counter sample a second; not extrapolated, so a
    # short history right after start does not inflate it)
    new_min = sum(p.passed_hist[-60:])
    g = guesses_min(c.top_ip)
    if g < LONG_LIVED * max(1.0, new_min):
        return ""
    k = c.top_n
    return (f"{g:,.0f} guesses/min from {c.top_ip} over {k} open connection{'s' if k != 1 else ''}: "
            "cap connections per source, not new/s")


def _action_name(action: str) -> str:
    return action.split("(")[0]


_MAIN_BINDINGS = [
    Binding("b", "ban", "Ban", tooltip="ban the selected address (asks first)", id="ban", priority=True),
    Binding("B", "ban_all", "Ban all", show=False, tooltip="ban every address matching the filter",
            id="ban_all", priority=True),
    Binding("u", "unban", "Unban", tooltip="lift the selected address's ban", id="unban", priority=True),
    Binding("plus,equals_sign", "rate(1)", "Rate+", key_display="+", group=_RATE, id="rate_up",
            tooltip="raise the selected port's rate one step", priority=True),
    Binding("minus", "rate(-1)", "Rate-", key_display="-", group=_RATE, id="rate_down",
            tooltip="lower the selected port's rate one step (tighter)", priority=True),
    Binding("right_square_bracket", "burst(1)", "Burst+", key_display="]", group=_BURST, id="burst_up",
            tooltip="raise the selected port's burst", priority=True),
    Binding("left_square_bracket", "burst(-1)", "Burst-", key_display="[", group=_BURST, id="burst_down",
            tooltip="lower the selected port's burst (tighter)", priority=True),
    Binding("m", "mode", "Mode", tooltip="count only -> global -> per-source", id="mode", priority=True),
    Binding("e", "edit", "Edit", tooltip="edit the selected port's limit and burst", id="edit", priority=True),
    Binding("slash", "filter", "Filter", key_display="/", id="filter", priority=True,
            tooltip="by IP, prefix or CIDR, user or service; Enter applies, Esc clears"),
    Binding("s", "sort", "Sort", id="sort", priority=True,
            tooltip="cycle: failures, rate per minute, last seen"),
    Binding("r", "rollup", "/24", show=False, tooltip="roll addresses up into /24 and /64 networks",
            id="rollup", priority=True),
    Binding("v", "users", "Users", show=False, tooltip="show or hide the users-under-attack panel",
            id="users", priority=True),
    Binding("c", "campaigns", "Campaigns", show=False, id="campaigns", priority=True,
            tooltip="show or hide the campaigns panel (Enter opens one, x/X ban its sources/networks)"),
    Binding("enter", "detail", "Detail", show=False, id="detail", priority=True,
            tooltip="everything about the selected address (on a network: list its addresses)"),
    Binding("a", "auto_ban", "Auto-ban", show=False, tooltip="switch automatic banning on or off",
            id="auto_ban", priority=True),
    Binding("w", "what_if", "What-if", show=False,
            tooltip="replay recent events under another policy or limit; changes nothing", id="what_if",
            priority=True),
    Binding("U", "undo", "Undo", show=False, tooltip="undo the last ban, unban or limit change",
            id="undo", priority=True),
]
#: the acting keys once more, not priority and hidden: a greyed (read-only) key is not handled by
#: its own binding, travels on and lands here, which says why (see check_action)
_WHY_BINDING = Binding(",".join(b.key for b in _MAIN_BINDINGS if _action_name(b.action) in ACTING),
                       "why_read_only", show=False)


class MainScreen(Screen[None]):
    """Attackers, campaigns, ports, live log and users; the keys that act on them."""

    BINDINGS: ClassVar[list[BindingType]] = [*_MAIN_BINDINGS, _WHY_BINDING]
    #: the main screen's own actions (see check_action)
    MAIN_ACTIONS = frozenset(_action_name(b.action) for b in _MAIN_BINDINGS)

    def __init__(self, controller: Controller, *, host: str, mode: str, ban_ttl: float | None) -> None:
        super().__init__()
        self.controller = controller
        self.host = host
        self.mode = mode
        self.ban_ttl = ban_ttl
        self.sort = "failures"
        self.filter = ""
        self.rollup = False
        self.users_shown: bool | None = None  # None: automatic (shown when wide)
        self.campaigns_shown: bool | None = None  # None: automatic (shown when wide and tall)
        self.snapshot: Snapshot | None = None
        self._version = -1
        self._ticks = 0

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield HeaderBar(self.host, self.mode, self.controller.backend, id="header")
        with Horizontal(id="main"):
            with Vertical(id="left"):
                t = AttackerTable(id="attackers", classes="panel")
                t.border_title = "attackers"
                yield t
                c = CampaignsPanel(id="campaigns", classes="panel")
                c.border_title = "campaigns: one user from many addresses, or one slow address"
                yield c
                p = PortsPanel(id="ports", classes="panel")
                p.border_title = "ports: new connections/s, last 2 min; open: established now, top source"
                yield p
                log = LiveLog(id="log", classes="panel")
                log.border_title = "live log"
                yield log
            u = UsersPanel(id="users")
            u.border_title = "users tried"
            yield u
        yield Input(placeholder="filter: IP, prefix (203.0.113.0/24), user or service; Enter applies, Esc clears",
                    id="filter")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self._table = self.query_one(AttackerTable)
        self._ports = self.query_one(PortsPanel)
        self._livelog = self.query_one(LiveLog)
        self._users = self.query_one(UsersPanel)
        self._campaigns = self.query_one(CampaignsPanel)
        self._header = self.query_one(HeaderBar)
        self._table.focus()
        self._layout_users()
        self.refresh_view(force=True)

    def on_resize(self) -> None:
        self._layout_users()

    def _layout_users(self) -> None:
        wide = self.size.width >= 120 and self.size.height >= 30
        users = self.query_one(UsersPanel)
        users.display = wide if self.users_shown is None else self.users_shown
        if users.display and self.snapshot is not None:
            users.set_snapshot(self.snapshot)
        camp = self.query_one(CampaignsPanel)
        big = self.size.width >= 140 and self.size.height >= 40
        camp.display = big if self.campaigns_shown is None else self.campaigns_shown
        if camp.display and self.snapshot is not None:
            camp.set_rows(self.controller.campaign_rows(self.snapshot.now, k=20), self.snapshot.now)

    # ------------------------------------------------------------------ state
    @property
    def read_only(self) -> bool:
        return self.mode == "read-only" or not self.controller.can_write

    def read_only_reason(self) -> str:
        if self.controller.fw_reason:
            return f"read-only: {self.controller.fw_reason}"
        if self.controller.backend == "none" and not self.controller.fw_needs_root:
            return ("read-only: the firewall backend is 'none' (monitor only), so popwatch cannot ban or "
                    "change limits; to act, run it as root with a firewall backend (--backend auto)")
        return ("read-only: popwatch is not running as root (needs CAP_NET_ADMIN), so it cannot ban or "
                "change limits here; run it with sudo to act")

    def _typing(self) -> bool:
        """The filter input (or a modal screen) has the keyboard."""
        return len(self.app.screen_stack) > 1 or isinstance(self.app.focused, Input)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Acting keys stay in the footer but greyed when read-only (``None``); the hidden
        ``why_read_only`` binding on the same keys then says why.

        The main keys are priority bindings (checked before the key travels to the focused
        widget: one message hop less, which matters while a flood is being ingested), so they
        step aside here when the filter input has the keyboard."""
        if action == "why_read_only":
            return self.read_only and not self._typing()
        if action in self.MAIN_ACTIONS and self._typing():
            return False
        if action in ACTING and self.read_only:
            return None
        return True

    def action_why_read_only(self) -> None:
        self.can_act()

    def can_act(self) -> bool:
        """Whether popwatch may change the firewall; says why not otherwise."""
        if self.read_only:
            self.notify(self.read_only_reason(), severity="warning", markup=False)
            return False
        return True

    # ------------------------------------------------------------------ render
    def refresh_view(self, force: bool = False) -> None:
        """One render tick: skip when nothing changed (idle costs nothing)."""
        self._ticks += 1
        if not self.is_mounted or not self._table.is_attached:  # shutting down: the timer may fire once more
            return
        # ages and rates drift even without new events: re-render every ~2 s regardless
        ctl = self.controller
        if not force and ctl.version == self._version and self._ticks % 4:
            return
        self._version = ctl.version
        snap = ctl.snapshot(k=TOP_K, sort=self.sort, flt=self.filter, rollup=self.rollup, users=40)
        self.snapshot = snap
        with self.app.batch_update():
            table = self._table
            table.set_rows(snap.rows, snap.now, snap.total_ips, snap.shown_of, snap.rollup)
            table.border_title = self._table_title(snap)
            self._ports.set_ports(snap.ports, self._shares(snap), self._ban_drop(snap))
            self._livelog.set_snapshot(snap)
            if self._users.display:
                self._users.set_snapshot(snap)
            if self._campaigns.display:
                self._campaigns.set_rows(ctl.campaign_rows(snap.now, k=20), snap.now)
            self._header.flags = self._flags()
            self._header.set_snapshot(snap)

    def _table_title(self, snap: Snapshot) -> Text:
        what = "networks (/24, /64)" if snap.rollup else "attackers"
        hidden = snap.shown_of - len(snap.rows)
        t = Text(f"{what}: {len(snap.rows):,} of {snap.shown_of:,}")
        if hidden > 0:
            t.append(f" ({hidden:,} hidden)")
        t.append(f", by {snap.sort}")
        if self.filter:
            t.append(" matching ")
            t.append(repr(self.filter))
        if self._table.follow and self._table.cursor_ip:
            t.append(f", following {self._table.cursor_ip} (g: top row)", style="bold")
        return t

    def on_attacker_table_selected(self, event: AttackerTable.Selected) -> None:
        """The user moved the cursor (or g/Home went back to the top row): retitle at once."""
        if self.snapshot is not None:
            self._table.border_title = self._table_title(self.snapshot)

    def _flags(self) -> list[tuple[str, str]]:
        ctl = self.controller
        flags: list[tuple[str, str]] = []
        if ctl.dry_run:
            flags.append(("DRY-RUN", "bold yellow"))
        if self.read_only and self.mode != "read-only":
            flags.append(("READ-ONLY", "bold yellow"))
        why = ctl.fw_short_reason
        if why:  # why, in a few words (the full line: any acting key, ? and the event log)
            flags.append((f"({why})", "yellow"))
        heal = ctl.heal_header()
        if heal:  # another tool removed popwatch's rules (heal.py): what and when
            flags.append((heal, "bold yellow"))
        auto = ctl.auto_ban
        flags.append(("auto-ban:on" if auto else "auto-ban:off", "bold red" if auto else "dim"))
        return flags

    def _shares(self, snap: Snapshot) -> dict[int, str]:
        """For each port: how much of the last minute's failures the top attacker made."""
        by_svc = {svc: (ip, share, total) for svc, ip, share, total in snap.shares}
        out: dict[int, str] = {}
        for p in snap.ports:
            lines = [long_lived(p, self.controller.guesses_per_min)] if p.conns is not None else []
            svc = PORT_SERVICE.get(p.port)
            if svc is not None and svc in by_svc:
                ip, share, total = by_svc[svc]
                banned = " (banned)" if self.controller.is_banned(ip) else ""
                lines.append(f"top attacker {ip}{banned} took {share:.0%} of the last minute's "
                             f"{total:,.0f} {svc} failures")
            if any(lines):
                out[p.port] = "\n".join(x for x in lines if x)
        return out

    @staticmethod
    def _ban_drop(snap: Snapshot) -> tuple[float, tuple[float, ...]] | None:
        if not snap.bans and not any(snap.ban_dropped_hist):
            return None
        return snap.ban_dropped_s, snap.ban_dropped_hist

    # ----------------------------------------------------------------- helpers
    def spawn(self, job: Coroutine[Any, Any, None], name: str) -> None:
        """Run a firewall job as an app worker: its failure reaches the app's one handler."""
        self.app.run_worker(job, name=name, group="fw", exit_on_error=False)

    def confirm(self, title: str, body: Text, then: Callable[[], None]) -> None:
        """Ask with a :class:`ConfirmScreen`; run ``then`` on yes."""
        def done(ok: bool | None) -> None:
            if ok:
                then()

        self.app.push_screen(ConfirmScreen(title, body), done)

    def on_key(self, event: events.Key) -> None:
        inp = self.query_one("#filter", Input)
        if event.key == "escape" and inp.has_focus:
            self.filter = ""
            inp.remove_class("-show")
            self._table.focus()
            self.refresh_view(force=True)
            event.stop()

    def _selected_row(self) -> AttackerRow | None:
        return self._table.selected

    def _selected_port(self) -> PortLimit | None:
        p = self._ports.selected()
        return p.limit if p else None

    # ----------------------------------------------------------------- actions
    def action_ban(self) -> None:
        row = self._selected_row()
        if row is None:
            self.notify("no attacker selected", markup=False)
            return
        if not self.can_act():
            return
        if self.rollup:
            self.notify(f"{row.ip} is a network: press Enter to list its {row.nips} addresses, then B to "
                        "ban them all", markup=False)
            return
        why = self.controller.why_protected(row.ip)
        if why:
            self.notify(f"refused: {row.ip} is {why}. popwatch never bans it.", severity="error",
                        markup=False)
            return
        if row.state == "banned":
            self.notify(f"{row.ip} is already banned ({left(row.ban_left)} left); u unbans", markup=False)
            return
        ttl = self.ban_ttl
        change = self.controller.describe_ban(row.ip, ttl)
        body = Text()
        body.append(f"{row.ip}: {row.failures:,} failures, {row.nusers} users, {', '.join(row.services)}\n")
        if row.successes:
            body.append(f"note: this address also logged in successfully {row.successes} time(s)\n",
                        style="bold yellow")
        body.append(f"ban {'permanently' if ttl is None else f'for {int(ttl // 60)} minutes'}; this will run:\n")
        for c in change:
            body.append(f"  {c}\n", style="bold")
        if self.controller.dry_run:
            body.append("(dry run: nothing will be applied)\n", style="yellow")
        ip, reason = row.ip, f"manual: {row.failures} failures"
        self.confirm(f"Ban {row.ip}?", body, lambda: self.spawn(self._ban(ip, reason, ttl), "ban"))

    async def _ban(self, ip: str, reason: str, ttl: float | None) -> None:
        try:
            r = await self.controller.ban(ip, ttl=ttl, reason=reason)
            self.notify(r.message, markup=False)
        except Refused as e:  # the policy said no: an answer, not a failure
            self.notify(str(e), severity="error", markup=False)
        self.refresh_view(force=True)

    def action_ban_all(self) -> None:
        if not self.can_act():
            return
        if not self.filter:
            self.notify("B bans every address matching the filter: set one first with / (an address "
                        "prefix, a network, a user or a service)", markup=False)
            return
        matched = self.controller.matching(self.filter)
        protected, banned, todo = [], 0, []
        for a in matched:
            if self.controller.is_banned(a.ip):
                banned += 1
            elif self.controller.why_protected(a.ip):
                protected.append(a.ip)
            else:
                todo.append(a.ip)
        body = Text()
        body.append(f"{len(matched):,} addresses match {self.filter!r}:\n")
        body.append(f"  {len(todo):,} will be banned", style="bold")
        body.append(f" for {int(self.ban_ttl // 60)} minutes\n" if self.ban_ttl else " permanently\n")
        if banned:
            body.append(f"  {banned:,} are already banned (left as they are)\n")
        if protected:
            body.append(f"  {len(protected):,} are protected and skipped: ", style="green")
            body.append(", ".join(protected[:5]) + (" …" if len(protected) > 5 else "") + "\n", style="green")
        if todo:
            body.append("each runs like:\n")
            for c in self.controller.describe_ban(todo[0], self.ban_ttl):
                body.append(f"  {c}\n", style="bold")
        if self.controller.dry_run:
            body.append("(dry run: nothing will be applied)\n", style="yellow")
        if not todo:
            self.notify(f"nothing to ban: {banned} already banned, {len(protected)} protected", markup=False)
            return
        reason = f"mass ban: filter {self.filter!r}"
        self.confirm(f"Ban {len(todo):,} addresses matching {self.filter!r}?", body,
                     lambda: self.spawn(self._ban_all(todo, len(protected), reason), "mass ban"))

    async def _ban_all(self, ips: list[str], skipped: int, reason: str) -> None:
        ok = failed = 0
        first_error = ""
        for n in range(0, len(ips), BAN_CHUNK):
            done, refused = await self.controller.ban_many(ips[n:n + BAN_CHUNK], ttl=self.ban_ttl, reason=reason)
            ok += len(done)
            failed += len(refused)
            first_error = first_error or next(iter(refused.values()), "")
            if n + BAN_CHUNK < len(ips):
                self.notify(f"banning: {n + BAN_CHUNK:,} of {len(ips):,} done", markup=False, timeout=2)
        msg = f"banned {ok:,} addresses" + (f", {skipped} protected skipped" if skipped else "")
        if failed:
            msg += f", {failed} failed ({first_error})"
        self.notify(msg, severity="error" if failed else "information", markup=False)
        self.refresh_view(force=True)

    def action_unban(self) -> None:
        row = self._selected_row()
        if row is None or not self.can_act():
            return
        if not self.controller.is_banned(row.ip):
            self.notify(f"{row.ip} is not banned", markup=False)
            return
        self.spawn(self._unban(row.ip), "unban")

    async def _unban(self, ip: str) -> None:
        r = await self.controller.unban(ip)
        self.notify(r.message, markup=False)
        self.refresh_view(force=True)

    def _retune(self, new: PortLimit) -> None:
        if not self.can_act():
            return
        self.spawn(self._limit(new), "limit change")

    async def _limit(self, new: PortLimit) -> None:
        r = await self.controller.set_limit(new)
        self.notify(r.message, markup=False, timeout=3)
        self.refresh_view(force=True)

    def _port_or_say(self) -> PortLimit | None:
        lim = self._selected_port()
        if lim is None:
            self.notify("no watched port", markup=False)
        return lim

    def _limited_port(self) -> PortLimit | None:
        """The selected port when its rate/burst can be tuned now (says why not otherwise)."""
        lim = self._port_or_say()
        if lim is None or not self.can_act():
            return None
        if lim.mode == "count":
            self.notify(f"port {lim.port} only counts: press m to pick global or per-source first "
                        "(Tab selects a port)", markup=False)
            return None
        return lim

    def action_rate(self, d: int) -> None:
        lim = self._limited_port()
        if lim is None:
            return
        new_rate: Rate = lim.rate.step(d > 0)
        if new_rate == lim.rate:
            self.notify(f"port {lim.port}: {lim.rate} is already the {'highest' if d > 0 else 'lowest'} step; "
                        "e edits any value", markup=False)
            return
        self._retune(lim.with_(rate=new_rate))

    def action_burst(self, d: int) -> None:
        lim = self._limited_port()
        if lim is None:
            return
        if d > 0:
            b = next((x for x in BURSTS if x > lim.burst), lim.burst)
        else:
            b = next((x for x in reversed(BURSTS) if x < lim.burst), lim.burst)
        if b == lim.burst:
            self.notify(f"port {lim.port}: burst {b} is the end of the ladder; e edits any value", markup=False)
            return
        self._retune(lim.with_(burst=b))

    def action_mode(self) -> None:
        lim = self._port_or_say()
        if lim is None or not self.can_act():
            return
        nxt = MODES[(MODES.index(lim.mode) + 1) % len(MODES)]
        self._retune(lim.with_(mode=nxt))

    def action_edit(self) -> None:
        lim = self._port_or_say()
        if lim is None or not self.can_act():
            return

        def done(new: PortLimit | None) -> None:
            if new is not None and new != lim:
                self._retune(new)

        self.app.push_screen(LimitScreen(lim), done)

    def action_sort(self) -> None:
        self.sort = SORT_KEYS[(SORT_KEYS.index(self.sort) + 1) % len(SORT_KEYS)]
        self.refresh_view(force=True)

    def action_rollup(self) -> None:
        self.rollup = not self.rollup
        self.refresh_view(force=True)

    def action_users(self) -> None:
        self.users_shown = not self._users.display
        self._layout_users()

    def action_filter(self) -> None:
        inp = self.query_one("#filter", Input)
        inp.add_class("-show")
        inp.value = self.filter
        inp.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            self.filter = event.value.strip()
            event.input.remove_class("-show")
            self._table.focus()
            self.refresh_view(force=True)

    def action_campaigns(self) -> None:
        self.campaigns_shown = not self._campaigns.display
        self._layout_users()

    def on_campaigns_panel_ban(self, event: CampaignsPanel.Ban) -> None:
        ban_campaign(self, event.key, nets=event.nets)

    def action_detail(self) -> None:
        if isinstance(self.app.focused, CampaignsPanel):
            sel = self.app.focused.selected
            if sel is not None:
                self.app.push_screen(CampaignScreen(sel.key, self))
            return
        row = self._selected_row()
        if row is None:
            return
        if self.rollup:
            # a network: list its addresses (B then bans them all)
            self.rollup = False
            self.filter = row.ip
            self.refresh_view(force=True)
            self.notify(f"addresses in {row.ip}; B bans them all, Esc in / clears the filter", markup=False,
                        timeout=4)
            return
        ctl = self.controller
        self.app.push_screen(DetailScreen(row, ctl.events_of(row.ip), ctl.ban_of(row.ip), ctl.now(),
                                          ctl.why_protected(row.ip), ctl.ban_history(row.ip)))

    # ----------------------------------------------------- policy
    def action_auto_ban(self) -> None:
        if not self.can_act():
            return
        on = self.controller.toggle_auto_ban()
        self.notify(f"auto-ban {'on' if on else 'off'}", markup=False)
        self.refresh_view(force=True)

    def action_what_if(self) -> None:
        self.app.push_screen(WhatIfScreen(self.controller, self._selected_port()))

    def action_undo(self) -> None:
        if not self.can_act():
            return
        self.spawn(self._undo(), "undo")

    async def _undo(self) -> None:
        try:
            r = await self.controller.undo()
            self.notify(r.message or "undone", markup=False)
        except Refused as e:  # nothing to undo: an answer, not a failure
            self.notify(str(e), markup=False)
        self.refresh_view(force=True)
