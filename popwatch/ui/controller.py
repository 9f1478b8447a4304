"""The UI's one door into the core.

Every read and every action the screens make on the Monitor, its store, firewall, protector,
campaign tracker and healer goes through :class:`Controller`, so a change in the core's API is
a change here only. No Textual in this module.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..actions import ActionResult
from ..campaigns import CampaignRow
from ..model import AuthEvent, Ban, PortLimit
from ..monitor import Monitor
from ..store import Attacker, BanLogEntry, Snapshot
from ..whatif import WhatIfReport


class Controller:
    """A typed adapter around one :class:`~popwatch.monitor.Monitor` (reads and actions)."""

    def __init__(self, monitor: Monitor) -> None:
        self._m = monitor

    # ------------------------------------------------------------------ run loop
    async def run(self) -> None:
        """The Monitor's run loop (sources, ingest, counter poll), until cancelled."""
        await self._m.run()

    # ------------------------------------------------------------------ store
    @property
    def version(self) -> int:
        """Bumped by the store on every change (the render tick skips when unchanged)."""
        return self._m.store.version

    def snapshot(self, *, k: int, sort: str, flt: str, rollup: bool, users: int) -> Snapshot:
        return self._m.store.snapshot(k=k, sort=sort, flt=flt, rollup=rollup, users=users)

    def now(self) -> float:
        return self._m.store.clock()

    def is_banned(self, target: str) -> bool:
        return target in self._m.store.bans

    def ban_of(self, target: str) -> Ban | None:
        return self._m.store.bans.get(target)

    def events_of(self, ip: str) -> list[AuthEvent]:
        return self._m.store.events_of(ip)

    def ban_history(self, ip: str) -> list[BanLogEntry]:
        return self._m.store.ban_history(ip)

    def matching(self, flt: str) -> list[Attacker]:
        return self._m.store.matching(flt)

    def guesses_per_min(self, ip: str) -> float:
        """The address's failures per minute now (0 when unknown)."""
        a = self._m.store.attackers.get(ip)
        return a.rate(self._m.store.clock()) if a is not None else 0.0

    # ------------------------------------------------------------------ policy
    def why_protected(self, ip: str) -> str | None:
        return self._m.protector.why_protected(ip)

    @property
    def dry_run(self) -> bool:
        return self._m.dry_run

    @property
    def auto_ban(self) -> bool:
        return self._m.auto_ban

    def toggle_auto_ban(self) -> bool:
        """Switch automatic banning on or off (audited as a key action); the new state."""
        return self._m.set_auto_ban(None, origin="key")

    def heal_header(self) -> str:
        """Short header text when another tool removed popwatch's rules (empty otherwise)."""
        return self._m.healer.header

    # ------------------------------------------------------------------ firewall
    @property
    def backend(self) -> str:
        return self._m.firewall.name

    @property
    def can_write(self) -> bool:
        return self._m.firewall.can_write

    @property
    def fw_reason(self) -> str:
        """Why the backend cannot write (problem and fix), when it knows."""
        return self._m.firewall.reason

    @property
    def fw_short_reason(self) -> str:
        """The same in a few words, for the header."""
        return self._m.firewall.short_reason

    @property
    def fw_needs_root(self) -> bool:
        """Read-only because popwatch is not root (rather than by choice of backend)."""
        return self._m.firewall.needs_root

    def describe_ban(self, ip: str, ttl: float | None) -> list[str]:
        """The commands a ban would run (shown before asking)."""
        return self._m.firewall.describe_ban(ip, ttl)

    # ------------------------------------------------------------------ campaigns
    def campaign_rows(self, now: float, k: int) -> list[CampaignRow]:
        return self._m.campaigns.rows(now, k=k)

    def campaign(self, key: str, now: float) -> CampaignRow | None:
        return self._m.campaigns.detail(key, now)

    def campaign_sources(self, key: str) -> list[str]:
        return self._m.campaigns.sources_of(key)

    def campaign_networks(self, key: str) -> list[str]:
        return self._m.campaigns.networks_of(key)

    def known_good(self, ip: str) -> bool:
        """The address ever logged in successfully."""
        return self._m.campaigns.known_good(ip)

    def knows_login(self, user: str | None, ip: str) -> bool:
        """``user`` logged in from ``ip`` before."""
        return self._m.campaigns.logins.knows(user, ip)

    def login_addresses(self, user: str) -> int:
        """How many addresses ``user`` is known to log in from."""
        return len(self._m.campaigns.logins.by_user.get(user, {}))

    def net_blocker(self, net: str) -> str | None:
        """Why a network may not be banned (a protected or known-good address in it)."""
        return self._m.campaigns.net_blocker(net)

    # ------------------------------------------------------------------ actions (async)
    async def ban(self, ip: str, *, ttl: float | None, reason: str) -> ActionResult:
        return await self._m.actions.ban(ip, ttl=ttl, reason=reason, origin="key")

    async def ban_many(self, targets: Iterable[str], *, ttl: float | None, reason: str,
                       allow_net: bool = False) -> tuple[list[ActionResult], dict[str, str]]:
        """Ban each target: (results, {target: why refused or failed})."""
        return await self._m.actions.ban_many(targets, ttl=ttl, reason=reason, origin="key", allow_net=allow_net)

    async def unban(self, ip: str) -> ActionResult:
        return await self._m.actions.unban(ip, origin="key")

    async def set_limit(self, limit: PortLimit) -> ActionResult:
        return await self._m.actions.set_limit(limit, origin="key")

    async def undo(self) -> ActionResult:
        """Undo the last ban, unban or limit change made by hand."""
        return await self._m.actions.undo()

    async def what_if(self, proposal: str) -> WhatIfReport:
        """Replay the recent events under ``proposal``; changes nothing."""
        return await self._m.actions.what_if(proposal)
