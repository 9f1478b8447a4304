"""Enforcement that survives the admin's own firewall tools.

A restored ruleset (``iptables-restore``, ``netfilter-persistent reload``), ``iptables -F``,
``ufw reload``, ``nft flush ruleset`` or a firewalld reload removes popwatch's chain, its jump
or its rules, and the attacker is back in while the screen still says "banned". After every
counter poll the Monitor asks the backend (:meth:`Firewall.check_enforcement`: judged from the
rules that poll already read, plus one cheap read of INPUT's jumps) whether everything is in
place; when not, it puts it back (:meth:`Firewall.repair`, every active ban from the store when
the sets were lost too), audits ``heal`` and says so in the header and the notes.

It never fights a deliberate removal: ``popwatch uninstall`` writes :data:`MARKER` into the
state directory before removing anything, and repair checks it with the firewall lock held.
A later ``popwatch watch`` clears it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .firewall.base import Firewall
    from .monitor import Monitor

MARKER = "uninstalled"
#: how long a past repair stays in ``status`` warnings
RECENT = 24 * 3600


def mark_uninstalled(state_dir: Path) -> None:
    """Written by ``popwatch uninstall`` before it removes anything (best effort)."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (state_dir / MARKER).write_text(json.dumps({"time": time.time(), "pid": os.getpid()}) + "\n")
    except OSError:
        pass


class NftEvents:
    """Change events of nf_tables (``nft monitor``'s source: netlink group NFNLGRP_NFTABLES) in
    this network namespace: a thread calls ``on_change()`` when a table, chain or rule is
    deleted or a rule added or replaced, so a removal is repaired at once rather than at the
    next poll. iptables-nft changes are nf_tables changes too; the legacy tables have none."""

    _GROUP = 7  # NFNLGRP_NFTABLES
    _TYPES = frozenset((10 << 8) | t for t in (2, 5, 6, 8))  # DELTABLE, DELCHAIN, NEWRULE, DELRULE

    def __init__(self, on_change: Callable[[], None]) -> None:
        self.on_change = on_change
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
        self._sock.bind((0, 1 << (self._GROUP - 1)))
        self._sock.settimeout(0.5)
        self._thread = threading.Thread(target=self._run, name="popwatch-nft-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                buf = self._sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:  # ENOBUFS after a burst: something changed, check anyway
                buf = b""
                if self._stop.is_set():
                    return
                self.on_change()
                continue
            off = 0
            while off + 16 <= len(buf):
                ln, typ = struct.unpack_from("=IH", buf, off)
                if typ in self._TYPES:
                    self.on_change()
                    break
                if ln < 16:
                    break
                off += (ln + 3) & ~3

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()


class Healer:
    """The Monitor's watch over its own rules (one per Monitor)."""

    def __init__(self, monitor: Monitor) -> None:
        self.m = monitor
        p = monitor.persist
        self.marker: Path | None = None if p is None else p.dir / MARKER
        self.active = False
        #: (epoch, short text) of the last repair or stand-down, for the header
        self.last: tuple[float, str] | None = None
        self.repairs = 0
        self.events: NftEvents | None = None
        self._events_tried = False
        self._kicked = False
        self._busy = False
        self._again = False
        self._failed = ""

    def arm(self) -> None:
        """popwatch's rules were just installed: watch them (clears an old uninstall marker)."""
        if self.marker is not None:
            try:
                self.marker.unlink()
            except OSError:
                pass
        self.active = True

    def uninstalled(self) -> bool:
        return self.marker is not None and self.marker.exists()

    @property
    def header(self) -> str:
        """Short text for the header: ``fw restored 05:31:02`` (empty when nothing happened)."""
        if self.last is None:
            return ""
        return f"{self.last[1]} {time.strftime('%H:%M:%S', time.localtime(self.last[0]))}"

    def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """Once: subscribe to nf_tables change events when the backend's rules live there."""
        self._events_tried = True
        if not self.m.firewall.nf_tables:
            return
        try:
            def wake() -> None:  # on the events thread
                loop.call_soon_threadsafe(self._kick, loop)
            self.events = NftEvents(wake)
        except OSError:
            self.events = None  # no netlink access: polling alone

    def _kick(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._kicked:  # a ruleset restore sends a burst: one check 50 ms after the first
            self._kicked = True
            loop.call_later(0.05, lambda: asyncio.ensure_future(self._on_event(loop)))

    async def _on_event(self, loop: asyncio.AbstractEventLoop) -> None:
        self._kicked = False
        if self._busy:  # a check is under way and may have read before the change: once more after it
            self._again = True
            return
        try:
            await self.poll(loop, fresh=True)
        except Exception as e:  # noqa: BLE001 - the poll tries again within a second
            self.m.store.note(f"checking popwatch's rules failed: {e}")

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
            self.events = None

    async def poll(self, loop: asyncio.AbstractEventLoop, fresh: bool = False) -> None:
        """After a counter poll (or, ``fresh``, on an nf_tables change event: the rules are read
        again first): check, and repair what another tool removed."""
        m = self.m
        fw: Firewall = m.firewall
        if not self.active or m.dry_run or not fw.can_write or self._busy:
            return
        if not self._events_tried:
            self._listen(loop)
        self._busy = True
        try:
            await self._check(loop, m, fw, fresh)
        finally:
            self._busy = False
        if self._again:
            self._again = False
            self._kick(loop)

    async def _check(self, loop: asyncio.AbstractEventLoop, m: Monitor, fw: Firewall, fresh: bool) -> None:
        if self.uninstalled():
            self.active = False
            self.last = (m.clock(), "fw: uninstalled, staying out")
            why = "`popwatch uninstall` removed popwatch's rules: not putting them back"
            m.actions.audit("heal-stop", "firewall", origin="heal", reason=why)
            # from now on read-only, and said once (header, stderr and the events stream)
            from .firewall.base import NoFirewall

            m.firewall = NoFirewall(list(m.store.limits.values()),
                                    reason=f"{why}; restart popwatch to install them again",
                                    short="uninstalled")
            m.say_once(f"read-only (watching only): {why}; restart popwatch to install them again")
            return
        check = functools.partial(_fresh_check, fw) if fresh else fw.check_enforcement
        problems = await m.fw_thread.run(check)
        if not problems:
            return
        now = m.clock()
        bans = {b.ip: (None if b.expires is None else max(1.0, b.expires - now))
                for b in list(m.store.bans.values()) if b.expires is None or b.expires > now + 1}
        what = "; ".join(problems)
        try:
            done = await m.fw_thread.run(functools.partial(fw.repair, bans, stop=self.uninstalled))
        except Exception as e:  # noqa: BLE001 - say so (once per distinct error), try again next poll
            text = f"popwatch's rules were removed ({what}) and could not be put back: {e}"
            if text != self._failed:
                self._failed = text
                m.store.note(text)
            self.last = (now, "fw: REMOVED, repair failed")
            return
        self._failed = ""
        if not done:  # an uninstall got the lock first: the next poll stands down
            return
        self.repairs += 1
        stamp = time.strftime("%H:%M:%S", time.localtime(now))
        m.actions.audit("heal", "firewall", origin="heal", reason=f"removed by another tool: {what}",
                 change=done, bans=len(bans))
        m.store.note(f"{stamp} another tool removed popwatch's rules ({what}); put back with "
                     f"{len(bans)} active ban{'' if len(bans) == 1 else 's'}")
        self.last = (now, "fw: rules restored")


def _fresh_check(fw: Firewall) -> list[str]:
    fw.counters()  # check_enforcement judges from the last counters() read: make it now
    return fw.check_enforcement()


def status_warnings(state_dir: Path, fw: Firewall) -> list[str]:
    """For ``popwatch status``: rules missing now, and repairs in the last day."""
    out: list[str] = []
    if (state_dir / MARKER).exists():
        return out
    used = (state_dir / "bans.json").exists() or (state_dir / "audit.jsonl").exists()
    if used and fw.can_write:
        try:
            problems = fw.check_enforcement()
        except Exception:  # noqa: BLE001 - status must answer anyway
            problems = []
        if problems:
            out.append(f"popwatch's rules are not all in place ({'; '.join(problems)}): a running "
                       f"`popwatch watch` puts them back within 2 s; otherwise start it")
    last = _last_heal(state_dir / "audit.jsonl")
    if last is not None:
        out.append(f"{last.get('time', '?')}: another tool removed popwatch's rules "
                   f"({str(last.get('reason', '')).removeprefix('removed by another tool: ')}); "
                   f"popwatch put them back with {last.get('bans', 0)} bans")
    return out


def _last_heal(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            tail = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(tail):
        if '"heal"' not in line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("action") != "heal":
            continue
        try:
            if time.time() - datetime.fromisoformat(str(rec.get("time"))).timestamp() > RECENT:
                return None
        except ValueError:
            pass
        return rec
    return None
