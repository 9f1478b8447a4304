"""The chain/rule model shared by the kernel backends (``nft`` binaries and ``legacy`` iptc).

Pure: no I/O. Everything here renders or parses iptables rule specs in the canonical form that
``iptables -S`` prints, so a rule popwatch wrote can be recognised when read back (adopted) and a
rule read back can be fed to ``iptables-restore`` again.

Layout, per family (``4`` = iptables, ``6`` = ip6tables)::

    -A INPUT -j POPWATCH                                         (once, at the top)
    -A POPWATCH -m set --match-set popwatchx4 src -j RETURN       (protected sources)
    -A POPWATCH -m set --match-set popwatch4 src -j DROP          (the ban match)
    -A POPWATCH <new tcp to P> -j RETURN                          (mode count)
    -A POPWATCH <new tcp to P> -m limit --limit R ... -j RETURN   (mode global)
    -A POPWATCH <new tcp to P> -j DROP
    -A POPWATCH <new tcp to P> -m hashlimit --hashlimit-upto R ... --hashlimit-name pwP_G -j RETURN
    -A POPWATCH <new tcp to P> -j DROP                            (mode per-source)

where ``<new tcp to P>`` is ``-p tcp -m tcp --dport P --tcp-flags FIN,SYN,RST,ACK SYN -m
conntrack --ctstate NEW``. popwatch never ACCEPTs. The RETURN rule counts what passed, the DROP
rule what was dropped; in count mode only the RETURN rule exists (nothing is dropped).

With ``ban_action="reject"`` the ban match is two rules: tcp gets ``REJECT --reject-with
tcp-reset`` (attack tools give up at once), everything else the default ICMP port-unreachable.
Over-limit packets are always DROPped (a reset would invite an immediate retry).
"""

from __future__ import annotations

import ipaddress
import math
import re
import shlex
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from ..addr import IPAddress, IPNetwork, parse_target
from ..model import PortLimit, Rate
from .base import FirewallError

CHAIN = "POPWATCH"
SET4 = "popwatch4"
SET6 = "popwatch6"
#: protected sources (loopback, the admin's SSH client, the host's own addresses, the
#: allow-list): RETURNed before anything else, so popwatch never bans or rate-limits them
SETX4 = "popwatchx4"
SETX6 = "popwatchx6"
JUMP: tuple[str, ...] = ("-j", CHAIN)
Family = Literal[4, 6]
BanAction = Literal["drop", "reject"]
BAN_ACTIONS: tuple[str, ...] = ("drop", "reject")
#: the largest IPv4 network a ``--net`` ban may expand into the hash:ip set (256 entries)
MAX_V4_NET_PREFIX = 24
#: ipset's own cap on a timeout (seconds); 0 means permanent in a set created with ``timeout 0``
MAX_TIMEOUT = 2147483

Role = Literal["exempt", "ban", "pass", "drop", "other"]


def new_tcp(port: int) -> list[str]:
    """The match for a new TCP connection to ``port``, as ``iptables -S`` prints it."""
    return ["-p", "tcp", "-m", "tcp", "--dport", str(int(port)),
            "--tcp-flags", "FIN,SYN,RST,ACK", "SYN", "-m", "conntrack", "--ctstate", "NEW"]


def rate_arg(rate: Rate) -> str:
    """``5/sec``: the spelling iptables prints (and accepts)."""
    unit = {1: "sec", 60: "min", 3600: "hour", 86400: "day"}[rate.unit]
    return f"{rate.count}/{unit}"


def hashlimit_name(port: int, gen: int) -> str:
    return f"pw{int(port)}_{int(gen)}"


_HL_NAME = re.compile(r"^pw(\d{1,5})_(\d{1,9})$")


def parse_hashlimit_name(name: str) -> tuple[int, int] | None:
    m = _HL_NAME.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def hashlimit_expire_ms(limit: PortLimit) -> int:
    """How long an idle source's bucket is kept: at least the time a full bucket takes to
    refill (so forgetting a source never hands it tokens early), at least 10 s.

    python-iptables does not run libxt_hashlimit's defaults (the kernel then refuses the rule
    with EINVAL), so popwatch always writes the expiry explicitly, in both backends, which
    keeps their rules identical (iptc also sets the gc interval to its default, 1000 ms)."""
    refill = limit.burst / limit.rate.per_second
    return int(min(max(10_000, math.ceil(refill * 1000) + 1000), 2**31 - 1))


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One rule in the POPWATCH chain: its arguments after ``-A POPWATCH``."""

    args: tuple[str, ...]
    role: Role
    port: int | None = None

    def line(self, counters: tuple[int, int] | None = None, op: str = "-A", index: int | None = None) -> str:
        """An ``iptables-restore`` line, optionally with ``[pkts:bytes]`` counters."""
        head = f"[{counters[0]}:{counters[1]}] " if counters is not None else ""
        pos = f" {index}" if index is not None else ""
        return f"{head}{op} {CHAIN}{pos} " + " ".join(shlex.quote(a) for a in self.args)


def exempt_rules(family: Family) -> list[RuleSpec]:
    """Protected sources leave the chain first: never banned, never limited."""
    return [RuleSpec(("-m", "set", "--match-set", SETX4 if family == 4 else SETX6, "src", "-j", "RETURN"),
                     "exempt")]


def head_rules(family: Family, ban_action: str = "drop") -> list[RuleSpec]:
    """The rules at the top of the chain, before the ports' rules: exempt, then ban."""
    return exempt_rules(family) + ban_rules(family, ban_action)


def ban_rules(family: Family, ban_action: str = "drop") -> list[RuleSpec]:
    """The ban match: one rule (drop) or two (reject: tcp-reset for tcp, ICMP otherwise)."""
    sset = SET4 if family == 4 else SET6
    match = ["-m", "set", "--match-set", sset, "src"]
    if ban_action == "reject":
        icmp = "icmp-port-unreachable" if family == 4 else "icmp6-port-unreachable"
        return [RuleSpec(("-p", "tcp", *match, "-j", "REJECT", "--reject-with", "tcp-reset"), "ban"),
                RuleSpec((*match, "-j", "REJECT", "--reject-with", icmp), "ban")]
    if ban_action != "drop":
        raise FirewallError(f"bad ban action {ban_action!r}: expected drop or reject")
    return [RuleSpec((*match, "-j", "DROP"), "ban")]


def port_rules(limit: PortLimit, family: Family, *, gen: int = 1, ipv6_prefix: int = 64) -> list[RuleSpec]:
    """The rate-limit pair (or the single counting rule) for one watched port."""
    base = new_tcp(limit.port)
    p = limit.port
    if limit.mode == "count":
        return [RuleSpec((*base, "-j", "RETURN"), "pass", p)]
    if limit.mode == "global":
        lim = ["-m", "limit", "--limit", rate_arg(limit.rate)]
        if limit.burst != 5:  # iptables leaves the default out of -S
            lim += ["--limit-burst", str(limit.burst)]
    else:
        mask = 32 if family == 4 else int(ipv6_prefix)
        # the order iptables -S prints; the gc interval is left at its default (1000 ms)
        lim = ["-m", "hashlimit", "--hashlimit-upto", rate_arg(limit.rate),
               "--hashlimit-burst", str(limit.burst), "--hashlimit-mode", "srcip",
               "--hashlimit-name", hashlimit_name(p, gen),
               "--hashlimit-htable-expire", str(hashlimit_expire_ms(limit))]
        if (family == 6 and mask != 128) or (family == 4 and mask != 32):
            lim += ["--hashlimit-srcmask", str(mask)]
    return [RuleSpec((*base, *lim, "-j", "RETURN"), "pass", p),
            RuleSpec((*base, "-j", "DROP"), "drop", p)]


def chain_rules(limits: Iterable[PortLimit], family: Family, *, ban_action: str = "drop",
                ipv6_prefix: int = 64, gens: dict[int, int] | None = None) -> list[RuleSpec]:
    """The whole POPWATCH chain for one family, in order."""
    out = head_rules(family, ban_action)
    for lim in limits:
        out += port_rules(lim, family, gen=(gens or {}).get(lim.port, 1), ipv6_prefix=ipv6_prefix)
    return out


# --------------------------------------------------------------------------- reading back

@dataclass(slots=True)
class ParsedRule:
    """A rule read back from ``iptables -S CHAIN -v`` (or python-iptables)."""

    args: tuple[str, ...]
    pkts: int = 0
    bytes: int = 0
    role: Role = "other"
    port: int | None = None
    target: str = ""
    limit: PortLimit | None = None
    hl_name: str | None = None

    def spec(self) -> RuleSpec:
        return RuleSpec(self.args, self.role, self.port)


@dataclass(slots=True)
class ChainState:
    """What POPWATCH holds in one family: rules in order, and the jump from INPUT."""

    exists: bool = False
    rules: list[ParsedRule] = field(default_factory=list)
    jumps: int = 0          # how many ``-j POPWATCH`` rules INPUT has
    jump_first: bool = False

    def port_rules(self, port: int) -> list[ParsedRule]:
        return [r for r in self.rules if r.port == port]

    def limits(self) -> dict[int, PortLimit]:
        out: dict[int, PortLimit] = {}
        for r in self.rules:
            if r.role == "pass" and r.port is not None and r.limit is not None and r.port not in out:
                out[r.port] = r.limit
        return out

    def gens(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for r in self.rules:
            if r.hl_name and (pg := parse_hashlimit_name(r.hl_name)):
                out[pg[0]] = max(out.get(pg[0], 0), pg[1])
        return out


def opt(args: list[str], name: str) -> str | None:
    try:
        return args[args.index(name) + 1]
    except (ValueError, IndexError):
        return None


def parse_rate(text: str) -> Rate:
    """``5/sec`` / ``1/min`` / ``3/hour`` / ``2/day`` (as iptables prints) -> Rate."""
    return Rate.parse(text.replace("sec", "second").replace("min", "minute"))


def classify(args: list[str], ban_sets: tuple[str, ...] = (SET4, SET6)
             ) -> tuple[Role, int | None, PortLimit | None, str | None]:
    """Role, port, limit and hashlimit name of one rule's args (no ``-A CHAIN``, no ``-c``)."""
    target = opt(args, "-j") or ""
    mset = opt(args, "--match-set")
    if mset in ban_sets and target in ("DROP", "REJECT"):
        return "ban", None, None, None
    if mset in (SETX4, SETX6) and target == "RETURN":
        return "exempt", None, None, None
    dport = opt(args, "--dport")
    if dport is None or not dport.isdigit():
        return "other", None, None, None
    port = int(dport)
    if target in ("DROP", "REJECT"):
        return "drop", port, None, None
    if target != "RETURN":
        return "other", port, None, None
    hl_name = None
    try:
        if "hashlimit" in args:
            rate = parse_rate(opt(args, "--hashlimit-upto") or "")
            burst = int(opt(args, "--hashlimit-burst") or 5)
            hl_name = opt(args, "--hashlimit-name")
            limit = PortLimit(port, "per-source", rate, burst)
        elif "limit" in args and "-m" in args and "--limit" in args:
            rate = parse_rate(opt(args, "--limit") or "")
            burst = int(opt(args, "--limit-burst") or 5)
            limit = PortLimit(port, "global", rate, burst)
        else:
            limit = PortLimit(port, "count")
    except ValueError:
        return "other", port, None, None
    return "pass", port, limit, hl_name


def parse_rule_line(line: str, chain: str = CHAIN) -> ParsedRule | None:
    """One ``-A CHAIN ... [-c P B] ...`` line of ``iptables -S CHAIN -v`` -> ParsedRule."""
    try:
        toks = shlex.split(line)
    except ValueError:
        return None
    if len(toks) < 2 or toks[0] != "-A" or toks[1] != chain:
        return None
    toks = toks[2:]
    pkts = byts = 0
    if "-c" in toks:
        i = toks.index("-c")
        try:
            pkts, byts = int(toks[i + 1]), int(toks[i + 2])
        except (IndexError, ValueError):
            pass
        del toks[i:i + 3]
    role, port, limit, hl = classify(toks)
    return ParsedRule(tuple(toks), pkts, byts, role, port, opt(toks, "-j") or "", limit, hl)


def parse_chain(text: str, chain: str = CHAIN) -> list[ParsedRule]:
    """All rules of ``iptables -S CHAIN -v`` output, in order."""
    out = []
    for line in text.splitlines():
        r = parse_rule_line(line, chain)
        if r is not None:
            out.append(r)
    return out


def count_jumps(input_text: str) -> tuple[int, bool]:
    """(number of ``-j POPWATCH`` rules, whether the first INPUT rule is one) in
    ``iptables -S INPUT`` output."""
    n, first, seen_rule = 0, False, False
    for line in input_text.splitlines():
        toks = line.split()
        if len(toks) < 2 or toks[0] != "-A" or toks[1] != "INPUT":
            continue
        if "-c" in toks:
            i = toks.index("-c")
            del toks[i:i + 3]
        is_jump = toks[2:] == list(JUMP)
        if is_jump:
            n += 1
            if not seen_rule:
                first = True
        seen_rule = True
    return n, first


def counters_by_port(rules: Iterable[ParsedRule]) -> tuple[dict[int, tuple[int, int]], int]:
    """{port: (passed, dropped)} and the ban rules' dropped packets."""
    out: dict[int, tuple[int, int]] = {}
    banned = 0
    for r in rules:
        if r.role == "ban":
            banned += r.pkts
        elif r.port is not None and r.role in ("pass", "drop"):
            p, d = out.get(r.port, (0, 0))
            out[r.port] = (p + r.pkts, d) if r.role == "pass" else (p, d + r.pkts)
    return out, banned


# --------------------------------------------------------------------------- addresses

@dataclass(frozen=True, slots=True)
class BanEntry:
    """What one ban puts into which set: ``entry`` is an address or ``net/prefix``."""

    family: Family
    set_name: str
    entry: str
    address: str        # the address or network the admin asked for, canonical
    cidr: int | None    # prefix for network entries (v6 always, v4 --net)


def ban_entry(target: str, *, allow_net: bool = False, ipv6_prefix: int = 64) -> BanEntry:
    """Validate a user/log address and map it to its set entry. Raises FirewallError.

    ``::ffff:a.b.c.d`` -> ``a.b.c.d`` in popwatch4; an IPv6 address -> its /``ipv6_prefix``
    network in popwatch6; hostnames and junk refused; networks only with ``allow_net``
    (IPv4 networks at most /24: popwatch4 is hash:ip and stores each address)."""
    from ..addr import AddressError

    fast = _fast_entry(str(target), ipv6_prefix)
    if fast is not None:
        return fast
    try:
        obj: IPAddress | IPNetwork = parse_target(str(target), allow_net=allow_net)
    except AddressError as e:
        raise FirewallError(str(e)) from None
    if isinstance(obj, ipaddress.IPv4Address):
        return BanEntry(4, SET4, str(obj), str(obj), None)
    if isinstance(obj, ipaddress.IPv4Network):
        if obj.prefixlen < MAX_V4_NET_PREFIX:
            raise FirewallError(f"{obj} is too large: IPv4 networks up to /{MAX_V4_NET_PREFIX} "
                                f"(256 addresses) can be banned")
        return BanEntry(4, SET4, str(obj), str(obj), obj.prefixlen)
    if isinstance(obj, ipaddress.IPv6Address):
        from ..addr import ban_prefix
        plen = ban_prefix(obj, ipv6_prefix)
        net = ipaddress.IPv6Network(f"{obj}/{plen}", strict=False)
        return BanEntry(6, SET6, str(net), str(obj), plen)
    net6 = obj
    from ..addr import ban_prefix
    if net6.prefixlen > ipv6_prefix and ban_prefix(net6.network_address, ipv6_prefix) != 128:
        # a network inside one /prefix: ban the /prefix (never widened inside NAT64)
        net6 = ipaddress.IPv6Network(f"{net6.network_address}/{ipv6_prefix}", strict=False)
    return BanEntry(6, SET6, str(net6), str(obj), net6.prefixlen)


_ZERO12 = b"\0" * 12
_MAPPED = b"\0" * 10 + b"\xff\xff"
_NAT64 = b"\x00\x64\xff\x9b"


def _fast_entry(text: str, ipv6_prefix: int) -> BanEntry | None:
    """The common case (one plain address) without :mod:`ipaddress` (~30x faster, for bulk
    loads): ``inet_pton`` accepts exactly the strict textual forms (no hostnames, no octal or
    hex parts, no zones, no prefixes). Anything else, and the rare forms whose canonical
    spelling ``inet_ntop`` writes differently from :mod:`ipaddress` (``::a.b.c.d``), goes the
    slow, fully checked way (return None)."""
    t = text.strip()
    try:
        packed = socket.inet_pton(socket.AF_INET, t)
        a = socket.inet_ntop(socket.AF_INET, packed)
        return BanEntry(4, SET4, a, a, None)
    except OSError:
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, t)
    except OSError:
        return None
    if packed.startswith(_ZERO12):
        return None
    if packed.startswith(_MAPPED):
        a = socket.inet_ntop(socket.AF_INET, packed[12:])
        return BanEntry(4, SET4, a, a, None)
    if packed.startswith(_NAT64):
        return None  # NAT64: a /128, decided in addr.ban_prefix (the slow path)
    n = int.from_bytes(packed, "big")
    masked = (n >> (128 - ipv6_prefix) << (128 - ipv6_prefix)).to_bytes(16, "big")
    if masked.startswith(_ZERO12):
        return None
    return BanEntry(6, SET6, f"{socket.inet_ntop(socket.AF_INET6, masked)}/{ipv6_prefix}",
                    socket.inet_ntop(socket.AF_INET6, packed), ipv6_prefix)


LOOPBACK = ("127.0.0.0/8", "::1/128")


def exempt_entries(targets: Iterable[str]) -> list[str]:
    """Protected addresses/networks -> canonical set entries (``::ffff:a.b.c.d`` -> v4), plus
    loopback. Junk is skipped (protection is best effort, never a reason to fail)."""
    out: list[str] = []
    for t in [*LOOPBACK, *targets]:
        try:
            net = ipaddress.ip_network(str(t).strip().strip("[]").split("%", 1)[0], strict=False)
        except ValueError:
            continue
        if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and \
                net.network_address.ipv4_mapped is not None:
            net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}", strict=False)
        text = str(net.network_address) if net.prefixlen == net.max_prefixlen and net.version == 4 else str(net)
        if text not in out:
            out.append(text)
    return out


def ttl_seconds(ttl: float | None) -> int:
    """A ban ttl -> ipset ``timeout`` value (0 = permanent); at least 1 s."""
    if ttl is None or ttl <= 0:
        return 0
    return max(1, min(math.ceil(ttl), MAX_TIMEOUT))


# --------------------------------------------------------------------------- planning

def sem_key(args: Iterable[str]) -> tuple[object, ...]:
    """What a rule *does*, independent of option order and of the hashlimit's name: two rules
    with the same key are interchangeable (adopted instead of rewritten)."""
    a = list(args)
    role, port, limit, _ = classify(a)
    lim = None if limit is None else (limit.mode, limit.rate.count, limit.rate.unit, limit.burst)
    return (role, port, opt(a, "-j"), opt(a, "--reject-with"), opt(a, "--match-set"),
            opt(a, "-p"), lim, opt(a, "--hashlimit-srcmask"), opt(a, "--hashlimit-htable-expire"),
            opt(a, "--ctstate"), opt(a, "--tcp-flags"))


OpKind = Literal["new_chain", "flush_chain", "del_chain", "insert", "append", "delete",
                 "jump_insert", "jump_delete"]


@dataclass(frozen=True, slots=True)
class Op:
    """One change to a family's filter table; ``index`` is 1-based as in iptables."""

    kind: OpKind
    index: int | None = None
    rule: RuleSpec | None = None
    counters: tuple[int, int] | None = None

    def restore_line(self) -> str:
        """The ``iptables-restore --noflush -c`` line for this op."""
        if self.kind == "new_chain":
            return f":{CHAIN} - [0:0]"
        if self.kind == "flush_chain":
            return f"-F {CHAIN}"
        if self.kind == "del_chain":
            return f"-X {CHAIN}"
        if self.kind == "jump_insert":
            return f"-I INPUT 1 -j {CHAIN}"
        if self.kind == "jump_delete":
            return f"-D INPUT -j {CHAIN}"
        if self.kind == "delete":
            return f"-D {CHAIN} {self.index}"
        assert self.rule is not None
        if self.kind == "insert":
            return self.rule.line(self.counters or (0, 0), "-I", self.index)
        return self.rule.line(self.counters or (0, 0), "-A")

    def command(self, binary: str) -> list[str]:
        """The same change as one ``iptables`` command (for dry-run descriptions)."""
        w = [binary, "-w"]
        if self.kind == "new_chain":
            return [*w, "-N", CHAIN]
        if self.kind == "flush_chain":
            return [*w, "-F", CHAIN]
        if self.kind == "del_chain":
            return [*w, "-X", CHAIN]
        if self.kind == "jump_insert":
            return [*w, "-I", "INPUT", "1", "-j", CHAIN]
        if self.kind == "jump_delete":
            return [*w, "-D", "INPUT", "-j", CHAIN]
        if self.kind == "delete":
            return [*w, "-D", CHAIN, str(self.index)]
        assert self.rule is not None
        c = ["-c", str(self.counters[0]), str(self.counters[1])] if self.counters else []
        if self.kind == "insert":
            return [*w, "-I", CHAIN, str(self.index), *self.rule.args, *c]
        return [*w, "-A", CHAIN, *self.rule.args, *c]


def render_restore(ops: Iterable[Op]) -> str:
    """``iptables-restore --noflush -c`` input applying ``ops`` in one atomic commit."""
    return "*filter\n" + "".join(op.restore_line() + "\n" for op in ops) + "COMMIT\n"


class Work:
    """A working copy of the chain: ops are computed against it as they are emitted, so
    every index is right after the ops before it have been applied."""

    def __init__(self, state: ChainState) -> None:
        self.rules: list[ParsedRule] = list(state.rules)
        self.ops: list[Op] = []

    def delete(self, idx0: int) -> ParsedRule:
        self.ops.append(Op("delete", idx0 + 1))
        return self.rules.pop(idx0)

    def insert(self, idx0: int, spec: RuleSpec, counters: tuple[int, int]) -> None:
        if idx0 >= len(self.rules):
            self.ops.append(Op("append", None, spec, counters))
            idx0 = len(self.rules)
        else:
            self.ops.append(Op("insert", idx0 + 1, spec, counters))
        role, port, limit, hl = classify(list(spec.args))
        self.rules.insert(idx0, ParsedRule(spec.args, counters[0], counters[1], role, port,
                                           opt(list(spec.args), "-j") or "", limit, hl))

    def replace_block(self, indices: list[int], new: list[RuleSpec], at: int | None = None) -> None:
        """Delete rules at ``indices`` (0-based), insert ``new`` where the first one was (or at
        ``at``), carrying counters by role (pass -> pass, drop -> drop, ban -> ban)."""
        old: dict[str, list[int]] = {}
        for i in sorted(indices, reverse=True):
            r = self.delete(i)
            p, b = old.get(r.role, [0, 0])
            old[r.role] = [p + r.pkts, b + r.bytes]
        pos = min(indices) if indices else (len(self.rules) if at is None else at)
        carried: set[str] = set()
        for k, spec in enumerate(new):
            c = (0, 0)
            if spec.role in old and spec.role not in carried:
                c = (old[spec.role][0], old[spec.role][1])
                carried.add(spec.role)
            self.insert(pos + k, spec, c)


def _same(rules: list[ParsedRule], specs: list[RuleSpec]) -> bool:
    return [sem_key(r.args) for r in rules] == [sem_key(s.args) for s in specs]


def plan_base(state: ChainState, family: Family, ban_action: str = "drop") -> Work:
    """Ensure the chain, its exempt and ban matches at the top and one jump from INPUT; the
    ports' rules are left as they are."""
    want = head_rules(family, ban_action)
    work = Work(state)
    if not state.exists:
        work.ops.append(Op("new_chain"))
        work.rules = []
    lead = [i for i, r in enumerate(work.rules) if r.role in ("exempt", "ban")]
    if lead != list(range(len(want))) or not _same([work.rules[i] for i in lead], want):
        work.replace_block(lead, want, at=0)
    if state.jumps == 0:
        work.ops.append(Op("jump_insert"))
    elif state.jumps > 1:  # keep exactly one, at the top
        work.ops.extend([Op("jump_delete")] * state.jumps)
        work.ops.append(Op("jump_insert"))
    return work


def plan_ports(work: Work, limits: Iterable[PortLimit], family: Family, *, gens: dict[int, int],
               ipv6_prefix: int = 64, only: bool = False) -> Work:
    """Bring each port's rules to ``limits`` (adopting identical ones). With ``only`` the
    chain ends up holding exactly these ports (install); otherwise other ports stay."""
    wanted = list(limits)
    ports = {l.port for l in wanted}
    if only:
        stale = [i for i, r in enumerate(work.rules) if r.port is not None and r.port not in ports]
        for i in sorted(stale, reverse=True):
            work.delete(i)
    for lim in wanted:
        new = port_rules(lim, family, gen=gens.get(lim.port, 1), ipv6_prefix=ipv6_prefix)
        idx = [i for i, r in enumerate(work.rules) if r.port == lim.port]
        if idx and idx == list(range(idx[0], idx[0] + len(idx))) and _same([work.rules[i] for i in idx], new):
            continue  # adopt what is there (keeps its bucket and counters)
        work.replace_block(idx, new)
    return work


def plan_uninstall(state: ChainState) -> list[Op]:
    ops = [Op("jump_delete")] * state.jumps
    if state.exists:
        ops += [Op("flush_chain"), Op("del_chain")]
    return ops


def expected_keys(work: Work) -> list[tuple[object, ...]]:
    """The semantic keys the chain must have after the plan (for read-back checks)."""
    return [sem_key(r.args) for r in work.rules]
