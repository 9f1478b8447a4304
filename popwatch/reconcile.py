"""Reconcile: the start-up restore and the kernel/store ban sync.

:meth:`Reconciler.reconcile` (start-up, sync) brings the saved bans, the kernel's sets and the
store into agreement: saved bans still active but missing from the kernel (a reboot emptied the
sets) are restored with their remaining time, expired ones dropped, bans found in the kernel
adopted. :meth:`Reconciler.sync_from_kernel` (every few polls) follows bans and unbans made in
the kernel by another popwatch process (the CLI) while this one runs, and finds bans that left
the kernel with no popwatch unban behind them (`ipset flush`, `nft flush set`, a delete by hand):
:meth:`Reconciler.put_back` puts those back.
"""

from __future__ import annotations

import ipaddress
import time
from typing import TYPE_CHECKING, Any

from .addr import NetIndex
from .faults import point
from .firewall.base import FirewallError
from .model import Ban

if TYPE_CHECKING:
    from .monitor import Monitor


class Reconciler:
    """Restore and sync for one Monitor (``monitor.reconciler``)."""

    def __init__(self, monitor: Monitor) -> None:
        self.m = monitor

    def reconcile(self) -> list[str]:
        """Start-up: bring the saved bans, the kernel and the store into agreement (sync; call
        after :meth:`Monitor.start_firewall`). Saved bans still active but missing from the kernel (a
        reboot emptied the sets) are restored with their remaining time; expired ones are
        dropped; bans found in the kernel are adopted without being added again. Returns what
        was done, one line each (also noted in the store)."""
        msgs: list[str] = []
        saved = self.m.persist.load_bans() if self.m.persist is not None else []
        problems = list(self.m.persist.problems) if self.m.persist is not None else []
        try:
            kernel = self.m.firewall.bans() if self.m.firewall.can_write or self.m.dry_run else {}
        except Exception as e:  # noqa: BLE001 - start anyway, read-only view of bans
            kernel = {}
            msgs.append(f"could not read the kernel's bans: {e}")
        now = self.m.clock()
        seen: set[str] = set()
        restored = adopted = expired = refused = 0
        todo: list[Ban] = []
        # nets before members, shorter before longer: a later add (-exist) sets the timeout, so
        # a network ban never shortens a longer member ban
        saved = sorted(saved, key=lambda b: (b.expires is None, b.expires or 0.0, "/" not in b.ip))
        for b in saved:
            if b.expires is not None and b.expires <= now:
                expired += 1
                self.m.actions.audit("expire", b.ip, origin="reconcile",
                                     reason="expired while popwatch was not running")
                continue
            entry = self.m.actions.ban_entry(b.ip, "/" in b.ip)
            members = [] if entry in kernel else v4_members(b.ip)
            held = [a for a in members if a in kernel]
            seen.update(held)  # an IPv4 network ban's addresses are that ban, not bans of their own
            why = self.m.actions.why_refused(b.ip, "/" in b.ip)
            if why:
                refused += 1
                msgs.append(f"not restoring the ban of {b.ip}: {why}")
                if entry in kernel or held:
                    self.lift_protected(b.ip, why, msgs)
                seen.add(entry)
                continue
            seen.add(entry)
            if entry in kernel or (members and len(held) == len(members)):
                adopted += 1
                self.m.store.set_ban(b)
                continue
            if not self.m.firewall.can_write and not self.m.dry_run:
                msgs.append(f"cannot restore the ban of {b.ip}: the firewall is read-only")
                continue
            todo.append(b)
        restored = self.restore_bulk(todo, now, msgs)
        from_audit = self.audit_bans(set(kernel) - seen) if kernel else {}
        audit_nets = NetIndex()  # IPv4 network bans known only from the audit log (killed before bans.json)
        for target in from_audit:
            if "/" in target and ":" not in target:
                audit_nets.add(target)
        for entry, left in kernel.items():
            if entry in seen:
                continue
            net = next(iter(audit_nets.holders(entry)), None) if audit_nets and "/" not in entry else None
            if net is not None:
                seen.add(net)
                seen.update(v4_members(net))
                entry = net
            why = self.m.protector.why_protected(entry)
            if why:  # never keep the admin (or the allow-list) locked out
                self.lift_protected(entry, why, msgs)
                continue
            rec = from_audit.get(entry)
            if rec is not None:  # banned, then killed before bans.json was written: its record says why
                ban = Ban(str(rec["target"]), now, None if left is None else now + left,
                          str(rec.get("reason", "")), str(rec.get("origin", "kernel")))
            else:
                ban = Ban(entry, now, None if left is None else now + left, "found in the kernel", "kernel")
            self.m.store.set_ban(ban)
            adopted += 1
        if not self.m.dry_run:
            self.m.actions.saved = {b.ip: b for b in saved}
            self.m.actions.save_bans_now()
        summary = (f"bans on start: {restored} restored, {adopted} already in the kernel, "
                   f"{expired} expired" + (f", {refused} protected (not restored)" if refused else ""))
        msgs.insert(0, summary)
        for m in msgs:
            self.m.store.note(m)
        msgs.extend(f"state dir: {p}" for p in problems)  # corrupt state files: noted in the store at start
        return msgs

    def restore_bulk(self, todo: list[Ban], now: float, msgs: list[str]) -> int:
        """Put saved bans back in the kernel: one audit record (written ahead), then one bulk
        load (``ban_many``: netlink batches, or one nft transaction), up to what the set can hold."""
        if not todo:
            return 0
        cap = _set_capacity()
        if len(todo) > cap:
            keep = sorted(todo, key=lambda b: (b.expires is not None, -(b.expires or 0.0)))[:cap]
            msgs.append(f"{len(todo) - cap} saved bans not restored: the kernel ban set holds at most "
                        f"{cap} entries (the longest bans were kept)")
            kept = {id(b) for b in keep}
            todo = [b for b in todo if id(b) in kept]
        items = [(b.ip, None if b.expires is None else b.expires - now) for b in todo]
        if self.m.dry_run:
            for ip, ttl in items[:1000]:
                msgs.extend(self.m.firewall.describe_ban(ip, ttl))
            for b in todo:
                self.m.store.set_ban(b)
            return len(todo)
        targets = [b.ip for b in todo]
        recs: list[dict[str, Any]] = []
        if self.m.persist is not None and len(todo) <= 1000:  # one record each, one write
            recs = [self.m.persist.record("restore", b.ip, origin="reconcile", reason=b.reason or "restored on start",
                                        change=[f"ban {ip} ttl {ttl}"], expires=b.expires)
                    for b, (ip, ttl) in zip(todo, items, strict=False)]
            self.m.persist.write_audit(recs)
            rec = None
        else:  # a bulk restore: one record naming the count (bans.json lists them)
            rec = self.m.actions.audit("restore", f"{len(todo)} bans", origin="reconcile", reason="restored on start",
                              targets=targets[:1000], count=len(targets))
        done: list[Ban] = []
        try:
            point("kernel restore")
            self.m.firewall.ban_many(items)
            point("kernel restore done")
            done = todo
        except (FirewallError, ValueError) as e:
            msgs.append(f"bulk restore failed ({e}); restoring one by one")
        if not done:
            for b, (ip, ttl) in zip(todo, items, strict=False):
                try:
                    self.m.firewall.ban(ip, ttl)
                    done.append(b)
                except (FirewallError, ValueError) as e:
                    msgs.append(f"could not restore the ban of {ip}: {e}")
            done_ids = {id(b) for b in done}
            failed = {b.ip for b in todo if id(b) not in done_ids}
            if rec is not None and not done:
                self.m.actions.void(rec, "nothing could be restored")
            for r in recs:
                if r["target"] in failed:
                    self.m.actions.void(r, "could not be restored")
        for b in done:
            self.m.store.set_ban(b)
        return len(done)

    def audit_bans(self, entries: set[str]) -> dict[str, dict[str, Any]]:
        """For kernel entries bans.json does not know: the newest audit ban record of each that
        was not voided nor followed by an unban."""
        if self.m.persist is None or not entries:
            return {}
        recs = self.m.persist.read_audit()
        voided = {r.get("voids") for r in recs if r.get("action") == "void"}
        out: dict[str, dict[str, Any]] = {}
        for r in recs:
            act, target = r.get("action"), r.get("target")
            if not isinstance(target, str) or " " in target:
                continue
            if act == "ban" and r.get("ok", True) and r.get("id") not in voided:
                try:
                    e = self.m.actions.ban_entry(target, "/" in target)
                except (ValueError, TypeError):
                    continue
                if e in entries:
                    out[e] = r
                elif any(a in entries for a in v4_members(target)):
                    out[target] = r  # an IPv4 network ban: the kernel holds its addresses
            elif act in ("unban", "expire"):
                try:
                    out.pop(self.m.actions.ban_entry(target, "/" in target), None)
                except (ValueError, TypeError):
                    continue
                out.pop(target, None)
        return out

    def lift_protected(self, target: str, why: str, msgs: list[str]) -> None:
        """Start-up found a protected address banned in the kernel: lift it, say so."""
        if self.m.dry_run or not self.m.firewall.can_write:
            msgs.append(f"the kernel bans {target}, which is protected ({why}); lift it with "
                        f"`popwatch unban {target}`")
            return
        try:
            self.m.firewall.unban(target)
        except (FirewallError, ValueError) as e:
            msgs.append(f"could not lift the ban of protected {target}: {e}")
            return
        self.m.actions.audit("unban", target, origin="reconcile", reason=f"protected: {why}",
                    change=[f"unban {target}"])
        msgs.append(f"lifted the ban of {target}: {why}")

    def _entries(self) -> dict[str, str]:
        """The store's bans by kernel entry (IPv6: the banned prefix)."""
        return {self.m.actions.ban_entry(ip, "/" in ip): ip for ip in self.m.store.bans}

    def missing(self, kernel: dict[str, float | None], read_at: float,
                entries: dict[str, str] | None = None) -> list[Ban]:
        """Store bans the kernel no longer has (made before ``read_at``, not in flight)."""
        if entries is None:
            entries = self._entries()
        gone: list[Ban] = []
        for entry, ip in entries.items():
            b = self.m.store.bans.get(ip)
            # an IPv4 network ban is in the kernel as its addresses (those not banned on their own)
            present = entry in kernel or any(a in kernel and a not in entries for a in v4_members(ip))
            if not present and b is not None and b.created < read_at and ip not in self.m.actions.pending:
                gone.append(b)
        return gone

    def sync_from_kernel(self, kernel: dict[str, float | None], read_at: float,
                         lost: list[Ban] | None = None) -> list[Ban]:
        """While running: drop store bans the kernel no longer has (a CLI unban, expiry), adopt
        kernel bans the store does not know (a CLI ban). Keeps, and returns, the bans that left
        the kernel although nothing of popwatch's lifted them (:meth:`lost`, computed here
        unless given: the Monitor reads the audit log off the loop): another tool removed
        them, and the caller puts them back (:meth:`put_back`)."""
        entries = self._entries()
        store_nets = self.m.store.net_bans
        changed = False
        gone = self.missing(kernel, read_at, entries)
        if lost is None:
            lost = self.lost(gone, read_at)
        kept = {b.ip for b in lost}
        for b in gone:
            if b.ip not in kept:
                self.m.store.remove_ban(b.ip)
                changed = True
        now = self.m.clock()
        new = [e for e in kernel if e not in entries]
        if new:
            saved: dict[str, Ban] = {}
            saved_nets = NetIndex()
            if self.m.persist is not None:  # a CLI ban made while we run: its record says why
                saved = {self.m.actions.ban_entry(b.ip, "/" in b.ip): b for b in self.m.persist.load_bans()}
                for b in saved.values():
                    if "/" in b.ip and ":" not in b.ip:
                        saved_nets.add(b.ip)
            for entry in new:
                left = kernel[entry]
                if "/" not in entry and ":" not in entry and (store_nets or saved_nets):
                    if any(":" not in n for n in store_nets.holders(entry)):
                        continue  # an address of a network ban the store has
                    net = next(iter(saved_nets.holders(entry)), None)
                    if net is not None:  # an address of a network banned by the CLI meanwhile
                        self.m.store.set_ban(saved[net])
                        changed = True
                        continue
                rec = saved.get(entry)
                if rec is not None:
                    self.m.store.set_ban(rec)
                else:
                    self.m.store.set_ban(Ban(entry, now, None if left is None else now + left,
                                           "found in the kernel", "kernel"))
                changed = True
        if changed:
            self.m.actions.bans_dirty = True
        return lost

    def lost(self, gone: list[Ban], read_at: float) -> list[Ban]:
        """Of the bans the kernel no longer has, those popwatch did not lift: not run out, and
        the audit log's newest word on their target is a ban (a CLI unban writes its record
        before it changes the kernel). Without a state dir nothing can tell: none. Reads the
        audit log and touches nothing else (any thread)."""
        if not gone or self.m.persist is None or self.m.dry_run:
            return []
        live = [b for b in gone if b.expires is None or b.expires > read_at + 2.0]
        if not live:
            return []
        entry = self.m.actions.ban_entry
        want = {entry(b.ip, "/" in b.ip) for b in live}
        recs = self.m.persist.read_audit()
        voided = {r.get("voids") for r in recs if r.get("action") == "void"}
        last: dict[str, str] = {}
        for r in recs:
            act = r.get("action")
            if act not in ("ban", "restore", "heal", "unban", "expire") or not r.get("ok", True) \
                    or r.get("id") in voided:
                continue
            targets = r.get("targets") if act in ("restore", "heal") else None
            named = targets if isinstance(targets, list) else [r.get("target")]
            for t in named:
                if not isinstance(t, str) or " " in t:
                    continue
                try:
                    e = entry(t, "/" in t)
                except (ValueError, TypeError):
                    continue
                if e in want:
                    last[e] = "lifted" if act in ("unban", "expire") else "banned"
        # never put back a ban on what is protected now (the admin's new SSH client, say)
        return [b for b in live if last.get(entry(b.ip, "/" in b.ip)) == "banned"
                and not self.m.actions.why_refused(b.ip, "/" in b.ip)]

    def put_back(self, lost: list[Ban]) -> tuple[bool, str]:
        """Firewall thread: the bans another tool took out of the kernel, back in (one audit
        record written ahead, one bulk load). Returns (done, what to tell the admin)."""
        now = self.m.clock()
        items = [(b.ip, None if b.expires is None else max(1.0, b.expires - now)) for b in lost]
        n = len(items)
        what = (f"{n} ban{'' if n == 1 else 's'} deleted from the kernel's ban sets "
                f"(ipset flush, nft flush set or by hand; e.g. {items[0][0]})")
        rec = self.m.actions.audit("heal", f"{n} bans", origin="heal", reason=f"removed by another tool: {what}",
                                   change=[f"ban {ip} ttl {ttl}" for ip, ttl in items[:20]], bans=n,
                                   targets=[ip for ip, _ in items[:1000]], count=n)
        try:
            self.m.firewall.ban_many(items)
        except (FirewallError, ValueError) as e:
            self.m.actions.void(rec, f"could not put them back: {e}")
            return False, f"{what}: could not put them back: {e}"
        stamp = time.strftime("%H:%M:%S", time.localtime(now))
        return True, f"{stamp} another tool removed {what}; put back (lift a ban with `popwatch unban`)"


def v4_members(ip: str) -> list[str]:
    """The kernel entries of an IPv4 network ban: its addresses (both kernel backends keep one
    that way: ipset's hash:ip, nftables' ban4; networks are at most /24). [] for anything else."""
    if "/" not in ip or ":" in ip:
        return []
    try:
        return [str(a) for a in ipaddress.IPv4Network(ip)]
    except ValueError:
        return []


def _set_capacity() -> int:
    """How many entries one kernel ban set holds (ipset's ``maxelem`` at create)."""
    try:
        from .firewall.ipset import MAXELEM
        return int(MAXELEM)
    except (ImportError, AttributeError, ValueError):
        return 1 << 20
