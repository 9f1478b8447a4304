"""What both kernel backends share: :class:`KernelFirewall` (ban sets, the chain plan, dry-run,
locking; a backend only swaps how a plan is read and applied), :class:`NftCounters` (the
netlink reader of per-rule counters) and :func:`maybe_root` (a permission error -> NeedsRoot).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import shlex
import socket
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from ..model import PortCounters, PortLimit
from . import rules as R
from .base import Firewall, FirewallError, GuardedWrites, NeedsRoot
from .ipset import Ipset, run_binary

DEFAULT_LOCK = "/run/popwatch.lock"

_ROOT_HINTS = ("Permission denied", "you must be root", "Operation not permitted")


def maybe_root(e: FirewallError) -> FirewallError:
    if any(h in str(e) for h in _ROOT_HINTS):
        return NeedsRoot(f"{e} (popwatch needs root or CAP_NET_ADMIN to change the firewall: "
                         f"run it with sudo)")
    return e


class KernelFirewall(GuardedWrites, Firewall):
    """Shared logic of the kernel backends. Subclasses implement ``_state``, ``_apply`` and
    ``_poll_rules``."""

    name = "kernel"
    #: netlink reader of the chain's counters (the iptables-nft backend sets one)
    _nft: NftCounters | None = None
    #: binary spelled in dry-run descriptions of rule changes
    describe_binaries: Mapping[int, str] = {4: "iptables", 6: "ip6tables"}

    def __init__(self, *, ban_action: str = "drop", ipv6_prefix: int = 64, dry_run: bool = False,
                 lock_path: str | None = DEFAULT_LOCK, ipv6: bool = True, netlink: bool = True,
                 ipset_binary: str = "ipset", wait: int = 10, exempt: Iterable[str] | None = None) -> None:
        if ban_action not in R.BAN_ACTIONS:
            raise FirewallError(f"bad ban action {ban_action!r}: expected drop or reject")
        if not 16 <= int(ipv6_prefix) <= 128:
            raise FirewallError(f"bad IPv6 prefix {ipv6_prefix!r}: expected 16-128")
        self.ban_action = ban_action
        self.ipv6_prefix = int(ipv6_prefix)
        self.dry_run = dry_run
        self.lock_path = lock_path
        self.families: tuple[R.Family, ...] = (4, 6) if ipv6 else (4,)
        self.wait = wait
        self.planned: list[str] = []
        self._recording = dry_run
        self._gens: dict[int, int] = {}
        self._warnings: list[str] = []
        self._banned_dropped = 0
        self._writes_refused: str | None = None
        self.ipset = Ipset(self._write, self._read, binary=ipset_binary, netlink=netlink)
        self.ipset.dry_run = dry_run
        #: protected sources written to popwatchx4/x6 by install/ensure_base (None: leave as is)
        self.exempt: list[str] | None = None if exempt is None else R.exempt_entries(exempt)
        #: the ports popwatch put in place (install/set_limit); None: not installed by this process
        self._want: dict[int, PortLimit] | None = None
        #: the last counters() read, for check_enforcement (consumed by it)
        self._polled: dict[R.Family, list[R.ParsedRule]] | None = None
        self._head_keys: dict[int, list[tuple[object, ...]]] = {}

    # ------------------------------------------------------------------ plumbing
    def _read(self, argv: Sequence[str], stdin: str | None = None) -> str:
        try:
            return run_binary(argv, stdin)
        except FirewallError as e:
            raise maybe_root(e) from None

    def _write(self, argv: Sequence[str], stdin: str | None = None) -> str:
        if self._recording:
            cmd = shlex.join(argv)
            if stdin is not None:
                cmd += " <<'EOF'\n" + stdin + "EOF"
            self.planned.append(cmd)
            return ""
        self._check_writable()
        try:
            return run_binary(argv, stdin)
        except FirewallError as e:
            raise maybe_root(e) from None

    @contextmanager
    def recording(self) -> Iterator[list[str]]:
        """Within this block, writes are described (appended to the yielded list), not run."""
        prev, prev_ipset, start = self._recording, self.ipset.dry_run, len(self.planned)
        self._recording = True
        self.ipset.dry_run = True
        out: list[str] = []
        try:
            yield out
        finally:
            out.extend(self.planned[start:])
            del self.planned[start:]
            self._recording, self.ipset.dry_run = prev, prev_ipset

    # ------------------------------------------------------------------ subclass hooks
    def _state(self, family: R.Family, with_input: bool = False) -> R.ChainState:
        raise NotImplementedError

    def _apply(self, family: R.Family, work: R.Work) -> None:
        raise NotImplementedError

    def _poll_rules(self) -> dict[R.Family, list[R.ParsedRule]]:
        raise NotImplementedError

    # ------------------------------------------------------------------ Firewall API
    def _next_gens(self, states: dict[R.Family, R.ChainState]) -> dict[int, int]:
        gens: dict[int, int] = dict(self._gens)
        for st in states.values():
            for port, g in st.gens().items():
                gens[port] = max(gens.get(port, 0), g)
        return {p: g + 1 for p, g in gens.items()}

    def _remember_gens(self, gens: dict[int, int]) -> None:
        for p, g in gens.items():
            self._gens[p] = max(self._gens.get(p, 0), g)

    def ensure_base(self) -> None:
        """Sets, chain, ban match and jump; leaves the ports' rules as they are (CLI ``ban``)."""
        self._check_first()
        with self._locked():
            self.ipset.ensure()
            self._fill_exempt()  # exactly the protected set of this call (and of a running watch)
            for fam in self.families:
                st = self._state(fam, with_input=True)
                work = R.plan_base(st, fam, self.ban_action)
                if work.ops:
                    self._apply(fam, work)

    def install(self, limits: list[PortLimit]) -> None:
        self._check_first()
        with self._locked():
            self.ipset.ensure()
            self._fill_exempt()
            states = {fam: self._state(fam, with_input=True) for fam in self.families}
            gens = self._next_gens(states)
            for fam, st in states.items():
                work = R.plan_base(st, fam, self.ban_action)
                R.plan_ports(work, limits, fam, gens=gens, ipv6_prefix=self.ipv6_prefix, only=True)
                if st.jumps == 1 and not st.jump_first:
                    self.warn("popwatch's jump is not the first rule of INPUT"
                               f" ({'ip6tables' if fam == 6 else 'iptables'}): rules above it run first")
                if work.ops:
                    self._apply(fam, work)
            self._remember_gens(gens)
        self._want = {l.port: l for l in limits}

    def uninstall(self) -> None:
        self._check_first()
        with self._locked():
            for fam in self.families:
                st = self._state(fam, with_input=True)
                ops = R.plan_uninstall(st)
                if ops:
                    work = R.Work(R.ChainState())
                    work.ops = ops
                    self._apply(fam, work)
                self._after_uninstall(fam)
            for w in self.ipset.destroy():
                self.warn(w)

    def _fill_exempt(self, replace: bool = True) -> None:
        if self.exempt is not None:
            self.ipset.set_exempt(self.exempt, replace=replace)

    def set_exempt(self, targets: Iterable[str]) -> None:
        """Replace the protected sources (loopback is always added): packets from them leave
        popwatch's chain at its first rule, so they are never banned or rate-limited."""
        self._check_first()
        self.exempt = R.exempt_entries(targets)
        self._fill_exempt()

    def exempted(self) -> list[str]:
        """The protected sources in the kernel."""
        return self.ipset.exempt()

    def _after_uninstall(self, family: R.Family) -> None:
        """Hook: the nft backend drops a filter table left completely empty."""

    def set_limit(self, limit: PortLimit) -> None:
        self._check_first()
        with self._locked():
            states = {fam: self._state(fam) for fam in self.families}
            if not all(st.exists for st in states.values()):
                raise FirewallError("popwatch's chain is not installed: start `popwatch watch` "
                                    "(or ban or limit from the command line) to install it first")
            gens = self._next_gens(states)
            for fam, st in states.items():
                work = R.Work(st)
                R.plan_ports(work, [limit], fam, gens=gens, ipv6_prefix=self.ipv6_prefix)
                if work.ops:
                    self._apply(fam, work)
            self._remember_gens(gens)
        if self._want is not None:
            self._want[limit.port] = limit

    def limits(self) -> dict[int, PortLimit]:
        st = self._state(4)
        return st.limits()

    def installed(self) -> bool:
        """Whether popwatch's chain exists (v4)."""
        return self._state(4).exists

    def counters(self) -> dict[int, PortCounters]:
        per = self._poll_rules()
        self._polled = per
        total: dict[int, list[int]] = {}
        banned = 0
        for rules in per.values():
            ports, b = R.counters_by_port(rules)
            banned += b
            for port, (p, d) in ports.items():
                t = total.setdefault(port, [0, 0])
                t[0] += p
                t[1] += d
        self._banned_dropped = banned
        return {p: PortCounters(p, v[0], v[1]) for p, v in total.items()}

    def banned_dropped(self) -> int:
        return self._banned_dropped

    # -- enforcement checks (see Firewall.check_enforcement)
    def _jump_count(self, family: R.Family) -> int:
        """How many jumps INPUT has to popwatch's chain (backends override with a cheaper read)."""
        return self._state(family, with_input=True).jumps

    def check_enforcement(self) -> list[str]:
        """Judged from the last :meth:`counters` read (which already lists the chain's rules)
        plus one read of INPUT's jumps per family."""
        if self._recording:
            return []
        polled, self._polled = self._polled, None
        if polled is None:
            polled = self._poll_rules()
        problems: list[str] = []
        for fam in self.families:
            v = "IPv6" if fam == 6 else "IPv4"
            rules = polled.get(fam) or []
            if not rules:
                problems.append(f"{v} chain {R.CHAIN} gone or emptied")
            else:
                head = self._head_keys.get(fam)
                if head is None:
                    head = self._head_keys[fam] = [R.sem_key(r.args) for r in R.head_rules(fam, self.ban_action)]
                if [R.sem_key(r.args) for r in rules[:len(head)]] != head:
                    problems.append(f"{v} ban match changed")
                if self._want:
                    have = {r.port for r in rules if r.port is not None}
                    miss = sorted(set(self._want) - have)
                    if miss:
                        problems.append(f"{v} rules of port {', '.join(map(str, miss))} gone")
            if self._jump_count(fam) == 0:
                problems.append(f"{v} jump from INPUT gone")
        return problems

    def repair(self, bans: dict[str, float | None], *, stop: Callable[[], bool] | None = None) -> list[str]:
        """Recreate lost sets (refilled with ``bans``), the chain, its ban match, the jump and
        the ports popwatch installed; ports another popwatch retuned keep their live rule."""
        self._check_first()
        done: list[str] = []
        with self._locked():
            if stop is not None and stop():
                return []
            have = set(self.ipset.names())
            lost = [n for n in (R.SET4, R.SET6, R.SETX4, R.SETX6) if n not in have]
            if lost:
                self.ipset.ensure()
                self._fill_exempt()
                done.append(f"recreated set {', '.join(lost)}")
                if R.SET4 in lost or R.SET6 in lost:
                    n = self.ban_many(bans.items(), net=None)
                    done.append(f"restored {n} ban{'' if n == 1 else 's'} from popwatch's state")
            states = {fam: self._state(fam, with_input=True) for fam in self.families}
            gens = self._next_gens(states)
            for fam, st in states.items():
                work = R.plan_base(st, fam, self.ban_action)
                if self._want:
                    live = st.limits()
                    R.plan_ports(work, [live.get(p, l) for p, l in self._want.items()], fam, gens=gens,
                                 ipv6_prefix=self.ipv6_prefix)
                if work.ops:
                    self._apply(fam, work)
                    what = "chain, ban match, ports" if not st.exists else "rules"
                    done.append(f"{self.describe_binaries[fam]}: put back {what}"
                                + ("" if st.jumps else " and the jump from INPUT"))
            self._remember_gens(gens)
        return done

    def close_connections(self, ips: Iterable[str]) -> dict[str, int]:
        if self._recording or self.dry_run:
            return {}
        from .sockkill import close_tcp
        return close_tcp(ips)

    # -- bans
    def _entry(self, ip: str, net: bool | None) -> R.BanEntry:
        """Validate ``ip``. ``net=None`` (the Firewall API's plain ``ban(ip)``) accepts a network
        only in canonical form (``203.0.113.0/24``: what ``parse_target(..., allow_net=True)``
        produced after an explicit ``--net``); ``net=False`` refuses every network."""
        text = str(ip).strip()
        if net is None:
            net = False
            if "/" in text:
                try:
                    net = str(ipaddress.ip_network(text, strict=True)) == text
                except ValueError:
                    net = False
        return R.ban_entry(text, allow_net=net, ipv6_prefix=self.ipv6_prefix)

    def ban(self, ip: str, ttl: float | None = None, *, net: bool | None = None) -> None:
        """Ban one address (or, with ``net``, a network) for ``ttl`` seconds (None: for good)."""
        e = self._entry(ip, net)
        if not self._recording:
            self._check_writable()
        try:
            self.ipset.add(e.set_name, e.entry, R.ttl_seconds(ttl))
        except FirewallError as err:
            if "does not exist" in str(err) or "No such file" in str(err):
                raise FirewallError("popwatch's ban sets are missing: popwatch is not installed "
                                    "(start `popwatch watch` first)") from None
            raise maybe_root(err) from None

    def ban_many(self, items: Iterable[tuple[str, float | None]], *, net: bool | None = None) -> int:
        """Ban many addresses in one ``ipset restore`` (bulk load, restoring saved bans)."""
        entries = []
        for ip, ttl in items:
            e = self._entry(ip, net)
            entries.append((e.set_name, e.entry, R.ttl_seconds(ttl)))
        if not self._recording:
            self._check_writable()
        return self.ipset.restore(entries)

    def unban(self, ip: str, *, net: bool | None = None) -> None:
        e = self._entry(ip, net)
        if not self._recording:
            self._check_writable()
        try:
            self.ipset.delete(e.set_name, e.entry)
        except FirewallError as err:
            if "does not exist" in str(err) or "No such file" in str(err):
                return
            raise maybe_root(err) from None

    def bans(self) -> dict[str, float | None]:
        return {k: (None if v == 0 else float(v)) for k, v in self.ipset.entries().items()}

    def ban_key(self, ip: str, *, net: bool | None = None) -> str:
        """The set entry a ban of ``ip`` becomes (``2001:db8::7`` -> ``2001:db8::/64``)."""
        return self._entry(ip, net).entry

    # -- descriptions (dry-run, confirm modal)
    def describe_ban(self, ip: str, ttl: float | None = None, *, net: bool | None = None) -> list[str]:
        with self.recording() as out:
            self.ban(ip, ttl, net=net)
        return out

    def describe_unban(self, ip: str, *, net: bool | None = None) -> list[str]:
        with self.recording() as out:
            self.unban(ip, net=net)
        return out

    def describe_limit(self, limit: PortLimit) -> list[str]:
        with self.recording() as out:
            self.set_limit(limit)
        return out

    def describe_install(self, limits: list[PortLimit]) -> list[str]:
        with self.recording() as out:
            self.install(limits)
        return out

    def describe_uninstall(self) -> list[str]:
        with self.recording() as out:
            self.uninstall()
        return out

    def warn(self, text: str) -> None:
        if text not in self._warnings:
            self._warnings.append(text)

    def warnings(self) -> list[str]:
        return list(self._warnings)

    def check_setup(self) -> list[str]:
        """The four sets, and per family: the chain, its protected/ban matches at the top,
        and exactly one jump to it from INPUT (see :meth:`Firewall.check_setup`)."""
        problems: list[str] = []
        have = set(self.ipset.names())
        lost = [n for n in (R.SET4, R.SET6, R.SETX4, R.SETX6) if n not in have]
        if lost:
            problems.append(f"set{'s' if len(lost) > 1 else ''} {', '.join(lost)} missing")
        for fam in self.families:
            v = "IPv6" if fam == 6 else "IPv4"
            st = self._state(fam, with_input=True)
            if not st.exists:
                problems.append(f"{v} chain {R.CHAIN} missing")
            else:
                head = [R.sem_key(r.args) for r in R.head_rules(fam, self.ban_action)]
                if [R.sem_key(r.args) for r in st.rules[:len(head)]] != head:
                    problems.append(f"{v} protected/ban rules at the top of {R.CHAIN} changed")
            if st.jumps == 0:
                problems.append(f"{v} jump from INPUT to {R.CHAIN} missing")
            elif st.jumps > 1:
                problems.append(f"{v} INPUT jumps to {R.CHAIN} {st.jumps} times")
        return problems

    def close(self) -> None:
        self.ipset.close()
        if self._nft is not None:
            self._nft.close()


class NftCounters:
    """Read the per-rule counters of one chain straight from nf_tables over netlink (one
    ``NFT_MSG_GETRULE`` dump, ~0.1 ms in process, vs ~3 ms for a fork+exec of ``iptables -S``).
    Returns ``[(handle, packets, bytes), ...]`` in chain order; the rules' meaning still comes
    from ``iptables -S``, cached by rule handles (handles are never reused within a table)."""

    _SUBSYS, _GETRULE, _NEWRULE = 10, 7, 6
    _DUMP = 0x300 | 0x1  # NLM_F_DUMP | NLM_F_REQUEST

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._seq = 0

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @staticmethod
    def _attr(atype: int, payload: bytes) -> bytes:
        ln = 4 + len(payload)
        return struct.pack("=HH", ln, atype) + payload + b"\0" * ((4 - ln % 4) % 4)

    @staticmethod
    def attrs(buf: bytes, off: int, end: int) -> Iterator[tuple[int, bytes]]:
        while off + 4 <= end:
            ln, atype = struct.unpack_from("=HH", buf, off)
            if ln < 4:
                return
            yield atype & 0x3FFF, buf[off + 4:off + ln]
            off += (ln + 3) & ~3

    def jumps(self, family: int, target: str = R.CHAIN, chain: str = "INPUT") -> int:
        """How many rules of ``chain`` jump to ``target`` (0 when the table or chain is gone)."""
        try:
            return sum(self.rules(family, chain=chain, parse=lambda b, o, e: self._jumps_to(b, o, e, target)))
        except OSError as e:
            if e.errno == errno.ENOENT:
                return 0
            raise

    def _jumps_to(self, buf: bytes, off: int, end: int, target: str) -> int:
        want = target.encode() + b"\0"
        for atype, val in self.attrs(buf, off, end):
            if atype != 4:  # NFTA_RULE_EXPRESSIONS
                continue
            for _, elem in self.attrs(val, 0, len(val)):
                name, data = b"", b""
                for et, ev in self.attrs(elem, 0, len(elem)):
                    if et == 1:
                        name = ev.rstrip(b"\0")
                    elif et == 2:
                        data = ev
                if name != b"immediate":
                    continue
                for it, iv in self.attrs(data, 0, len(data)):        # NFTA_IMMEDIATE_DATA
                    if it != 2:
                        continue
                    for dt, dv in self.attrs(iv, 0, len(iv)):        # NFTA_DATA_VERDICT
                        if dt != 2:
                            continue
                        code, chain = None, b""
                        for vt, vv in self.attrs(dv, 0, len(dv)):
                            if vt == 1:
                                (code,) = struct.unpack(">i", vv)
                            elif vt == 2:
                                chain = vv
                        if code == -3 and chain == want:              # NFT_JUMP
                            return 1
        return 0

    def rules(self, family: int, table: str = "filter", chain: str = R.CHAIN,
              parse: Callable[[bytes, int, int], Any] | None = None) -> list[Any]:
        if self._sock is None:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
            s.bind((0, 0))
            s.settimeout(5.0)
            self._sock = s
        self._seq += 1
        seq = self._seq
        body = (struct.pack("=BBH", 2 if family == 4 else 10, 0, 0)
                + self._attr(1, table.encode() + b"\0") + self._attr(2, chain.encode() + b"\0"))
        self._sock.send(struct.pack("=IHHII", 16 + len(body), (self._SUBSYS << 8) | self._GETRULE,
                                    self._DUMP, seq, 0) + body)
        out: list[Any] = []
        while True:
            buf = self._sock.recv(1 << 20)
            off = 0
            while off + 16 <= len(buf):
                ln, typ, _fl, rseq, _pid = struct.unpack_from("=IHHII", buf, off)
                if ln < 16:
                    raise OSError("bad netlink message")
                if rseq == seq:
                    if typ == 3:  # NLMSG_DONE
                        return out
                    if typ == 2:  # NLMSG_ERROR
                        (err,) = struct.unpack_from("=i", buf, off + 16)
                        if err:
                            raise OSError(-err, os.strerror(-err))
                    elif typ == (self._SUBSYS << 8) | self._NEWRULE:
                        out.append((parse or self._rule)(buf, off + 20, off + ln))
                off += (ln + 3) & ~3

    def _rule(self, buf: bytes, off: int, end: int) -> tuple[object, int, int]:
        """(key, packets, bytes): the key is the rule's handle and a hash of its expressions
        without the counters, so a rule replaced in place (``iptables -R``: same handle) is
        seen as changed."""
        handle = pkts = byts = 0
        shape = 0
        for atype, val in self.attrs(buf, off, end):
            if atype == 3:  # NFTA_RULE_HANDLE
                (handle,) = struct.unpack(">Q", val)
            elif atype == 4:  # NFTA_RULE_EXPRESSIONS
                for _, elem in self.attrs(val, 0, len(val)):
                    name, data = b"", b""
                    for et, ev in self.attrs(elem, 0, len(elem)):
                        if et == 1:
                            name = ev.rstrip(b"\0")
                        elif et == 2:
                            data = ev
                    if name != b"counter":
                        shape = hash((shape, elem))
                    else:
                        for ct, cv in self.attrs(data, 0, len(data)):
                            if ct == 1:
                                (byts,) = struct.unpack(">Q", cv)
                            elif ct == 2:
                                (pkts,) = struct.unpack(">Q", cv)
        return (handle, shape), pkts, byts
