"""popwatch.conns without the kernel: summarising, the /proc format, and the Monitor's poll hook
(the kernel itself: tests/netns/test_conns_netns.py)."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from pathlib import Path

from popwatch.conns import PortConns, _proc_pairs, summarize
from popwatch.model import PortLimit
from popwatch.firewall.sim import SimFirewall
from popwatch.monitor import Monitor
from popwatch.parse import Parser
from popwatch.store import StateStore
from tests.helpers import Clock


def test_summarize_counts_per_watched_port_and_names_the_top_source() -> None:
    pairs = [(110, "::ffff:203.0.113.10"), (110, "203.0.113.10"), (110, "2001:db8:1::10"),
             (143, "198.51.100.20"), (8080, "203.0.113.10")]
    got = summarize(pairs, (110, 143, 22))
    assert got[110] == PortConns(110, 3, "203.0.113.10", 2, 2)   # ::ffff: is the same IPv4 source
    assert got[110].top_share == 2 / 3
    assert got[143] == PortConns(143, 1, "198.51.100.20", 1, 1)
    assert got[22] == PortConns(22, 0) and got[22].top_share == 0.0
    assert 8080 not in got
    # a tie goes to the lower address, so the panel does not flicker between equals
    tie = summarize([(22, "203.0.113.9"), (22, "198.51.100.1")], (22,))
    assert tie[22].top_ip == "198.51.100.1"


HEAD4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
HEAD6 = ("  sl  local_address                         remote_address                        st tx_queue "
         "rx_queue tr tm->when retrnsmt   uid  timeout inode\n")


def v6hex(addr: str) -> str:
    """An address as /proc/net/tcp6 prints it: four 32-bit words, each %08X of its host-order
    (little-endian here) value."""
    raw = socket.inet_pton(socket.AF_INET6, addr)
    return "".join(f"{struct.unpack('<I', raw[i:i + 4])[0]:08X}" for i in range(0, 16, 4))


def test_proc_format_ipv4_and_ipv6_established_only(tmp_path: Path) -> None:
    # 192.0.2.1:110 <- 203.0.113.10:40000 established (01); a listener (0A); a TIME_WAIT (06)
    (tmp_path / "tcp").write_text(
        HEAD4
        + "   0: 010200C0:006E 0A7100CB:9C40 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0\n"
        + "   1: 00000000:006E 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0\n"
        + "   2: 010200C0:008F 0A7100CB:9C41 06 00000000:00000000 03:000003B0 00000000     0        0 0 3 0\n")
    assert v6hex("2001:db8::10") == "B80D0120000000000000000010000000"
    # [2001:db8::1]:143 <- [2001:db8:1::10]:40002, and an IPv4-mapped peer on a dual-stack socket
    (tmp_path / "tcp6").write_text(
        HEAD6
        + f"   0: {v6hex('2001:db8::1')}:008F {v6hex('2001:db8:1::10')}:9C42 01 0:0 0:0 0 0 0 3 1 0\n"
        + f"   1: {v6hex('::ffff:192.0.2.1')}:006E {v6hex('::ffff:203.0.113.10')}:9C43 01 0:0 0:0 0 0 0 4 1 0\n"
        + f"   2: {v6hex('2001:db8::1')}:006E {v6hex('2001:db8:2::11')}:9C44 0A 0:0 0:0 0 0 0 5 1 0\n")
    pairs = _proc_pairs(str(tmp_path))
    assert sorted(pairs) == [(110, "203.0.113.10"), (110, "::ffff:203.0.113.10"), (143, "2001:db8:1::10")]
    got = summarize(pairs, (110, 143))
    assert got[110] == PortConns(110, 2, "203.0.113.10", 2, 1)
    assert got[143] == PortConns(143, 1, "2001:db8:1::10", 1, 1)
    assert _proc_pairs(str(tmp_path / "missing")) == []


def _monitor(conns) -> Monitor:
    clock = Clock()
    store = StateStore(clock=clock)
    mon = Monitor(store=store, parser=Parser(now=clock), firewall=SimFirewall(clock=clock), poll_interval=0.01,
                  conns=conns)
    mon.start_firewall([PortLimit(110, "count"), PortLimit(22, "count")])
    return mon


async def _poll_until(mon: Monitor, cond) -> None:
    task = asyncio.create_task(mon._poll())
    try:
        deadline = time.monotonic() + 10
        while not cond() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert cond()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        mon.close()


async def test_the_poll_reads_the_socket_table_off_the_loop_into_the_store() -> None:
    import threading

    seen: list[tuple[tuple[int, ...], str]] = []

    def conns(ports):
        seen.append((tuple(ports), threading.current_thread().name))
        return {22: PortConns(22, 3, "203.0.113.5", 3, 1), 110: PortConns(110, 0)}

    mon = _monitor(conns)
    await _poll_until(mon, lambda: 22 in mon.store.conns)
    assert sorted(seen[0][0]) == [22, 110]
    assert seen[0][1] != threading.main_thread().name  # not on the UI/event loop thread
    snap = mon.store.snapshot()
    assert {p.port: p.conns for p in snap.ports}[22] == PortConns(22, 3, "203.0.113.5", 3, 1)


async def test_a_failing_socket_table_is_noted_once_and_no_longer_asked() -> None:
    calls = []

    def conns(ports):
        calls.append(1)
        raise PermissionError("sock_diag: operation not permitted")

    mon = _monitor(conns)
    polls: list[int] = []
    counters = mon.firewall.counters

    def counting():
        polls.append(1)
        return counters()

    mon.firewall.counters = counting  # type: ignore[method-assign]
    failed_at: list[int] = []

    def three_polls_after_the_failure() -> bool:
        if mon.conns is None and not failed_at:
            failed_at.append(len(polls))
        return bool(failed_at) and len(polls) >= failed_at[0] + 3

    await _poll_until(mon, three_polls_after_the_failure)
    assert len(calls) == 1
    assert any("socket table" in n and "not permitted" in n for n in mon.store.notes)
