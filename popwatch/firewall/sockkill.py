"""Close a banned address's open TCP connections: ``ss -K dst ADDR`` done in process.

A ban drops the attacker's packets from then on, but a POP3/IMAP/SSH session that was open
before the ban stays open in the daemon until its idle timeout (hydra keeps its connections
open and pipelines guesses over them). This module dumps the TCP sockets of the current network
namespace over ``NETLINK_SOCK_DIAG`` (one ``SOCK_DIAG_BY_FAMILY`` dump per family) and asks the
kernel to abort each one whose peer is banned (``SOCK_DESTROY``, which needs
``CONFIG_INET_DIAG_DESTROY`` and CAP_NET_ADMIN). The kernel sends the peer a reset and the
daemon sees the connection fail at once, so it logs its summary and forgets the session.

Best effort: any error (old kernel, no rights) ends with the count closed so far.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Iterable

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21
_REQUEST, _ACK, _DUMP = 0x1, 0x4, 0x300
#: TCP states worth closing: ESTABLISHED, SYN_RECV, CLOSE_WAIT (not LISTEN/TIME_WAIT)
_STATES = (1 << 1) | (1 << 3) | (1 << 8)
_ID = struct.Struct("!HH16s16s")       # sport, dport, src, dst (network order)
_REQ = struct.Struct("=BBBxI")          # family, protocol, ext, pad, states
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_NL = struct.Struct("=IHHII")


_Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def _targets(ips: Iterable[str]) -> tuple[dict[str, str], list[tuple[_Net, str]]]:
    exact: dict[str, str] = {}
    nets: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
    for ip in ips:
        try:
            n = ipaddress.ip_network(str(ip).strip(), strict=False)
        except ValueError:
            continue
        if n.num_addresses == 1:
            exact[str(n.network_address)] = str(ip)
        else:
            nets.append((n, str(ip)))
    return exact, nets


def _peer(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    a = ipaddress.IPv6Address(raw)
    return str(a.ipv4_mapped) if a.ipv4_mapped is not None else str(a)


def _owner(peer: str, exact: dict[str, str],
           nets: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]]) -> str | None:
    hit = exact.get(peer)
    if hit is None and nets:
        addr = ipaddress.ip_address(peer)
        hit = next((t for n, t in nets if addr.version == n.version and addr in n), None)
    return hit


def close_tcp(ips: Iterable[str], *, timeout: float = 2.0) -> dict[str, int]:
    """Abort every TCP connection whose peer is one of ``ips`` (addresses or networks) in this
    network namespace, with one socket dump per family for all of them. Returns, for each of
    ``ips`` that had any, how many connections the kernel closed."""
    exact, nets = _targets(ips)
    closed: dict[str, int] = {}
    if not exact and not nets:
        return closed
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    except OSError:
        return closed
    try:
        s.settimeout(timeout)
        seq = 0
        for fam in (socket.AF_INET, socket.AF_INET6):
            seq += 1
            victims = []
            for msg in _dump(s, fam, seq):
                owner = _owner(_peer(fam, msg[1][3]), exact, nets)
                if owner is not None:
                    victims.append((owner, msg))
            for owner, msg in victims:
                seq += 1
                if _destroy(s, fam, seq, msg) == 0:
                    closed[owner] = closed.get(owner, 0) + 1
    except OSError:
        pass
    finally:
        s.close()
    return closed


def _dump(s: socket.socket, family: int, seq: int) -> list[tuple[bytes, tuple[int, int, bytes, bytes]]]:
    """(raw sockid incl. interface and cookie, (sport, dport, src, dst)) of each socket."""
    body = _REQ.pack(family, socket.IPPROTO_TCP, 0, _STATES) + b"\0" * 48
    s.send(_NL.pack(_NL.size + len(body), SOCK_DIAG_BY_FAMILY, _REQUEST | _DUMP, seq, 0) + body)
    out: list[tuple[bytes, tuple[int, int, bytes, bytes]]] = []
    while True:
        buf = s.recv(1 << 17)
        off = 0
        while off + _NL.size <= len(buf):
            ln, typ, _fl, rseq, _pid = _NL.unpack_from(buf, off)
            if ln < _NL.size:
                return out
            if rseq == seq:
                if typ == 3:  # NLMSG_DONE
                    return out
                if typ == 2:  # NLMSG_ERROR
                    (err,) = struct.unpack_from("=i", buf, off + 16)
                    if err:
                        raise OSError(-err, "sock_diag dump failed")
                elif typ == SOCK_DIAG_BY_FAMILY:
                    rid = buf[off + 20:off + 68]  # inet_diag_msg: 4 bytes, then the 48-byte sockid
                    out.append((rid, _ID.unpack_from(rid, 0)))
            off += (ln + 3) & ~3


def _destroy(s: socket.socket, family: int, seq: int, victim: tuple[bytes, tuple[int, int, bytes, bytes]]) -> int:
    body = _REQ.pack(family, socket.IPPROTO_TCP, 0, 0xFFFFFFFF) + victim[0]
    s.send(_NL.pack(_NL.size + len(body), SOCK_DESTROY, _REQUEST | _ACK, seq, 0) + body)
    while True:
        buf = s.recv(65536)
        off = 0
        while off + _NL.size <= len(buf):
            ln, typ, _fl, rseq, _pid = _NL.unpack_from(buf, off)
            if ln < _NL.size:
                return errno.EIO
            if rseq == seq and typ == 2:
                (err,) = struct.unpack_from("=i", buf, off + 16)
                return -err
            off += (ln + 3) & ~3
