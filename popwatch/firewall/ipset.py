"""popwatch's two ban sets: ``popwatch4`` (hash:ip) and ``popwatch6`` (hash:net family inet6).

Adds and deletes go over netlink from this process (a minimal, dependency-free client of the
kernel's ip_set protocol: ~0.1 ms a call instead of ~2 ms for a fork+exec of ``ipset``); every
other operation (create, destroy, list, bulk ``restore``) uses the ``ipset`` binary. If the
netlink path fails for any reason other than a clear kernel answer, the binary is used instead.

Only canonical address strings produced by :func:`popwatch.firewall.rules.ban_entry` reach this
module; it re-parses them with :mod:`ipaddress` before anything runs.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import struct
import subprocess
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from .base import FirewallError
from .rules import SET4, SET6, SETX4, SETX6

MAXELEM = 1048576  # entries per ban set (restoring 300k saved bans fits; beyond: refused with a line)

# linux/netfilter/ipset/ip_set.h
_NETLINK_NETFILTER = 12
_NFNL_SUBSYS_IPSET = 6
_CMD_ADD, _CMD_DEL, _CMD_TEST = 9, 10, 11
_ATTR_PROTOCOL, _ATTR_SETNAME, _ATTR_DATA = 1, 2, 7
_ATTR_IP, _ATTR_CIDR, _ATTR_TIMEOUT = 1, 3, 6
_ATTR_IPADDR_IPV4, _ATTR_IPADDR_IPV6 = 1, 2
_NLA_F_NESTED, _NLA_F_NET_BYTEORDER = 0x8000, 0x4000
_NLM_F_REQUEST, _NLM_F_ACK = 0x1, 0x4
_NLMSG_ERROR = 2
_PROTOCOL = 6  # the kernel accepts 6 and 7 (IPSET_PROTOCOL_MIN..IPSET_PROTOCOL)
_IPSET_ERRORS = {  # enum ipset_errno (ip_set.h) and the hash types' own codes
    4097: "kernel ipset protocol error",
    4102: "the set is of a different type",
    4103: "element already exists / is missing",
    4104: "invalid CIDR",
    4106: "wrong address family for this set",
    4107: "the set was created without timeout support",
    4352: "the set is full",
}
_FIRST_SET_ERR = 4096


def _attr(atype: int, payload: bytes) -> bytes:
    ln = 4 + len(payload)
    return struct.pack("=HH", ln, atype) + payload + b"\0" * ((4 - ln % 4) % 4)


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


class NetlinkIpset:
    """A tiny ip_set netlink client: ADD/DEL/TEST with an optional timeout.

    The socket belongs to the network namespace the process was in when it was opened."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._seq = 0

    def _socket(self) -> socket.socket:
        if self._sock is None:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
            s.bind((0, 0))
            s.settimeout(5.0)
            self._sock = s
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def request(self, cmd: int, set_name: str, entry: str, timeout: int | None = None) -> int:
        """Send one command; return 0 or the positive error code from the kernel."""
        e = _entry(entry)
        ipattr = _attr(_ATTR_IPADDR_IPV4 if e.family == 4 else _ATTR_IPADDR_IPV6,
                       e.addr)
        ipattr = struct.pack("=HH", len(ipattr), (_ATTR_IPADDR_IPV4 if e.family == 4 else _ATTR_IPADDR_IPV6)
                             | _NLA_F_NET_BYTEORDER) + ipattr[4:]
        data = _attr(_ATTR_IP | _NLA_F_NESTED, ipattr)
        if e.cidr is not None:
            data += _attr(_ATTR_CIDR, struct.pack("B", e.cidr))
        if timeout is not None:
            data += _attr(_ATTR_TIMEOUT | _NLA_F_NET_BYTEORDER, struct.pack(">I", timeout))
        body = (_attr(_ATTR_PROTOCOL, struct.pack("B", _PROTOCOL))
                + _attr(_ATTR_SETNAME, set_name.encode() + b"\0")
                + _attr(_ATTR_DATA | _NLA_F_NESTED, data))
        nfgen = struct.pack("=BBH", socket.AF_INET if e.family == 4 else socket.AF_INET6, 0, 0)
        self._seq += 1
        seq = self._seq
        msg = nfgen + body
        hdr = struct.pack("=IHHII", 16 + len(msg), (_NFNL_SUBSYS_IPSET << 8) | cmd,
                          _NLM_F_REQUEST | _NLM_F_ACK, seq, 0)
        s = self._socket()
        s.send(hdr + msg)
        while True:
            reply = s.recv(65536)
            off = 0
            while off + 16 <= len(reply):
                ln, typ, _fl, rseq, _pid = struct.unpack_from("=IHHII", reply, off)
                if typ == _NLMSG_ERROR and rseq == seq:
                    (err,) = struct.unpack_from("=i", reply, off + 16)
                    return -err
                off += max((ln + 3) & ~3, 16)


class Ipset:
    """The ban sets of one network namespace. ``run`` executes a write (or records it in
    dry-run); ``read`` executes a read. Both take an argv and optional stdin text."""

    def __init__(self, run: Callable[[Sequence[str], str | None], str],
                 read: Callable[[Sequence[str], str | None], str], *,
                 binary: str = "ipset", netlink: bool = True, dry_run: bool = False) -> None:
        self._run = run
        self._read = read
        self.binary = binary
        self.dry_run = dry_run
        self._nl = NetlinkIpset() if netlink else None

    # -- sets
    def names(self) -> list[str]:
        return self._read([self.binary, "list", "-n"], None).split()

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
        if SET4 not in have:
            self._run([self.binary, "create", SET4, "hash:ip", "family", "inet", "timeout", "0",
                       "maxelem", str(MAXELEM), "-exist"], None)
        if SET6 not in have:
            self._run([self.binary, "create", SET6, "hash:net", "family", "inet6", "timeout", "0",
                       "maxelem", str(MAXELEM), "-exist"], None)
        for name, fam in ((SETX4, "inet"), (SETX6, "inet6")):
            if name not in have:
                self._run([self.binary, "create", name, "hash:net", "family", fam, "-exist"], None)

    def set_exempt(self, nets: Iterable[str], *, replace: bool = True) -> None:
        """Replace the protected-sources sets atomically (fill a new set, ``swap``, destroy),
        or with ``replace=False`` only add to them. ``nets`` are canonical addresses or
        networks (see ``rules.exempt_entries``)."""
        by = {SETX4: [], SETX6: []}  # type: dict[str, list[str]]
        for n in nets:
            e = _entry(n)
            by[SETX4 if e.family == 4 else SETX6].append(n)
        lines = []
        if not replace:
            for name in (SETX4, SETX6):
                lines += [f"add {name} {n}\n" for n in sorted(set(by[name]))]
            if lines:
                self._run([self.binary, "-exist", "restore"], "".join(lines))
            return
        for name, fam in ((SETX4, "inet"), (SETX6, "inet6")):
            tmp = name + "-new"
            lines.append(f"create {tmp} hash:net family {fam} -exist\n")
            lines.append(f"flush {tmp}\n")
            lines += [f"add {tmp} {n}\n" for n in sorted(set(by[name]))]
            lines.append(f"swap {tmp} {name}\n")
            lines.append(f"destroy {tmp}\n")
        self._run([self.binary, "-exist", "restore"], "".join(lines))

    def exempt(self) -> list[str]:
        """The protected sources currently in the kernel."""
        out: list[str] = []
        have = self._names_or(set())
        for name in (SETX4, SETX6):
            if name in have:
                out += [l.split()[2] for l in self._read([self.binary, "save", name], None).splitlines()
                        if l.startswith(f"add {name} ")]
        return out

    def destroy(self) -> list[str]:
        """Destroy popwatch's sets; returns warnings for sets still referenced elsewhere."""
        warns: list[str] = []
        have = set(self._names_or({SET4, SET6, SETX4, SETX6}))
        for name in (SET4, SET6, SETX4, SETX6, SETX4 + "-new", SETX6 + "-new"):
            if name in have:
                try:
                    self._run([self.binary, "destroy", name], None)
                except FirewallError as e:
                    warns.append(f"ipset {name} kept: {e}")
        return warns

    # -- entries
    @staticmethod
    def add_argv(binary: str, set_name: str, entry: str, timeout: int) -> list[str]:
        return [binary, "-exist", "add", set_name, entry, "timeout", str(timeout)]

    def add(self, set_name: str, entry: str, timeout: int) -> None:
        """Add (or refresh the timeout of) one entry; ``timeout`` 0 = permanent."""
        _entry(entry)  # validates
        if self._nl is not None and not self.dry_run:
            try:
                err = self._nl.request(_CMD_ADD, set_name, entry, timeout)
            except OSError:
                self._nl.close()
                self._nl = None
            else:
                if err == 0:
                    return
                if err == errno.ENOENT:
                    raise FirewallError(f"ipset add {set_name} {entry}: the set does not exist")
                if err not in (errno.EPROTO, 4097):
                    raise FirewallError(f"ipset add {set_name} {entry}: {_strerror(err)}")
        self._run(self.add_argv(self.binary, set_name, entry, timeout), None)

    def delete(self, set_name: str, entry: str) -> None:
        """Remove one entry; no error if it is not there."""
        _entry(entry)
        if self._nl is not None and not self.dry_run:
            try:
                err = self._nl.request(_CMD_DEL, set_name, entry)
            except OSError:
                self._nl.close()
                self._nl = None
            else:
                if err in (0, 4103):  # 4103 IPSET_ERR_EXIST: not in the set
                    return
                if err not in (errno.EPROTO, 4097):
                    raise FirewallError(f"ipset del {set_name} {entry}: {_strerror(err)}")
        self._run([self.binary, "-exist", "del", set_name, entry], None)

    def restore(self, items: Iterable[tuple[str, str, int]]) -> int:
        """Bulk add ``(set, entry, timeout)`` in one ``ipset restore``; returns the count."""
        lines = []
        for set_name, entry, timeout in items:
            if set_name not in (SET4, SET6) or not _SAFE.match(entry):  # canonical entries only
                raise FirewallError(f"refusing ipset entry {entry!r}")
            lines.append(f"add {set_name} {entry} timeout {int(timeout)}\n")
        if lines:
            self._run([self.binary, "-exist", "restore"], "".join(lines))
        return len(lines)

    def entries(self) -> dict[str, int]:
        """Every entry in both sets -> seconds left (0 = permanent)."""
        out: dict[str, int] = {}
        have = set(self.names())
        for name in (SET4, SET6):
            if name not in have:
                continue
            text = self._read([self.binary, "save", name], None)
            for line in text.splitlines():
                toks = line.split()
                if len(toks) >= 3 and toks[0] == "add" and toks[1] == name:
                    left = 0
                    if "timeout" in toks:
                        try:
                            left = int(toks[toks.index("timeout") + 1])
                        except (IndexError, ValueError):
                            left = 0
                    out[toks[2]] = left
        return out

    def close(self) -> None:
        if self._nl is not None:
            self._nl.close()


def _strerror(err: int) -> str:
    if err >= _FIRST_SET_ERR:
        return _IPSET_ERRORS.get(err, f"ipset error {err}")
    try:
        return os.strerror(err)
    except ValueError:
        return f"error {err}"


def run_binary(argv: Sequence[str], stdin: str | None = None, *, timeout: float = 30.0) -> str:
    """Run one firewall binary (argument list, never a shell) and return stdout."""
    try:
        cp = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise FirewallError(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise FirewallError(f"{argv[0]} did not finish in {timeout:.0f}s") from None
    if cp.returncode != 0:
        msg = (cp.stderr or cp.stdout).strip().splitlines()
        raise FirewallError(f"{' '.join(argv[:4])}: {msg[-1] if msg else f'exit {cp.returncode}'}")
    return cp.stdout
