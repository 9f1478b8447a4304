"""The ``nftables`` backend: popwatch's own ``table inet popwatch``, driven through libnftables.

Layout (everything popwatch owns; ``nft list table inet popwatch`` shows it)::

    table inet popwatch {
        counter banned / pass_P / drop_P               named counters (kept across retunes)
        set x4, x6      { flags interval }              protected sources (loopback, SSH client, ...)
        set ban4        { type ipv4_addr; flags timeout }     v4 bans, per-element timeouts
        set ban6        { type ipv6_addr; flags timeout }     v6 bans keyed on their /prefix
        set ban6n       { flags interval, timeout }           v6 --net bans of another length
        set ps4_P_G, ps6_P_G { flags dynamic, timeout }       per-source buckets (one per retune)
        chain input { type filter hook input priority filter - 10; policy accept;
            ip saddr @x4 return ; ip6 saddr @x6 return
            ip saddr @ban4 counter name "banned" drop ; ip6 saddr & MASK @ban6 ... ; ip6 saddr @ban6n ...
            <new tcp to P> counter name "pass_P" return                                   (count)
            <new tcp to P> limit rate N/u burst B packets counter name "pass_P" return    (global)
            <new tcp to P> counter name "drop_P" drop
            <new tcp to P> update @ps4_P_G { ip saddr limit rate N/u burst B packets } ... return
            <new tcp to P> update @ps6_P_G { ip6 saddr & MASK limit ... } ... return       (per-source)
            <new tcp to P> counter name "drop_P" drop
        }
    }

The chain runs at priority -10, before the admin's filter chains (priority 0, and the
iptables-nft ``ip filter`` table). popwatch never accepts: ``return`` ends this base chain and
the packet goes on to the admin's chains, exactly like RETURN to the admin's rules. Every
rule carries a comment (``pw port 110 global 5/second 10 3``) from which popwatch reads back
what it wrote. Every change is one ``{"nftables": [...]}`` batch, i.e. one atomic transaction.

Why libnftables (ctypes, JSON API) and these set types - measured in a netns with 10k bans
(kernel 6.18, nft 1.0.6):

* one ban into a ``flags timeout`` hash set: 0.06 ms; into a ``flags interval, timeout`` set:
  15 ms (v4) / 34 ms (v6), because libnftables fetches every element of an interval set to
  merge ranges. So the common bans go into hash sets (v6 keyed on the masked source address,
  which *is* a /64 prefix match) and only v6 networks of another length use the interval set.
* any ``list`` through libnftables 1.0.6 fills its cache with every set element: 45 ms for
  ``list counters`` at 10k bans. The per-second counter poll therefore reads the named
  counters with one raw ``NFT_MSG_GETOBJ`` netlink dump filtered on this table (~0.1 ms,
  flat in the number of bans); libnftables is used for writes and for the rare reads.
* pyroute2 0.9.7's nftables API: one ban (``set_elems("add")``) measured 0.91 ms vs 0.22 ms
  here (same netns, 10k present, same run); it wraps every command in its own batch, so a
  retune (new rules + deleted rules + new/deleted bucket sets) could not be one transaction;
  it has no named-object (counter) calls, and rules are raw netlink expression lists. The
  Debian python3-nftables binding targets the system python; the ctypes binding below is the
  same ~30 lines over the same library.

Self-healing (the ``check_enforcement`` / ``repair(bans, stop=)`` hooks the iptables backends
have): :meth:`NftablesFirewall.check_enforcement` reads the chain's rule comments with one
netlink dump (cheap enough for every counter poll; :meth:`NftablesFirewall.present` is a
single request); :meth:`NftablesFirewall.repair` re-creates the table, sets, rules and, when
the ban sets were lost, the bans it is given. nf_tables' own change events tell at once:
:meth:`NftablesFirewall.table_touched` (or :class:`NftEvents` with ``loop.add_reader``) reports a
deletion in popwatch's table.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import ipaddress
import json
import os
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from ..model import PortCounters, PortLimit, Rate
from . import rules as R
from .base import Firewall, FirewallError, GuardedWrites, NeedsRoot
from .kernel import DEFAULT_LOCK, NftCounters

TABLE = "popwatch"
FAMILY = "inet"
CHAIN = "input"
PRIORITY = -10
_T: dict[str, str] = {"family": FAMILY, "table": TABLE}
#: how many rules a port's block has, by mode
RULES_PER_MODE = {"count": 1, "global": 2, "per-source": 3}

_JSON_FLAGS = 1 << 4  # NFT_CTX_OUTPUT_JSON
_HANDLE_FLAGS = 1 << 3  # NFT_CTX_OUTPUT_HANDLE
_COMMENT = re.compile(r"^pw port (\d{1,5}) (count|global|per-source) (\d+/\w+) (\d+) (\d+)$")


class Libnftables:
    """A minimal ctypes binding of libnftables.so.1: one context, output and errors buffered,
    JSON in and out."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError as e:
            raise FirewallError(f"libnftables is not installed ({e}): install the 'libnftables1' "
                                f"package or use --backend nft") from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        for f in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, f).argtypes = [ctypes.c_void_p]
        for f in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, f).argtypes = [ctypes.c_void_p]
            getattr(lib, f).restype = ctypes.c_char_p
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.lib = lib
        self.ctx = lib.nft_ctx_new(0)
        lib.nft_ctx_buffer_output(self.ctx)
        lib.nft_ctx_buffer_error(self.ctx)
        lib.nft_ctx_output_set_flags(self.ctx, _JSON_FLAGS | _HANDLE_FLAGS)
        self._lock = threading.Lock()

    def run(self, cmds: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run one batch (one transaction); return the JSON objects printed. FirewallError on
        failure (nothing of the batch applied)."""
        data = json.dumps({"nftables": cmds}).encode()
        with self._lock:
            if not self.ctx:  # closed: libnftables would crash the process on a NULL context
                raise FirewallError("nft: this firewall was closed")
            rc = self.lib.nft_run_cmd_from_buffer(self.ctx, data)
            out = (self.lib.nft_ctx_get_output_buffer(self.ctx) or b"").decode()
            err = (self.lib.nft_ctx_get_error_buffer(self.ctx) or b"").decode()
        if rc != 0:
            msg = " ".join(l.strip() for l in err.splitlines() if l.strip()) or "nft failed"
            msg = msg.replace("internal:0:0-0: ", "")
            if "Operation not permitted" in msg:
                raise NeedsRoot(f"nft: {msg} (popwatch needs root or CAP_NET_ADMIN: run it with sudo)")
            raise FirewallError(f"nft: {msg}")
        if not out.strip():
            return []
        return [o for o in json.loads(out).get("nftables", []) if "metainfo" not in o]

    def check(self, cmds: list[dict[str, Any]]) -> None:
        """Send one batch to the kernel in check-only mode (``nft -c``): the kernel validates
        every object and expression, then the transaction is aborted. FirewallError when the
        kernel (or libnftables) refuses it."""
        self.lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
        with self._lock:
            self.lib.nft_ctx_set_dry_run(self.ctx, True)
        try:
            self.run(cmds)
        finally:
            with self._lock:
                self.lib.nft_ctx_set_dry_run(self.ctx, False)

    def close(self) -> None:
        if self.ctx:
            self.lib.nft_ctx_free(self.ctx)
            self.ctx = None


#: what each kernel feature of the nftables backend is probed with (hostcheck.NFT_FEATURES)
_PROBE_TABLE = "popwatch_probe"


def _probes() -> dict[str, list[dict[str, Any]]]:
    t = {"family": FAMILY, "table": _PROBE_TABLE}
    table = {"add": {"table": {"family": FAMILY, "name": _PROBE_TABLE}}}
    chain = {"add": {"chain": dict(t, name="c")}}
    return {
        "nf_tables": [table],
        "nft_set": [table, {"add": {"set": dict(t, name="s4", type="ipv4_addr", flags=["timeout"])}},
                    {"add": {"set": dict(t, name="s6", type="ipv6_addr", flags=["interval", "timeout"])}}],
        "nft_limit": [table, chain, {"add": _rule_in(t, [_limit(Rate.of(5, 1), 10), {"return": None}])}],
        "nft_ct": [table, chain, {"add": _rule_in(t, [_match({"ct": {"key": "state"}}, "new", "in"),
                                                      {"return": None}])}],
    }


def _rule_in(t: dict[str, str], expr: list[dict[str, Any]]) -> dict[str, Any]:
    return {"rule": dict(t, chain="c", expr=expr)}


def probe_kernel(nft: Libnftables | None = None) -> dict[str, str | None]:
    """Ask the kernel whether it supports what the nftables backend uses (hostcheck's
    ``NFT_FEATURES``): one check-only transaction per feature, in a throw-away table that is
    never committed (nothing changes; a module may load on demand, as the first real rule
    would load it). feature -> None when supported, else the kernel's answer. Needs root."""
    own = nft is None
    lib = Libnftables() if nft is None else nft
    out: dict[str, str | None] = {}
    try:
        for name, cmds in _probes().items():
            try:
                lib.check(cmds)
                out[name] = None
            except NeedsRoot:
                raise
            except FirewallError as e:
                out[name] = str(e)
    finally:
        if own:
            lib.close()
    return out


class NftNetlink(NftCounters):
    """Raw nf_tables netlink reads that must not pay libnftables' full cache: the named
    counters of popwatch's table (one ``GETOBJ`` dump) and whether its chain exists."""

    _GETOBJ, _NEWOBJ, _GETCHAIN = 19, 18, 4

    def _sock_(self) -> socket.socket:
        if self._sock is None:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
            s.bind((0, 0))
            s.settimeout(5.0)
            self._sock = s
        return self._sock

    def _request(self, msg: int, flags: int, body: bytes) -> Iterator[tuple[int, bytes, int, int]]:
        sock = self._sock_()
        self._seq += 1
        seq = self._seq
        sock.send(struct.pack("=IHHII", 16 + len(body), (self._SUBSYS << 8) | msg, flags, seq, 0) + body)
        while True:
            buf = sock.recv(1 << 20)
            off = 0
            while off + 16 <= len(buf):
                ln, typ, _fl, rseq, _pid = struct.unpack_from("=IHHII", buf, off)
                if ln < 16:
                    raise OSError("bad netlink message")
                if rseq == seq:
                    if typ == 3:  # NLMSG_DONE
                        return
                    if typ == 2:  # NLMSG_ERROR
                        (err,) = struct.unpack_from("=i", buf, off + 16)
                        if err in (-errno.EPERM, -errno.EACCES):
                            raise NeedsRoot("reading nftables needs root or CAP_NET_ADMIN: run "
                                            "popwatch with sudo (or use --backend sim or none)")
                        if err:
                            raise OSError(-err, os.strerror(-err))
                        return  # ACK
                    yield typ, buf, off + 20, off + ln
                off += (ln + 3) & ~3

    def counters(self, table: str = TABLE) -> dict[str, int]:
        """Named counter -> packets, for ``table inet TABLE``; {} when the table is missing."""
        body = (struct.pack("=BBH", 1, 0, 0)  # NFPROTO_INET
                + self._attr(1, table.encode() + b"\0") + self._attr(3, struct.pack(">I", 1)))
        out: dict[str, int] = {}
        for typ, buf, off, end in self._request(self._GETOBJ, self._DUMP, body):
            if typ != (self._SUBSYS << 8) | self._NEWOBJ:
                continue
            name, pkts, tname = "", 0, ""
            for atype, val in self.attrs(buf, off, end):
                if atype == 1:
                    tname = val.rstrip(b"\0").decode()
                elif atype == 2:
                    name = val.rstrip(b"\0").decode()
                elif atype == 4:  # NFTA_OBJ_DATA
                    for ct, cv in self.attrs(val, 0, len(val)):
                        if ct == 2:  # NFTA_COUNTER_PACKETS
                            (pkts,) = struct.unpack(">Q", cv)
            if tname == table:
                out[name] = pkts
        return out

    def rule_comments(self, table: str = TABLE, chain: str = CHAIN) -> list[str] | None:
        """The comments of the chain's rules in order (one ``GETRULE`` dump, no set elements);
        None when the chain does not exist."""
        body = (struct.pack("=BBH", 1, 0, 0) + self._attr(1, table.encode() + b"\0")
                + self._attr(2, chain.encode() + b"\0"))
        out: list[str] = []
        try:
            for typ, buf, off, end in self._request(self._GETRULE, self._DUMP, body):
                if typ != (self._SUBSYS << 8) | self._NEWRULE:
                    continue
                comment = ""
                for atype, val in self.attrs(buf, off, end):
                    if atype == 7:  # NFTA_RULE_USERDATA: TLVs (type, len, value), comment = 0
                        i = 0
                        while i + 2 <= len(val):
                            t, ln = val[i], val[i + 1]
                            if t == 0:
                                comment = val[i + 2:i + 2 + ln].rstrip(b"\0").decode(errors="replace")
                            i += 2 + ln
                out.append(comment)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        return out if out or self.chain_exists(table, chain) else None

    def chain_exists(self, table: str = TABLE, chain: str = CHAIN) -> bool:
        body = (struct.pack("=BBH", 1, 0, 0) + self._attr(1, table.encode() + b"\0")
                + self._attr(3, chain.encode() + b"\0"))
        try:
            for _ in self._request(self._GETCHAIN, 0x1 | 0x4, body):  # REQUEST | ACK
                pass
        except OSError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True


class NftEvents:
    """nf_tables' own change events (what ``nft monitor`` prints), for self-healing: a netlink
    socket in the NFNLGRP_NFTABLES group. :meth:`touched` drains what arrived (non-blocking)
    and says whether anything of popwatch's table was deleted (``nft flush ruleset``, ``nft
    delete table inet popwatch``, a rule or set removed by hand - or by popwatch's own retunes:
    it is a trigger to check :meth:`NftablesFirewall.present`, not a verdict). ``fileno()``
    suits ``loop.add_reader``. libnftables has no non-blocking event API (its ``monitor``
    command blocks and prints), hence the raw socket."""

    _GROUP = 7  # NFNLGRP_NFTABLES
    _DELETES = frozenset({2, 5, 8, 11, 20})  # DEL{TABLE,CHAIN,RULE,SET,OBJ}; not SETELEM (unbans, expiry)

    def __init__(self, table: str = TABLE) -> None:
        self.table = table.encode() + b"\0"
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
        s.bind((0, 1 << (self._GROUP - 1)))
        s.setblocking(False)
        self.sock = s

    def fileno(self) -> int:
        return self.sock.fileno()

    def touched(self) -> bool:
        hit = False
        while True:
            try:
                buf = self.sock.recv(1 << 20)
            except BlockingIOError:
                return hit
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # events were lost: assume the worst
                    hit = True
                    continue
                raise
            off = 0
            while off + 16 <= len(buf):
                ln, typ, _fl, _seq, _pid = struct.unpack_from("=IHHII", buf, off)
                if ln < 16:
                    break
                if typ >> 8 == 10 and typ & 0xFF in self._DELETES and buf[off + 16] == 1:  # inet
                    for atype, val in NftCounters.attrs(buf, off + 20, off + ln):
                        if atype == 1 and val == self.table:
                            hit = True
                off += (ln + 3) & ~3

    def close(self) -> None:
        self.sock.close()


# ------------------------------------------------------------------------------ expressions

def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _saddr(fam: int) -> dict[str, Any]:
    return {"payload": {"protocol": "ip" if fam == 4 else "ip6", "field": "saddr"}}


def _mask6(prefix: int) -> str:
    return str(ipaddress.IPv6Address(((1 << prefix) - 1) << (128 - prefix)))


def _key6(prefix: int) -> dict[str, Any]:
    return {"&": [_saddr(6), _mask6(prefix)]}


def _new_tcp(port: int) -> list[dict[str, Any]]:
    flags = {"&": [{"payload": {"protocol": "tcp", "field": "flags"}}, ["fin", "syn", "rst", "ack"]]}
    return [_match({"payload": {"protocol": "tcp", "field": "dport"}}, port),
            _match(flags, "syn"), _match({"ct": {"key": "state"}}, "new", "in")]


def _limit(rate: Rate, burst: int) -> dict[str, Any]:
    return {"limit": {"rate": rate.count, "per": {1: "second", 60: "minute", 3600: "hour",
                                                  86400: "day"}[rate.unit], "burst": burst}}


def _rule(expr: list[dict[str, Any]], comment: str, handle: int | None = None) -> dict[str, Any]:
    r: dict[str, Any] = dict(_T, chain=CHAIN, expr=expr, comment=comment)
    if handle is not None:
        r["handle"] = handle
    return {"rule": r}


def _ps_sets(port: int, gen: int) -> tuple[str, str]:
    return f"ps4_{port}_{gen}", f"ps6_{port}_{gen}"


def port_comment(limit: PortLimit, gen: int) -> str:
    return f"pw port {limit.port} {limit.mode} {limit.rate} {limit.burst} {gen}"


def _port_of(text: str) -> PortLimit | None:
    p = parse_comment(text)
    return p[0] if p else None


def parse_comment(text: str) -> tuple[PortLimit, int] | None:
    m = _COMMENT.match(text or "")
    if not m:
        return None
    try:
        return PortLimit(int(m.group(1)), m.group(2), Rate.parse(m.group(3)), int(m.group(4))), int(m.group(5))  # type: ignore[arg-type]  # the comment regex only matches a known mode
    except ValueError:
        return None


def port_rules(limit: PortLimit, gen: int, ipv6_prefix: int) -> list[dict[str, Any]]:
    """The rules (JSON ``rule`` objects, without position) of one port."""
    p, c = limit.port, port_comment(limit, gen)
    m = _new_tcp(p)
    passed: list[dict[str, Any]] = [{"counter": f"pass_{p}"}, {"return": None}]
    drop = _rule([*m, {"counter": f"drop_{p}"}, {"drop": None}], c)
    if limit.mode == "count":
        return [_rule(m + passed, c)]
    if limit.mode == "global":
        return [_rule([*m, _limit(limit.rate, limit.burst), *passed], c), drop]
    s4, s6 = _ps_sets(p, gen)
    out = []
    for fam, name, key in ((4, s4, _saddr(4)), (6, s6, _key6(ipv6_prefix))):
        nfp = _match({"meta": {"key": "nfproto"}}, "ipv4" if fam == 4 else "ipv6")
        stmt = {"set": {"op": "update", "elem": key, "set": f"@{name}",
                        "stmt": [_limit(limit.rate, limit.burst)]}}
        out.append(_rule([nfp, *m, stmt, *passed], c))
    return [*out, drop]


def ps_set_defs(limit: PortLimit, gen: int) -> list[dict[str, Any]]:
    if limit.mode != "per-source":
        return []
    timeout = max(1, R.hashlimit_expire_ms(limit) // 1000)
    return [{"set": dict(_T, name=n, type=t, flags=["timeout"], timeout=timeout, size=65535)}
            for n, t in zip(_ps_sets(limit.port, gen), ("ipv4_addr", "ipv6_addr"), strict=False)]


def head_rules(ban_action: str, ipv6_prefix: int) -> list[dict[str, Any]]:
    """Protected sources first, then the ban matches."""
    out = [_rule([_match(_saddr(4), "@x4"), {"return": None}], "pw exempt"),
           _rule([_match(_saddr(6), "@x6"), {"return": None}], "pw exempt")]
    matches = [_match(_saddr(4), "@ban4"), _match(_key6(ipv6_prefix), "@ban6"), _match(_saddr(6), "@ban6n")]
    c = f"pw ban {ban_action} /{ipv6_prefix}"
    for mt in matches:
        if ban_action == "reject":
            tcp = _match({"meta": {"key": "l4proto"}}, "tcp")
            out.append(_rule([mt, tcp, {"counter": "banned"}, {"reject": {"type": "tcp reset"}}], c))
            out.append(_rule([mt, {"counter": "banned"}, {"reject": None}], c))
        else:
            out.append(_rule([mt, {"counter": "banned"}, {"drop": None}], c))
    return out


def base_objects() -> list[dict[str, Any]]:
    """Table, sets, the ban counter and the chain (``add`` is idempotent for all of them)."""
    return [{"table": {"family": FAMILY, "name": TABLE}},
            {"set": dict(_T, name="x4", type="ipv4_addr", flags=["interval"])},
            {"set": dict(_T, name="x6", type="ipv6_addr", flags=["interval"])},
            {"set": dict(_T, name="ban4", type="ipv4_addr", flags=["timeout"])},
            {"set": dict(_T, name="ban6", type="ipv6_addr", flags=["timeout"])},
            {"set": dict(_T, name="ban6n", type="ipv6_addr", flags=["interval", "timeout"])},
            {"counter": dict(_T, name="banned")},
            {"chain": dict(_T, name=CHAIN, type="filter", hook="input", prio=PRIORITY, policy="accept")}]


def _elem_text(e: Any) -> str:
    if isinstance(e, dict) and "prefix" in e:
        return f"{e['prefix']['addr']}/{e['prefix']['len']}"
    if isinstance(e, dict) and "range" in e:
        return f"{e['range'][0]}-{e['range'][1]}"
    return str(e)


def describe(cmds: list[dict[str, Any]]) -> list[str]:
    """nft command lines for a batch (dry run, confirm modal): elements in nft's text syntax,
    everything else as the JSON batch ``nft -j -f -`` would take."""
    out: list[str] = []
    rest: list[dict[str, Any]] = []
    for c in cmds:
        (verb, obj), = c.items()
        if verb in ("add", "delete") and "element" in obj:
            el = obj["element"]
            parts = []
            for e in el["elem"]:
                if isinstance(e, dict) and "elem" in e:
                    t = e["elem"].get("timeout")
                    parts.append(_elem_text(e["elem"]["val"]) + (f" timeout {t}s" if t else ""))
                else:
                    parts.append(_elem_text(e))
            out.append(f"nft {verb} element {FAMILY} {TABLE} {el['name']} {{ {', '.join(parts)} }}")
        else:
            rest.append(c)
    if rest:
        out.insert(0, "nft -j -f - <<'EOF'\n" + json.dumps({"nftables": rest}) + "\nEOF")
    return out


# ------------------------------------------------------------------------------ the backend

class NftablesFirewall(GuardedWrites, Firewall):
    """``--backend nftables``: popwatch's own ``table inet popwatch``."""

    name = "nftables"
    nf_tables = True  # its change events wake the enforcement check at once (heal.py)

    def __init__(self, *, ban_action: str = "drop", ipv6_prefix: int = 64, dry_run: bool = False,
                 lock_path: str | None = DEFAULT_LOCK, wait: int = 10,
                 exempt: Iterable[str] | None = None, **_ignored: Any) -> None:
        if ban_action not in R.BAN_ACTIONS:
            raise FirewallError(f"bad ban action {ban_action!r}: expected drop or reject")
        if not 16 <= int(ipv6_prefix) <= 128:
            raise FirewallError(f"bad IPv6 prefix {ipv6_prefix!r}: expected 16-128")
        self.ban_action = ban_action
        self.ipv6_prefix = int(ipv6_prefix)
        self.dry_run = dry_run
        self.lock_path = lock_path
        self.wait = wait
        self.exempt: list[str] | None = None if exempt is None else R.exempt_entries(exempt)
        self.planned: list[str] = []
        self._recording = dry_run
        self._warnings: list[str] = []
        self._writes_refused: str | None = None
        self._banned_dropped = 0
        #: the ports install() was asked for (repair puts them back)
        self._want: dict[int, PortLimit] = {}
        self.nft = Libnftables()
        self.nl = NftNetlink()
        self.events: NftEvents | None = None

    # ------------------------------------------------------------------ plumbing
    def _run(self, cmds: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One write transaction (or, when recording, its description)."""
        if not cmds:
            return []
        if self._recording:
            self.planned.extend(describe(cmds))
            return []
        self._check_writable()
        return self.nft.run(cmds)

    def _read(self, what: dict[str, Any]) -> list[dict[str, Any]] | None:
        """``list`` something of popwatch's table; None when it does not exist."""
        try:
            return self.nft.run([{"list": what}])
        except NeedsRoot:
            raise
        except FirewallError as e:
            if "No such file" in str(e) or "does not exist" in str(e):
                return None
            raise

    @contextmanager
    def recording(self) -> Iterator[list[str]]:
        prev, start = self._recording, len(self.planned)
        self._recording = True
        out: list[str] = []
        try:
            yield out
        finally:
            out.extend(self.planned[start:])
            del self.planned[start:]
            self._recording = prev

    def warn(self, text: str) -> None:
        if text not in self._warnings:
            self._warnings.append(text)

    def warnings(self) -> list[str]:
        return list(self._warnings)

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
        self.nl.close()
        self.nft.close()

    # ------------------------------------------------------------------ reading the chain
    def _rules(self) -> list[dict[str, Any]] | None:
        """The chain's rules (JSON), or None when popwatch's chain does not exist."""
        if not self.nl.chain_exists():
            return None
        got = self._read({"chain": dict(_T, name=CHAIN)})
        if got is None:
            return None
        return [o["rule"] for o in got if "rule" in o]

    @staticmethod
    def _ports(rules: list[dict[str, Any]]) -> dict[int, tuple[PortLimit, int, list[int]]]:
        """port -> (limit, generation, rule handles in order)."""
        out: dict[int, tuple[PortLimit, int, list[int]]] = {}
        for r in rules:
            parsed = parse_comment(r.get("comment", ""))
            if parsed is None:
                continue
            lim, gen = parsed
            if lim.port in out:
                out[lim.port][2].append(r["handle"])
            else:
                out[lim.port] = (lim, gen, [r["handle"]])
        return out

    def installed(self) -> bool:
        return self.nl.chain_exists()

    def present(self) -> bool:
        """Cheap health check (one netlink request): popwatch's table and chain exist."""
        return self.nl.chain_exists()

    def watch_events(self) -> NftEvents:
        """Subscribe to nf_tables' change events (see :class:`NftEvents`); kept on ``self.events``."""
        if self.events is None:
            self.events = NftEvents()
        return self.events

    def table_touched(self) -> bool:
        """Drain the events since the last call: was anything of popwatch's table deleted?"""
        return self.watch_events().touched()

    def limits(self) -> dict[int, PortLimit]:
        rules = self._rules()
        return {p: v[0] for p, v in self._ports(rules or []).items()}

    # ------------------------------------------------------------------ install / uninstall
    def _exempt_cmds(self, replace: bool) -> list[dict[str, Any]]:
        if self.exempt is None:
            return []
        by: dict[int, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {4: [], 6: []}
        for e in self.exempt:
            n = ipaddress.ip_network(e, strict=False)
            by[n.version].append(n)
        cmds: list[dict[str, Any]] = []
        for fam, name in ((4, "x4"), (6, "x6")):
            nets = by[fam]
            # an interval set refuses overlapping elements: keep the widest of nested ones
            keep = sorted({n for n in nets if not any(o != n and n.subnet_of(o) for o in nets)},  # type: ignore[arg-type]  # v4 and v6 networks are never mixed here
                          key=lambda n: (n.network_address, n.prefixlen))
            if replace:
                cmds.append({"flush": {"set": dict(_T, name=name)}})
            if keep:
                elems = [str(n.network_address) if n.prefixlen == n.max_prefixlen else
                         {"prefix": {"addr": str(n.network_address), "len": n.prefixlen}} for n in keep]
                cmds.append({"add": {"element": dict(_T, name=name, elem=elems)}})
        return cmds

    def _head_cmds(self, rules: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        """Bring the exempt and ban rules at the top of the chain to what they should be."""
        want = head_rules(self.ban_action, self.ipv6_prefix)
        have = []
        for r in rules or []:
            if not str(r.get("comment", "")).startswith(("pw exempt", "pw ban")):
                break
            have.append(r)
        if [r.get("comment") for r in have] == [w["rule"]["comment"] for w in want]:
            return []
        stray = [r for r in rules or [] if str(r.get("comment", "")).startswith(("pw exempt", "pw ban"))]
        cmds: list[dict[str, Any]] = [{"delete": {"rule": dict(_T, chain=CHAIN, handle=r["handle"])}}
                                      for r in stray]
        old = {int(m.group(1)) for r in stray if (m := re.search(r" /(\d+)$", str(r.get("comment", ""))))}
        if old and self.ipv6_prefix not in old:
            cmds += self._move_ban6(old.pop())
        cmds += [{"insert": w} for w in reversed(want)]  # insert without position: at the top
        return cmds

    def _move_ban6(self, old_prefix: int) -> list[dict[str, Any]]:
        """The IPv6 prefix was changed in the config: ``ban6`` holds addresses masked to the
        old prefix, which the new rule would not match; move them (with the time they have
        left) into ``ban6n`` as networks of the old length, in the same transaction."""
        elems = []
        for o in self._read({"set": dict(_T, name="ban6")}) or []:
            for e in o.get("set", {}).get("elem", []):
                val, left = e, 0
                if isinstance(e, dict) and "elem" in e:
                    val, left = e["elem"]["val"], int(e["elem"].get("expires", e["elem"].get("timeout", 0)))
                pfx = {"prefix": {"addr": val, "len": old_prefix}}
                elems.append({"elem": {"val": pfx, "timeout": max(1, left)}} if left else pfx)
        if not elems:
            return []
        return [{"add": {"element": dict(_T, name="ban6n", elem=elems)}}, {"flush": {"set": dict(_T, name="ban6")}}]

    def _port_cmds(self, ports: dict[int, tuple[PortLimit, int, list[int]]], limits: Iterable[PortLimit],
                   force: bool = False) -> list[dict[str, Any]]:
        cmds: list[dict[str, Any]] = []
        for lim in limits:
            cur = ports.get(lim.port)
            if cur is not None and cur[0] == lim and len(cur[2]) == RULES_PER_MODE[lim.mode] and not force:
                continue  # adopt what is there (keeps its buckets)
            gen = (cur[1] + 1) if cur else 1
            cmds.append({"add": {"counter": dict(_T, name=f"pass_{lim.port}")}})
            cmds.append({"add": {"counter": dict(_T, name=f"drop_{lim.port}")}})
            cmds += [{"add": s} for s in ps_set_defs(lim, gen)]
            new = port_rules(lim, gen, self.ipv6_prefix)
            if cur is not None:
                # before the old first rule: the port's block keeps its place in the chain
                cmds += [{"insert": _rule(r["rule"]["expr"], r["rule"]["comment"], cur[2][0])} for r in new]
                cmds += self._drop_port(cur, keep_counters=True)
            else:
                cmds += [{"add": r} for r in new]
        return cmds

    def _drop_port(self, cur: tuple[PortLimit, int, list[int]], keep_counters: bool) -> list[dict[str, Any]]:
        lim, gen, handles = cur
        cmds: list[dict[str, Any]] = [{"delete": {"rule": dict(_T, chain=CHAIN, handle=h)}} for h in handles]
        if lim.mode == "per-source":
            cmds += [{"delete": {"set": dict(_T, name=n)}} for n in _ps_sets(lim.port, gen)]
        if not keep_counters:
            cmds += [{"delete": {"counter": dict(_T, name=f"{k}_{lim.port}")}} for k in ("pass", "drop")]
        return cmds

    def ensure_base(self) -> None:
        """Table, sets, chain, exempt and ban rules; the ports' rules are left as they are."""
        self._check_first()
        with self._locked():
            rules = self._rules()
            cmds = [{"add": o} for o in base_objects()]
            # exactly the protected set of this call (and of a running watch), as with iptables
            cmds += self._exempt_cmds(replace=True) + self._head_cmds(rules)
            self._run(cmds)

    def install(self, limits: list[PortLimit]) -> None:
        self._check_first()
        self._want = {l.port: l for l in limits}
        with self._locked():
            self._install_locked(limits)

    def _install_locked(self, limits: list[PortLimit], adopt_live: bool = False) -> None:
        rules = self._rules()
        ports = self._ports(rules or [])
        if adopt_live:  # repair: a port another popwatch retuned keeps its live rule
            limits = [ports[l.port][0] if l.port in ports else l for l in limits]
        cmds = [{"add": o} for o in base_objects()]
        cmds += self._exempt_cmds(replace=True) + self._head_cmds(rules)
        wanted = {l.port for l in limits}
        for port, cur in ports.items():
            if port not in wanted:
                cmds += self._drop_port(cur, keep_counters=False)
        cmds += self._port_cmds(ports, limits)
        self._run(cmds)

    # ------------------------------------------------------------------ self-healing
    def check_enforcement(self) -> list[str]:
        """What of popwatch's table is missing or changed, one short phrase each ([] when all
        is in place). Cheap (one netlink rule dump of the chain, no set elements): meant to
        run after every counter poll."""
        if self._recording:
            return []
        comments = self.nl.rule_comments()
        if comments is None:
            return ["table inet popwatch (or its input chain) gone"]
        problems = []
        head = [w["rule"]["comment"] for w in head_rules(self.ban_action, self.ipv6_prefix)]
        if comments[:len(head)] != head:
            problems.append("protected/ban rules changed")
        have: dict[int, list[PortLimit]] = {}
        for c in comments:
            if (p := _port_of(c)) is not None:
                have.setdefault(p.port, []).append(p)
        miss = sorted(set(self._want) - set(have))
        if miss:
            problems.append(f"rules of port {', '.join(map(str, miss))} gone")
        bad = sorted(p for p, ls in have.items() if len(ls) != RULES_PER_MODE[ls[0].mode])
        if bad:
            problems.append(f"rules of port {', '.join(map(str, bad))} changed")
        return problems

    def check_setup(self) -> list[str]:
        """:meth:`check_enforcement` plus the sets and named counters of the table, read in
        one request (see :meth:`Firewall.check_setup`); the ports are judged against the
        rules' own comments (a port block with rules missing), not against a config."""
        if self._recording:
            return []
        comments = self.nl.rule_comments()
        if comments is None:
            return ["table inet popwatch (or its input chain) missing"]
        problems = self.check_enforcement()
        got = self._read({"table": {"family": FAMILY, "name": TABLE}}) or []
        sets = {o["set"]["name"] for o in got if "set" in o}
        lost = [n for n in ("x4", "x6", "ban4", "ban6", "ban6n") if n not in sets]
        if lost:
            problems.append(f"set{'s' if len(lost) > 1 else ''} {', '.join(lost)} missing")
        return problems

    def repair(self, bans: dict[str, float | None], *, stop: Callable[[], bool] | None = None) -> list[str]:
        """Put popwatch's table back (``nft flush ruleset``, a rule deleted by hand): the
        table, sets, protected and ban rules and the ports installed; ports another popwatch
        retuned keep their live rule. When the ban sets were lost, refill them from ``bans``
        (kernel entry -> seconds left, None = permanent) in the same transaction's wake.
        ``stop()`` (asked once the lock is held) True means do nothing."""
        self._check_first()
        with self._locked():
            if stop is not None and stop():
                return []
            problems = self.check_enforcement()
            if not problems:
                return []
            had = {n for n in ("ban4", "ban6", "ban6n") if self._read({"set": dict(_T, name=n)}) is not None}
            self._install_locked(list(self._want.values()), adopt_live=True)
            done = [f"put back {'; '.join(problems)}"]
            if len(had) < 3 and bans:
                n = self.ban_many(bans.items())
                done.append(f"restored {n} ban{'' if n == 1 else 's'} from popwatch's state")
            return done

    def close_connections(self, ips: Iterable[str]) -> dict[str, int]:
        """Close open TCP connections of banned sources, when the kernel backends' helper
        (``.sockkill``, another branch) is there; otherwise nothing."""
        if self._recording or self.dry_run:
            return {}
        try:
            from .sockkill import close_tcp
        except ImportError:
            return {}
        return dict(close_tcp(ips))

    def uninstall(self) -> None:
        self._check_first()
        with self._locked():
            if self._recording or self._read({"table": {"family": FAMILY, "name": TABLE}}) is not None:
                self._run([{"delete": {"table": {"family": FAMILY, "name": TABLE}}}])

    def set_exempt(self, targets: Iterable[str]) -> None:
        self._check_first()
        self.exempt = R.exempt_entries(targets)
        self._run(self._exempt_cmds(replace=True))

    def exempted(self) -> list[str]:
        return [_elem_text(e) for st in self._sets(("x4", "x6")) for e in st.get("elem", [])]

    def set_limit(self, limit: PortLimit) -> None:
        self._check_first()
        with self._locked():
            rules = self._rules()
            if rules is None:
                raise FirewallError("popwatch's table is not installed: start `popwatch watch` "
                                    "(or ban or limit from the command line) to install it first")
            self._run(self._port_cmds(self._ports(rules), [limit]))
        if limit.port in self._want:
            self._want[limit.port] = limit

    # ------------------------------------------------------------------ counters
    def counters(self) -> dict[int, PortCounters]:
        try:
            named = self.nl.counters()
        except OSError as e:
            raise FirewallError(f"reading popwatch's counters: {e}") from None
        self._banned_dropped = named.get("banned", 0)
        out: dict[int, PortCounters] = {}
        for name, pkts in named.items():
            kind, _, port = name.partition("_")
            if kind in ("pass", "drop") and port.isdigit():
                c = out.get(int(port)) or PortCounters(int(port), 0, 0)
                out[int(port)] = PortCounters(c.port, pkts if kind == "pass" else c.passed,
                                              pkts if kind == "drop" else c.dropped)
        return out

    def banned_dropped(self) -> int:
        return self._banned_dropped

    # ------------------------------------------------------------------ bans
    def _entry(self, ip: str, net: bool | None) -> R.BanEntry:
        text = str(ip).strip()
        if net is None:
            net = False
            if "/" in text:
                try:
                    net = str(ipaddress.ip_network(text, strict=True)) == text
                except ValueError:
                    net = False
        return R.ban_entry(text, allow_net=net, ipv6_prefix=self.ipv6_prefix)

    def _elems(self, e: R.BanEntry) -> tuple[str, list[Any]]:
        """(set, element values) for one ban entry."""
        if e.family == 4:
            if e.cidr is None:
                return "ban4", [e.entry]
            return "ban4", [str(a) for a in ipaddress.IPv4Network(e.entry)]
        n = ipaddress.IPv6Network(e.entry)
        if n.prefixlen == self.ipv6_prefix:
            return "ban6", [str(n.network_address)]
        return "ban6n", [{"prefix": {"addr": str(n.network_address), "len": n.prefixlen}}]

    def _add_cmds(self, items: Iterable[tuple[R.BanEntry, int]]) -> list[dict[str, Any]]:
        by: dict[str, dict[str, tuple[Any, int]]] = {}
        for e, t in items:
            name, vals = self._elems(e)
            d = by.setdefault(name, {})
            for v in vals:
                k = json.dumps(v)
                old = d.get(k)
                # the longer ban wins within one batch (0 = permanent)
                if old is None or t == 0 or (old[1] != 0 and t > old[1]):
                    d[k] = (v, t)
        return [{"add": {"element": dict(_T, name=name, elem=[{"elem": {"val": v, "timeout": t}} if t else v
                                                            for v, t in d.values()])}}
                for name, d in by.items() if d]

    def ban(self, ip: str, ttl: float | None = None, *, net: bool | None = None) -> None:
        e = self._entry(ip, net)
        try:
            self._run(self._add_cmds([(e, R.ttl_seconds(ttl))]))
        except FirewallError as err:
            if "No such file" in str(err):
                raise FirewallError("popwatch's ban sets are missing: popwatch is not installed "
                                    "(start `popwatch watch` first)") from None
            raise

    def ban_many(self, items: Iterable[tuple[str, float | None]], *, net: bool | None = None) -> int:
        """Ban many addresses in one transaction (bulk load, restoring saved bans)."""
        todo = [(self._entry(ip, net), R.ttl_seconds(ttl)) for ip, ttl in items]
        self._run(self._add_cmds(todo))
        return len(todo)

    def unban(self, ip: str, *, net: bool | None = None) -> None:
        e = self._entry(ip, net)
        name, vals = self._elems(e)
        for v in vals:  # one by one: an absent element would fail the whole batch
            try:
                self._run([{"delete": {"element": dict(_T, name=name, elem=[v])}}])
            except NeedsRoot:
                raise
            except FirewallError as err:
                if "No such file" not in str(err):
                    raise

    def _sets(self, names: tuple[str, ...]) -> list[dict[str, Any]]:
        """These sets (JSON), read in one libnftables call (one cache fill: it reads every
        element of the table anyway); set by set when one is missing."""
        try:
            return [o["set"] for o in self.nft.run([{"list": {"set": dict(_T, name=n)}} for n in names]) if "set" in o]
        except NeedsRoot:
            raise
        except FirewallError:
            return [o["set"] for n in names for o in self._read({"set": dict(_T, name=n)}) or [] if "set" in o]

    def bans(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for st in self._sets(("ban4", "ban6", "ban6n")):
            for e in st.get("elem", []):
                left: float | None = None
                if isinstance(e, dict) and "elem" in e:
                    left = float(e["elem"].get("expires", e["elem"].get("timeout", 0))) or None
                    e = e["elem"]["val"]
                key = _elem_text(e)
                if st.get("name") == "ban6":
                    key = f"{key}/{self.ipv6_prefix}"
                out[key] = left
        return out

    def ban_key(self, ip: str, *, net: bool | None = None) -> str:
        return self._entry(ip, net).entry

    # ------------------------------------------------------------------ descriptions
    def describe_ban(self, ip: str, ttl: float | None = None, *, net: bool | None = None) -> list[str]:
        with self.recording() as out:
            self.ban(ip, ttl, net=net)
        return out

    def describe_unban(self, ip: str, *, net: bool | None = None) -> list[str]:
        e = self._entry(ip, net)
        name, vals = self._elems(e)
        return describe([{"delete": {"element": dict(_T, name=name, elem=vals)}}])

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
