"""popwatch's two ban sets: ``popwatch4`` (hash:ip) and ``popwatch6`` (hash:net family inet6),
and the protected-sources sets ``popwatchx4``/``popwatchx6`` (hash:net).

Everything goes over netlink from this process; the ``ipset`` binary is never run (Debian and
Ubuntu do not install it by default). The sets are ordinary kernel ip_set sets, so an admin who
has the binary sees them with ``ipset list``.

* create, list names, flush, swap and destroy: pyroute2's :class:`pyroute2.IPSet` API.
* add and delete (one ban: the hot path) and bulk adds: messages encoded by pyroute2's own
  ``ipset_msg`` class, but once per message *shape* (command, set, family, with/without CIDR and
  timeout); each call copies that template and writes the address, CIDR, timeout and sequence
  number in place, and sends it on one long-lived socket. Why: measured here (see
  benchmarks/firewall.py), ``IPSet.add`` costs ~0.2-0.4 ms a call (~0.08 ms building and encoding
  the nla objects, the rest its asyncio round trip) and cannot be called from a thread whose
  event loop is running; 10k adds one by one take 2-4 s. A patched template costs a few µs, so
  one ban stays ~0.05 ms and a bulk load sends 64 adds per ``send`` (one ack each, read back per
  batch): 10k bans in well under 0.5 s. Test is the same single message.
* listing members (``bans()``, every 10 polls while watching): a LIST dump request encoded by
  pyroute2, its reply walked by :func:`_walk_list`; pyroute2's own decoder needs ~0.35 s for
  10k members (the fw thread, which also bans, would stall that long), ``ipset save`` ~0.02 s.

Only canonical address strings produced by :func:`popwatch.firewall.rules.ban_entry` reach this
module; it re-parses them with :func:`socket.inet_pton` before anything is sent.

Dry-run descriptions keep the spelling of the equivalent ``ipset`` commands (what an admin
would type), e.g. ``ipset -exist add popwatch4 203.0.113.5 timeout 90``.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from .base import FirewallError, NeedsRoot
from .rules import SET4, SET6, SETX4, SETX6

MAXELEM = 1048576  # entries per ban set (restoring 300k saved bans fits; beyond: refused with a line)

_CMD_ADD, _CMD_DEL, _CMD_TEST = 9, 10, 11
_NFNL_SUBSYS_IPSET = 6
_NLM_F_REQUEST, _NLM_F_ACK = 0x1, 0x4
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_DUMP = 0x300
_NETLINK_NETFILTER = 12
_NETLINK_CAP_ACK = 10
_SOL_NETLINK = 270
_PROTOCOL = 6  # the kernel accepts IPSET_PROTOCOL_MIN (6) .. IPSET_PROTOCOL (7)
_FLAG_LIST_SETNAME = 1 << 1
_IPSET_ERR_EXIST = 4103
_IPSET_ERRORS = {  # enum ipset_errno (ip_set.h) and the hash types' own codes
    4097: "kernel ipset protocol error",
    4098: "set type not supported by this kernel",
    4100: "the set is in use by a kernel component (a rule references it)",
    4101: "the second set does not exist",
    4102: "the set is of a different type",
    4103: "element already exists / is missing",
    4104: "invalid CIDR",
    4106: "wrong address family for this set",
    4107: "the set was created without timeout support",
    4108: "the set is referenced",
    4352: "the set is full",
}
_FIRST_SET_ERR = 4096
_NO_KERNEL = (errno.EOPNOTSUPP, errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT)
_BATCH = 64
NO_IPSET_HINT = ("the kernel has no ip_set support (the ip_set / ip_set_hash_ip / ip_set_hash_net "
                 "modules): load them with `modprobe ip_set_hash_ip ip_set_hash_net` (or use a kernel "
                 "that has them), or run with --backend none to only watch")


@dataclass(frozen=True, slots=True)
class SetEntry:
    family: int
    addr: bytes
    cidr: int | None


def _entry(entry: str) -> SetEntry:
    """A canonical entry (``a.b.c.d``, ``x::/64``) -> bytes for netlink; ValueError otherwise."""
    addr, _, cidr = entry.partition("/")
    for fam, af in ((4, socket.AF_INET), (6, socket.AF_INET6)):
        try:
            packed = socket.inet_pton(af, addr)
        except OSError:
            continue
        if not cidr:
            return SetEntry(fam, packed, None)
        if not cidr.isdigit() or not 0 < int(cidr) <= len(packed) * 8:
            break
        return SetEntry(fam, packed, int(cidr))
    raise ValueError(f"not an address or network: {entry!r}")


_SAFE = re.compile(r"^[0-9a-f.:]{2,39}(/\d{1,3})?$")


def _strerror(err: int) -> str:
    if err >= _FIRST_SET_ERR:
        return _IPSET_ERRORS.get(err, f"ipset error {err}")
    if err == errno.EPERM:
        return "Operation not permitted"
    if err in _NO_KERNEL:
        return NO_IPSET_HINT
    try:
        return os.strerror(err)
    except ValueError:
        return f"error {err}"


def _error(what: str, err: int) -> FirewallError:
    if err == errno.EPERM:
        return NeedsRoot(f"{what}: Operation not permitted (popwatch needs root or CAP_NET_ADMIN "
                         f"to change the firewall: run it with sudo)")
    if err in _NO_KERNEL:
        return FirewallError(NO_IPSET_HINT)
    if err == errno.ENOENT:
        return FirewallError(f"{what}: the set does not exist")
    return FirewallError(f"{what}: {_strerror(err)}")


# ----------------------------------------------------------------------------- pyroute2 API

_helper: ThreadPoolExecutor | None = None
_helper_lock = threading.Lock()


def _pyroute2(fn: Callable[[Any], Any], what: str) -> Any:
    """Run ``fn(ipset)`` with a fresh :class:`pyroute2.IPSet`, mapping errors to FirewallError.

    pyroute2's synchronous API runs its own asyncio loop, which is impossible in a thread whose
    loop is already running (the TUI's): there the call goes to a helper thread."""
    global _helper
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _pyroute2_call(fn, what)
    with _helper_lock:
        if _helper is None:
            _helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="popwatch-ipset")
    return _helper.submit(_pyroute2_call, fn, what).result()


def _pyroute2_call(fn: Callable[[Any], Any], what: str) -> Any:
    try:
        from pyroute2 import IPSet
    except ImportError as e:  # pragma: no cover - a dependency of popwatch
        raise FirewallError(f"pyroute2 cannot be loaded ({e}): install popwatch's dependencies") from None
    try:
        ips = IPSet()
    except OSError as e:
        raise _error(what, e.errno or errno.EIO) from None
    except Exception as e:  # noqa: BLE001 - pyroute2's NetlinkError on the protocol query
        raise _error(what, int(getattr(e, "code", 0) or errno.EIO)) from None
    try:
        return fn(ips)
    except OSError as e:
        raise _error(what, e.errno or errno.EIO) from None
    except Exception as e:
        code = getattr(e, "code", None)
        if code is None:
            raise
        raise _error(what, int(code)) from None
    finally:
        try:
            ips.close()
        except Exception:  # noqa: BLE001 - closing a netlink socket is best effort
            pass


def _show(addr: str, cidr: int | None, family: int) -> str:
    """An entry the way ``ipset list`` prints it (a host entry of hash:net has no /len)."""
    if cidr is None or cidr == (32 if family == socket.AF_INET else 128):
        return addr
    return f"{addr}/{cidr}"


# ----------------------------------------------------------------------------- hot path

def _attrs(buf: bytes, off: int, end: int) -> Iterable[tuple[int, int, int]]:
    """(type without flags, payload start, payload end) of each netlink attribute."""
    while off + 4 <= end:
        ln, typ = struct.unpack_from("=HH", buf, off)
        if ln < 4:
            return
        yield typ & 0x3FFF, off + 4, off + ln
        off += (ln + 3) & ~3


def _walk_list(buf: bytes, off: int, end: int, out: list[tuple[str, int | None]]) -> None:
    """Members of one LIST reply (after its nfgenmsg) appended to ``out``."""
    family: int = socket.AF_INET
    for typ, a, b in _attrs(buf, off, end):
        if typ == 5:  # IPSET_ATTR_FAMILY
            family = buf[a]
        elif typ == 8:  # IPSET_ATTR_ADT
            for dtyp, da, db in _attrs(buf, a, b):
                if dtyp != 7:  # IPSET_ATTR_DATA
                    continue
                addr, cidr, timeout = None, None, None
                for etyp, ea, eb in _attrs(buf, da, db):
                    if etyp == 1:  # IPSET_ATTR_IP -> IPADDR_IPV4/6
                        for ityp, ia, ib in _attrs(buf, ea, eb):
                            if ityp in (1, 2):
                                addr = socket.inet_ntop(socket.AF_INET if ityp == 1 else socket.AF_INET6,
                                                        bytes(buf[ia:ib]))
                    elif etyp == 3:  # IPSET_ATTR_CIDR
                        cidr = buf[ea]
                    elif etyp == 6:  # IPSET_ATTR_TIMEOUT
                        (timeout,) = struct.unpack_from(">I", buf, ea)
                if addr is not None:
                    out.append((_show(addr, cidr, family), timeout))


class _Template:
    """One message shape, encoded by pyroute2, with the offsets of its variable fields."""

    __slots__ = ("addr", "cidr", "data", "timeout")

    def __init__(self, cmd: int, set_name: str, family: int, cidr: bool, timeout: bool) -> None:
        from pyroute2.netlink.nfnetlink.ipset import ipset_msg

        def enc(fill: int) -> bytes:
            n = 4 if family == 4 else 16
            addr = socket.inet_ntop(socket.AF_INET if family == 4 else socket.AF_INET6, bytes([fill]) * n)
            data: list[list[Any]] = [["IPSET_ATTR_IP_FROM", {"attrs": [
                ["IPSET_ATTR_IPADDR_IPV4" if family == 4 else "IPSET_ATTR_IPADDR_IPV6", addr]]}]]
            if cidr:
                data.append(["IPSET_ATTR_CIDR", fill & 0x7F])
            if timeout:
                data.append(["IPSET_ATTR_TIMEOUT", fill * 0x01010101])
            m = ipset_msg()
            m["nfgen_family"] = socket.AF_INET if family == 4 else socket.AF_INET6
            m["header"]["type"] = (_NFNL_SUBSYS_IPSET << 8) | cmd
            m["header"]["flags"] = _NLM_F_REQUEST | _NLM_F_ACK
            m["attrs"] = [["IPSET_ATTR_PROTOCOL", _PROTOCOL], ["IPSET_ATTR_SETNAME", set_name],
                          ["IPSET_ATTR_DATA", {"attrs": data}]]
            m.encode()
            return bytes(m.data)

        a, b = enc(0x11), enc(0x22)
        if len(a) != len(b):
            raise FirewallError("pyroute2 encodes ipset messages of varying length")
        diff = [i for i in range(16, len(a)) if a[i] != b[i]]
        n = 4 if family == 4 else 16
        self.data = a
        self.addr = diff[0]
        if diff[:n] != list(range(self.addr, self.addr + n)):
            raise FirewallError("cannot locate the address in pyroute2's ipset message")
        rest = diff[n:]
        self.cidr = rest.pop(0) if cidr else -1
        self.timeout = rest[0] if timeout else -1
        if timeout and rest != list(range(self.timeout, self.timeout + 4)):
            raise FirewallError("cannot locate the timeout in pyroute2's ipset message")

    def fill(self, e: SetEntry, timeout: int | None, seq: int) -> bytearray:
        buf = bytearray(self.data)
        struct.pack_into("=I", buf, 8, seq)
        buf[self.addr:self.addr + len(e.addr)] = e.addr
        if self.cidr >= 0:
            buf[self.cidr] = e.cidr or 0
        if self.timeout >= 0:
            struct.pack_into(">I", buf, self.timeout, int(timeout or 0))
        return buf


class NetlinkIpset:
    """ADD/DEL/TEST of single entries and batched ADDs on one reused netlink socket.

    The socket belongs to the network namespace the process was in when it was opened."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._seq = 0
        self._templates: dict[tuple[int, str, int, bool, bool], _Template] = {}
        self._lists: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def _socket(self) -> socket.socket:
        if self._sock is None:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
            s.bind((0, 0))
            try:  # errors carry only the header, not our whole request
                s.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)
            except OSError:
                pass
            s.settimeout(5.0)
            self._sock = s
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _message(self, cmd: int, set_name: str, e: SetEntry, timeout: int | None) -> tuple[int, bytearray]:
        key = (cmd, set_name, e.family, e.cidr is not None, timeout is not None)
        t = self._templates.get(key)
        if t is None:
            t = self._templates[key] = _Template(*key)
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq, t.fill(e, timeout, self._seq)

    def _acks(self, s: socket.socket, want: set[int]) -> dict[int, int]:
        """Read acks until every sequence number in ``want`` answered: seq -> error (0 = ok)."""
        out: dict[int, int] = {}
        while want:
            reply = s.recv(1 << 16)
            off = 0
            while off + 16 <= len(reply):
                ln, typ, _fl, rseq, _pid = struct.unpack_from("=IHHII", reply, off)
                if typ == _NLMSG_ERROR and rseq in want:
                    (err,) = struct.unpack_from("=i", reply, off + 16)
                    out[rseq] = -err
                    want.discard(rseq)
                off += max((ln + 3) & ~3, 16)
        return out

    def request(self, cmd: int, set_name: str, entry: str, timeout: int | None = None) -> int:
        """Send one command; return 0 or the positive error code from the kernel."""
        e = _entry(entry)
        with self._lock:
            seq, msg = self._message(cmd, set_name, e, timeout)
            s = self._socket()
            s.send(msg)
            return self._acks(s, {seq})[seq]

    def dump(self, set_name: str) -> list[tuple[str, int | None]] | None:
        """Every member of one set as ``(entry, timeout or None)``, as ``ipset list`` prints
        them; None when the set does not exist. (A LIST dump encoded once by pyroute2; the
        reply is walked here: pyroute2's decoder takes ~0.35 s for 10k members, this ~0.02 s.)"""
        with self._lock:
            t = self._lists.get(set_name)
            if t is None:
                from pyroute2.netlink.nfnetlink.ipset import IPSET_CMD_LIST, ipset_msg

                m = ipset_msg()
                m["nfgen_family"] = socket.AF_INET
                m["header"]["type"] = (_NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_LIST
                m["header"]["flags"] = _NLM_F_REQUEST | _NLM_F_DUMP
                m["attrs"] = [["IPSET_ATTR_PROTOCOL", _PROTOCOL], ["IPSET_ATTR_SETNAME", set_name]]
                m.encode()
                t = self._lists[set_name] = bytes(m.data)
            self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
            seq = self._seq
            buf = bytearray(t)
            struct.pack_into("=I", buf, 8, seq)
            s = self._socket()
            s.send(buf)
            out: list[tuple[str, int | None]] = []
            while True:
                reply = s.recv(1 << 20)
                off = 0
                while off + 16 <= len(reply):
                    ln, typ, _fl, rseq, _pid = struct.unpack_from("=IHHII", reply, off)
                    if ln < 16:
                        raise OSError(errno.EPROTO, "bad netlink message")
                    if rseq == seq:
                        if typ == _NLMSG_DONE:
                            return out
                        if typ == _NLMSG_ERROR:
                            (err,) = struct.unpack_from("=i", reply, off + 16)
                            if -err == errno.ENOENT:
                                return None
                            if err:
                                raise OSError(-err, _strerror(-err))
                        else:
                            _walk_list(reply, off + 20, off + ln, out)
                    off += (ln + 3) & ~3

    def add_many(self, items: Sequence[tuple[str, str, int | None]]) -> list[tuple[str, str, int]]:
        """ADD (``-exist``) every ``(set, entry, timeout)``, ``_BATCH`` messages per send;
        returns the ``(set, entry, error)`` of those the kernel refused."""
        failed: list[tuple[str, str, int]] = []
        with self._lock:
            s = self._socket()
            for i in range(0, len(items), _BATCH):
                chunk = items[i:i + _BATCH]
                bufs, by_seq = [], {}
                for set_name, entry, timeout in chunk:
                    seq, msg = self._message(_CMD_ADD, set_name, _entry(entry), timeout)
                    bufs.append(msg)
                    by_seq[seq] = (set_name, entry)
                s.send(b"".join(bufs))
                for seq, err in self._acks(s, set(by_seq)).items():
                    if err:
                        failed.append((*by_seq[seq], err))
        return failed


class Ipset:
    """The popwatch sets of one network namespace. ``run`` records a write in dry-run (it gets
    the equivalent ``ipset`` argv and optional stdin); ``read`` is kept for compatibility and
    unused: every read goes over netlink."""

    def __init__(self, run: Callable[[Sequence[str], str | None], str],
                 read: Callable[[Sequence[str], str | None], str], *,
                 binary: str = "ipset", netlink: bool = True, dry_run: bool = False) -> None:
        self._run = run
        self._read = read
        self.binary = binary  # only spelled in dry-run descriptions
        self.dry_run = dry_run
        self._nl = NetlinkIpset()  # ``netlink`` is accepted for compatibility: always netlink now

    # -- sets
    def names(self) -> list[str]:
        def do(ips: Any) -> list[str]:
            return [m.get_attr("IPSET_ATTR_SETNAME") for m in ips.list(flags=_FLAG_LIST_SETNAME)
                    if m.get_attr("IPSET_ATTR_SETNAME")]
        return list(dict.fromkeys(_pyroute2(do, "ipset list")))

    def _names_or(self, default: set[str]) -> set[str]:
        """Set names; in dry-run a failed read (no root) gives ``default`` instead."""
        try:
            return set(self.names())
        except FirewallError:
            if self.dry_run:
                return default
            raise

    def ensure(self) -> None:
        """Create popwatch4/popwatch6 if missing (an existing set is adopted as it is)."""
        have = set(self._names_or(set()))
        want = [(SET4, "hash:ip", "inet", True), (SET6, "hash:net", "inet6", True),
                (SETX4, "hash:net", "inet", False), (SETX6, "hash:net", "inet6", False)]
        todo = [w for w in want if w[0] not in have]
        if not todo:
            return
        if self.dry_run:
            for name, stype, fam, bans in todo:
                extra = ["timeout", "0", "maxelem", str(MAXELEM)] if bans else []
                self._run([self.binary, "create", name, stype, "family", fam, *extra, "-exist"], None)
            return

        def do(ips: Any) -> None:
            for name, stype, fam, bans in todo:
                ips.create(name, stype=stype, family=socket.AF_INET if fam == "inet" else socket.AF_INET6,
                           exclusive=False, timeout=0 if bans else None, maxelem=MAXELEM if bans else None)
        _pyroute2(do, "ipset create")

    def set_exempt(self, nets: Iterable[str], *, replace: bool = True) -> None:
        """Replace the protected-sources sets atomically (fill a new set, ``swap``, destroy),
        or with ``replace=False`` only add to them. ``nets`` are canonical addresses or
        networks (see ``rules.exempt_entries``)."""
        by = {SETX4: [], SETX6: []}  # type: dict[str, list[str]]
        for n in nets:
            e = _entry(n)
            by[SETX4 if e.family == 4 else SETX6].append(n)
        if self.dry_run:
            lines = []
            for name, fam in ((SETX4, "inet"), (SETX6, "inet6")):
                if not replace:
                    lines += [f"add {name} {n}\n" for n in sorted(set(by[name]))]
                    continue
                tmp = name + "-new"
                lines.append(f"create {tmp} hash:net family {fam} -exist\n")
                lines.append(f"flush {tmp}\n")
                lines += [f"add {tmp} {n}\n" for n in sorted(set(by[name]))]
                lines.append(f"swap {tmp} {name}\n")
                lines.append(f"destroy {tmp}\n")
            if lines:
                self._run([self.binary, "-exist", "restore"], "".join(lines))
            return
        if not replace:
            self._add_all([(name, n, None) for name in (SETX4, SETX6) for n in sorted(set(by[name]))])
            return
        for name, af in ((SETX4, socket.AF_INET), (SETX6, socket.AF_INET6)):
            tmp = name + "-new"

            def prep(ips: Any, tmp: str = tmp, af: int = af) -> None:
                ips.create(tmp, stype="hash:net", family=af, exclusive=False)
                ips.flush(tmp)
            _pyroute2(prep, "ipset create")
            self._add_all([(tmp, n, None) for n in sorted(set(by[name]))])

            def swap(ips: Any, tmp: str = tmp, name: str = name) -> None:
                ips.swap(tmp, name)
                ips.destroy(tmp)
            _pyroute2(swap, "ipset swap")

    def _list(self, name: str) -> list[tuple[str, int | None]] | None:
        """Members of one set (None: no such set)."""
        try:
            return self._nl.dump(name)
        except OSError as e:
            self._nl.close()
            raise _error(f"ipset list {name}", e.errno or errno.EIO) from None

    def exempt(self) -> list[str]:
        """The protected sources currently in the kernel."""
        out: list[str] = []
        have = self._names_or(set())
        for name in (SETX4, SETX6):
            if name in have:
                out += [e for e, _ in self._list(name) or []]
        return out

    def destroy(self) -> list[str]:
        """Destroy popwatch's sets; returns warnings for sets still referenced elsewhere."""
        warns: list[str] = []
        have = set(self._names_or({SET4, SET6, SETX4, SETX6}))
        for name in (SET4, SET6, SETX4, SETX6, SETX4 + "-new", SETX6 + "-new"):
            if name in have:
                if self.dry_run:
                    self._run([self.binary, "destroy", name], None)
                    continue
                try:
                    _pyroute2(partial(_destroy, name=name), f"ipset destroy {name}")
                except FirewallError as e:
                    warns.append(f"ipset {name} kept: {e}")
        return warns

    def flush(self, set_name: str) -> None:
        """Remove every entry of one set."""
        if self.dry_run:
            self._run([self.binary, "flush", set_name], None)
            return
        _pyroute2(lambda ips: ips.flush(set_name), f"ipset flush {set_name}")

    # -- entries
    @staticmethod
    def add_argv(binary: str, set_name: str, entry: str, timeout: int) -> list[str]:
        return [binary, "-exist", "add", set_name, entry, "timeout", str(timeout)]

    def add(self, set_name: str, entry: str, timeout: int) -> None:
        """Add (or refresh the timeout of) one entry; ``timeout`` 0 = permanent."""
        _entry(entry)  # validates
        if self.dry_run:
            self._run(self.add_argv(self.binary, set_name, entry, timeout), None)
            return
        err = self._nl_request(_CMD_ADD, set_name, entry, timeout)
        if err:
            raise _error(f"ipset add {set_name} {entry}", err)

    def delete(self, set_name: str, entry: str) -> None:
        """Remove one entry; no error if it is not there."""
        _entry(entry)
        if self.dry_run:
            self._run([self.binary, "-exist", "del", set_name, entry], None)
            return
        err = self._nl_request(_CMD_DEL, set_name, entry)
        if err not in (0, _IPSET_ERR_EXIST):  # IPSET_ERR_EXIST: not in the set
            raise _error(f"ipset del {set_name} {entry}", err)

    def test(self, set_name: str, entry: str) -> bool:
        """Whether ``entry`` is in the set (a network matches its addresses)."""
        err = self._nl_request(_CMD_TEST, set_name, entry)
        if err in (0, _IPSET_ERR_EXIST):
            return err == 0
        raise _error(f"ipset test {set_name} {entry}", err)

    def _nl_request(self, cmd: int, set_name: str, entry: str, timeout: int | None = None) -> int:
        try:
            return self._nl.request(cmd, set_name, entry, timeout)
        except OSError as e:
            self._nl.close()
            return e.errno or errno.EIO

    def _add_all(self, items: list[tuple[str, str, int | None]]) -> None:
        try:
            failed = self._nl.add_many(items)
        except OSError as e:
            self._nl.close()
            raise _error("ipset add", e.errno or errno.EIO) from None
        if failed:
            name, entry, err = failed[0]
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise _error(f"ipset add {name} {entry}{more}", err)

    def restore(self, items: Iterable[tuple[str, str, int]]) -> int:
        """Bulk add ``(set, entry, timeout)`` (``-exist``: re-adding refreshes the timeout);
        returns the count."""
        todo: list[tuple[str, str, int | None]] = []
        for set_name, entry, timeout in items:
            if set_name not in (SET4, SET6) or not _SAFE.match(entry):  # canonical entries only
                raise FirewallError(f"refusing ipset entry {entry!r}")
            todo.append((set_name, entry, int(timeout)))
        if not todo:
            return 0
        if self.dry_run:
            self._run([self.binary, "-exist", "restore"],
                      "".join(f"add {s} {e} timeout {t}\n" for s, e, t in todo))
            return len(todo)
        self._add_all(todo)
        return len(todo)

    def entries(self) -> dict[str, int]:
        """Every entry in both sets -> seconds left (0 = permanent)."""
        out: dict[str, int] = {}
        for name in (SET4, SET6):
            for entry, left in self._list(name) or []:
                out[entry] = int(left or 0)
        return out

    def close(self) -> None:
        self._nl.close()


def _destroy(ips: Any, name: str) -> None:
    ips.destroy(name)


def run_binary(argv: Sequence[str], stdin: str | None = None, *, timeout: float = 30.0) -> str:
    """Run one firewall binary (argument list, never a shell) and return stdout."""
    try:
        cp = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise FirewallError(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise FirewallError(f"{argv[0]} did not finish in {timeout:.0f}s") from None
    if cp.returncode != 0:
        msg = [l.strip() for l in (cp.stderr or cp.stdout).splitlines()
               if l.strip() and not l.startswith("Try `")]  # iptables' "Try `iptables -h'" hint
        raise FirewallError(f"{' '.join(argv[:4])}: {'; '.join(msg[-3:]) if msg else f'exit {cp.returncode}'}")
    return cp.stdout
