"""The journald source, on real journal files written by systemd-journal-remote.

There is no running journald here: entries are crafted in journal export format, written into
a journal file by ``systemd-journal-remote`` (systemd's own writer), and read back by the real
``journalctl --file/--directory -f -o json`` that the source runs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import struct
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from popwatch.model import RawLine
from popwatch.sources.journal import JournalSource, field_text, match_args, parse_entry
from tests.conftest import need

JOURNAL_REMOTE = next((p for p in ("/lib/systemd/systemd-journal-remote",
                                   "/usr/lib/systemd/systemd-journal-remote")
                       if os.path.exists(p)), None)


# --------------------------------------------------------------------------- pure parts

def test_match_args_or_identifiers_and_units() -> None:
    assert match_args(["sshd", "postfix/smtpd", "dovecot.service", "_COMM=sshd"]) == [
        "SYSLOG_IDENTIFIER=sshd", "+", "_SYSTEMD_UNIT=sshd.service", "+",
        "SYSLOG_IDENTIFIER=postfix/smtpd", "+", "_SYSTEMD_UNIT=dovecot.service", "+",
        "_COMM=sshd"]
    assert match_args([]) == []
    assert match_args(["sshd", "sshd"]) == ["SYSLOG_IDENTIFIER=sshd", "+", "_SYSTEMD_UNIT=sshd.service"]


def test_field_text_handles_binary_repeated_and_null() -> None:
    assert field_text("x") == "x"
    assert field_text([104, 105, 27, 255]) == "hi\x1b\ufffd"
    assert field_text(["first", "second"]) == "first"
    assert field_text([[104, 105], "x"]) == "hi"
    assert field_text(None) is None
    assert field_text(12) == "12"


def test_parse_entry_fields_and_cap() -> None:
    rl = parse_entry({"MESSAGE": "Failed password", "SYSLOG_IDENTIFIER": "sshd", "_PID": "7",
                      "__REALTIME_TIMESTAMP": "1795849876762337", "_HOSTNAME": "mx1",
                      "__CURSOR": "s=1", "PRIORITY": "6"})
    assert rl == RawLine("Failed password", "journal", None, {
        "SYSLOG_IDENTIFIER": "sshd", "_PID": "7", "__REALTIME_TIMESTAMP": "1795849876762337",
        "_HOSTNAME": "mx1"})
    assert parse_entry({"SYSLOG_IDENTIFIER": "sshd"}) is None
    long = parse_entry({"MESSAGE": "y" * 100}, line_cap=10)
    assert long is not None and long.text == "y" * 10 + "…[+90]"


# --------------------------------------------------------------------------- real journal files

class Journal:
    """Writes entries into a real journal file with systemd-journal-remote."""

    BOOT = "0123456789abcdef0123456789abcdef"

    def __init__(self, path: Path) -> None:
        need(JOURNAL_REMOTE is not None, "systemd-journal-remote is not installed "
             "(apt package systemd-journal-remote)")
        need(shutil.which("journalctl") is not None, "journalctl is not installed")
        self.path = path
        self.seq = 0
        self.t0 = int(time.time() * 1e6)

    def entry(self, ident: str | None, message: str | bytes, unit: str | None = None) -> bytes:
        self.seq += 1
        fields: list[tuple[str, str | bytes]] = [
            ("__REALTIME_TIMESTAMP", str(self.t0 + self.seq)),
            ("__MONOTONIC_TIMESTAMP", str(1_000_000 + self.seq)),
            ("_BOOT_ID", self.BOOT), ("_HOSTNAME", "mx1"), ("_PID", str(1000 + self.seq)),
            ("PRIORITY", "6"), ("MESSAGE", message)]
        if ident is not None:
            fields.append(("SYSLOG_IDENTIFIER", ident))
        if unit is not None:
            fields.append(("_SYSTEMD_UNIT", unit))
        out = b""
        for k, v in fields:
            if isinstance(v, bytes):  # binary-safe form of the export format
                out += k.encode() + b"\n" + struct.pack("<Q", len(v)) + v + b"\n"
            else:
                out += f"{k}={v}\n".encode()
        return out + b"\n"

    def write(self, *entries: bytes) -> None:
        assert JOURNAL_REMOTE is not None
        r = subprocess.run([JOURNAL_REMOTE, f"--output={self.path}", "-"], input=b"".join(entries),
                           capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr.decode()

    def sshd(self, n: int) -> bytes:
        return self.entry("sshd", f"Failed password for invalid user u{n} from 203.0.113.12 port {n} ssh2")


class Tap:
    """Reads a source's batches; a read that timed out stays pending for the next call."""

    def __init__(self, src: JournalSource) -> None:
        self.src = src
        self.it: AsyncIterator[list[RawLine]] = src.batches().__aiter__()
        self.task: asyncio.Future[list[RawLine]] | None = None

    async def take(self, n: int, timeout: float = 15.0) -> list[RawLine]:
        got: list[RawLine] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(got) < n and (left := deadline - loop.time()) > 0:
            if self.task is None:
                self.task = asyncio.ensure_future(self.it.__anext__())
            done, _ = await asyncio.wait({self.task}, timeout=left)
            if not done:
                break
            task, self.task = self.task, None
            try:
                got += task.result()
            except StopAsyncIteration:
                break
        return got

    async def close(self) -> None:
        await self.src.aclose()
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, 10)
            except (StopAsyncIteration, asyncio.TimeoutError):
                pass
        await self.it.aclose()
        assert self.src._proc is None


@pytest.fixture
async def taps() -> AsyncIterator[list[Tap]]:
    made: list[Tap] = []
    try:
        yield made
    finally:
        for t in made:
            await t.close()


def tap(taps: list[Tap], src: JournalSource) -> Tap:
    t = Tap(src)
    taps.append(t)
    return t


async def until(cond, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def msgs(lines: list[RawLine]) -> list[str]:
    return [ln.text for ln in lines]


async def test_reads_matching_entries_with_fields(tmp_path, taps) -> None:
    j = Journal(tmp_path / "remote.journal")
    j.write(
        j.sshd(1),
        j.entry("dovecot", b"pop3-login: user=<\x1b[31mroot>"),   # binary MESSAGE
        j.entry("cron", "noise"),
        j.entry("postfix/smtpd", "warning: unknown[203.0.113.9]: SASL LOGIN authentication failed"),
        j.entry(None, "via the unit only", unit="ssh.service"),
        j.entry("postfix/qmgr", "noise too"),
    )
    t = tap(taps, JournalSource(files=[j.path], from_start=True))
    got = await t.take(4)
    assert msgs(got) == [
        "Failed password for invalid user u1 from 203.0.113.12 port 1 ssh2",
        "pop3-login: user=<\x1b[31mroot>",
        "warning: unknown[203.0.113.9]: SASL LOGIN authentication failed",
        "via the unit only",
    ]
    assert got[0].source == "journal" and got[0].lineno is None
    assert got[0].fields == {"SYSLOG_IDENTIFIER": "sshd", "_PID": "1001", "_HOSTNAME": "mx1",
                             "__REALTIME_TIMESTAMP": str(j.t0 + 1)}
    assert got[3].fields is not None and got[3].fields["_SYSTEMD_UNIT"] == "ssh.service"
    assert await t.take(1, timeout=0.5) == []
    h = t.src.health()
    assert (h.name, h.state, h.lines) == ("journal", "journal", 4)


async def test_starts_at_the_end_and_follows_appended_entries(tmp_path, taps) -> None:
    j = Journal(tmp_path / "remote.journal")
    j.write(j.sshd(1), j.sshd(2))
    src = JournalSource(files=[j.path])
    t = tap(taps, src)
    first = asyncio.ensure_future(t.take(2))
    assert await until(lambda: src._proc is not None)  # its start position is fixed now
    j.write(j.sshd(3), j.entry("cron", "noise"))
    j.write(j.sshd(4))
    got = await first
    assert msgs(got) == [f"Failed password for invalid user u{n} from 203.0.113.12 port {n} ssh2"
                         for n in (3, 4)]


async def test_backfill_lines(tmp_path, taps) -> None:
    j = Journal(tmp_path / "remote.journal")
    j.write(*(j.sshd(n) for n in range(1, 6)))
    t = tap(taps, JournalSource(files=[j.path], backfill_lines=2))
    assert [m.split()[5] for m in msgs(await t.take(2))] == ["u4", "u5"]
    assert await t.take(1, timeout=0.5) == []


async def test_restart_after_journalctl_dies_neither_replays_nor_skips(tmp_path, taps) -> None:
    j = Journal(tmp_path / "remote.journal")
    j.write(*(j.sshd(n) for n in range(1, 4)))
    src = JournalSource(files=[j.path], from_start=True, backoff=(1.0, 2.0))
    t = tap(taps, src)
    assert len(await t.take(3)) == 3
    proc = src._proc
    assert proc is not None and src.starts == 1
    nxt = asyncio.ensure_future(t.take(4))  # keep the source running
    os.kill(proc.pid, signal.SIGKILL)  # our own child
    assert await until(lambda: src.health().state == "error")
    assert "restarting" in src.health().detail
    j.write(*(j.sshd(n) for n in range(4, 8)))  # written while no journalctl runs (1 s backoff)
    got = await nxt
    assert [m.split()[5] for m in msgs(got)] == ["u4", "u5", "u6", "u7"]
    assert src.starts == 2 and src.health().state == "journal"
    j.write(j.sshd(8))
    assert [m.split()[5] for m in msgs(await t.take(1))] == ["u8"]
    assert await t.take(1, timeout=0.5) == []


async def test_cursor_file_resumes_where_the_last_run_stopped(tmp_path, taps) -> None:
    j = Journal(tmp_path / "remote.journal")
    cursor = tmp_path / "state" / "journal.cursor"
    cursor.parent.mkdir()
    j.write(j.sshd(1), j.sshd(2))
    t1 = Tap(JournalSource(files=[j.path], from_start=True, cursor_file=cursor))
    try:
        assert len(await t1.take(2)) == 2
    finally:
        await t1.close()
    saved = cursor.read_text().strip()
    assert saved.startswith("s=") and ";i=" in saved
    j.write(j.sshd(3), j.sshd(4))  # while popwatch is not running
    t2 = tap(taps, JournalSource(files=[j.path], from_start=True, cursor_file=cursor))
    got = await t2.take(2)
    assert [m.split()[5] for m in msgs(got)] == ["u3", "u4"]
    assert await t2.take(1, timeout=0.5) == []


async def test_directory_of_journal_files(tmp_path, taps) -> None:
    d = tmp_path / "remote"
    d.mkdir()
    j = Journal(d / "one.journal")
    j.write(j.sshd(1))
    t = tap(taps, JournalSource(directory=d, from_start=True))
    assert len(await t.take(1)) == 1
    j.write(j.sshd(2))
    assert [m.split()[5] for m in msgs(await t.take(1))] == ["u2"]


async def test_missing_journalctl_is_an_error_not_a_crash(taps) -> None:
    src = JournalSource(journalctl="/nonexistent/journalctl", backoff=(0.05, 0.1))
    t = tap(taps, src)
    assert await t.take(1, timeout=0.5) == []
    h = src.health()
    assert h.state == "error" and "/nonexistent/journalctl" in h.detail


async def test_failing_journalctl_shows_its_error_and_is_retried(tmp_path, taps) -> None:
    fake = tmp_path / "journalctl"
    fake.write_text("#!/bin/sh\necho 'No journal files were found.' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    src = JournalSource(journalctl=str(fake), from_start=True, backoff=(0.05, 0.2))
    t = tap(taps, src)
    assert await t.take(1, timeout=0.3) == []
    assert await until(lambda: src.starts >= 2)
    h = src.health()
    assert h.state == "error" and "No journal files were found." in h.detail


async def test_a_cursor_file_the_journal_rejects_is_dropped(tmp_path, taps) -> None:
    j = Journal(tmp_path / "remote.journal")
    j.write(j.sshd(1))
    cursor = tmp_path / "journal.cursor"
    cursor.write_text("not-a-cursor\n")
    src = JournalSource(files=[j.path], cursor_file=cursor, from_start=True, backoff=(0.05, 0.1))
    t = tap(taps, src)
    got = await t.take(1)
    assert [m.split()[5] for m in msgs(got)] == ["u1"]
    assert src.starts == 2


async def test_many_entries_while_following_arrive_once_in_order(tmp_path, taps) -> None:
    j = Journal(tmp_path / "remote.journal")
    j.write(j.entry("cron", "before"))
    src = JournalSource(files=[j.path], max_batch=500)
    t = tap(taps, src)
    pending = asyncio.ensure_future(t.take(6000, timeout=60))
    assert await until(lambda: src._proc is not None)
    for part in range(3):  # three writes of 2000 entries, noise in between
        j.write(*(j.sshd(part * 2000 + n) for n in range(2000)), j.entry("cron", "noise"))
    got = await pending
    assert [int(m.split()[5][1:]) for m in msgs(got)] == list(range(6000))
    assert src.health().lines == 6000


def test_argv_makes_journal_paths_absolute(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    src = JournalSource(["sshd"], files=["rel.journal"], directory="jdir", extra_args=["--merge"])
    assert src.argv(["--no-tail"]) == [
        "journalctl", "-o", "json", "--all", "--no-pager", "-q", "--merge",
        f"--file={tmp_path}/rel.journal", f"--directory={tmp_path}/jdir", "-f", "--no-tail",
        "SYSLOG_IDENTIFIER=sshd", "+", "_SYSTEMD_UNIT=sshd.service"]
