"""The file follower: start positions, partial and long lines, backfill, rotation, waiting."""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable

import pytest

from popwatch.model import RawLine
from tests.conftest import need
from popwatch.sources import _inotify
from popwatch.sources.tail import (
    FileSource,
    GlobSource,
    _LineSplitter,
    make_file_sources,
    sniff_timestamp,
)

SSH = "2026-11-28T05:00:21.664766+00:00 mx sshd[23619]: Failed password for invalid user admin{} from 203.0.113.12 port 46396 ssh2"


class Tap:
    """Reads batches from a source; a read that timed out stays pending for the next call
    (cancelling it would end the generator). Between calls that returned, the source is
    suspended, so file operations done without awaiting happen before it looks again."""

    def __init__(self, src: object) -> None:
        self.src = src
        self.it: AsyncIterator[list[RawLine]] = src.batches().__aiter__()  # type: ignore[attr-defined]
        self.task: asyncio.Future[list[RawLine]] | None = None

    async def get(self, timeout: float) -> list[RawLine] | None:
        if self.task is None:
            self.task = asyncio.ensure_future(self.it.__anext__())
        done, _ = await asyncio.wait({self.task}, timeout=timeout)
        if not done:
            return None
        task, self.task = self.task, None
        try:
            return task.result()
        except StopAsyncIteration:
            return None

    async def close(self) -> None:
        await self.src.aclose()  # type: ignore[attr-defined]
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, 5)
            except (StopAsyncIteration, asyncio.TimeoutError):
                pass
        await self.it.aclose()  # type: ignore[attr-defined]


@pytest.fixture
async def sources() -> AsyncIterator[Callable[[object], tuple[object, Tap]]]:
    """Make sources with their taps; always closed afterwards, even when a test fails."""
    made: list[Tap] = []

    def make(src: object) -> tuple[object, Tap]:
        tap = Tap(src)
        made.append(tap)
        return src, tap

    try:
        yield make
    finally:
        for tap in made:
            await tap.close()


async def take(tap: Tap, n: int, timeout: float = 10.0) -> list[RawLine]:
    """At least ``n`` lines, or whatever came within ``timeout``."""
    got: list[RawLine] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(got) < n:
        left = deadline - loop.time()
        if left <= 0:
            break
        batch = await tap.get(left)
        if batch is None:
            break
        got += batch
    return got


async def nothing_more(tap: Tap, wait: float = 0.3) -> list[RawLine]:
    """Lines that arrive within ``wait`` (expected: none)."""
    return await take(tap, 1, wait)


def texts(lines: list[RawLine]) -> list[str]:
    return [ln.text for ln in lines]


def write(path: os.PathLike[str] | str, data: str, mode: str = "a") -> None:
    with open(path, mode, encoding="utf-8") as f:
        f.write(data)


# --------------------------------------------------------------------------- pure parts

def test_splitter_joins_partial_lines_byte_by_byte() -> None:
    sp = _LineSplitter(cap=100)
    out: list[tuple[int | None, str]] = []
    for b in b"first line\r\nsecond\nthi":
        sp.feed(bytes([b]), out)
    assert out == [(1, "first line"), (2, "second")]
    sp.feed(b"rd\n", out)
    assert out[-1] == (3, "third")


def test_splitter_caps_long_lines_without_growing() -> None:
    sp = _LineSplitter(cap=50)
    out: list[tuple[int | None, str]] = []
    sp.feed(b"x" * 30, out)
    for _ in range(1000):  # 1 MB of one line, in pieces
        sp.feed(b"y" * 1000, out)
        assert len(sp.partial) <= 50
    sp.feed(b"tail\nnext\n", out)
    (n1, t1), (n2, t2) = out
    assert (n1, n2, t2) == (1, 2, "next")
    assert t1 == "x" * 30 + "y" * 20 + f"…[+{1000 * 1000 + 4 - 20}]"
    # a long line inside one chunk is cut too
    sp.feed(b"z" * 120 + b"\n", out)
    assert out[-1] == (3, "z" * 50 + "…[+70]")


def test_splitter_invalid_utf8_is_replaced() -> None:
    sp = _LineSplitter(cap=100)
    out: list[tuple[int | None, str]] = []
    sp.feed(b"user \xff\xfe\n", out)
    assert out == [(1, "user \ufffd\ufffd")]


def test_sniff_timestamp_formats() -> None:
    assert sniff_timestamp("2026-11-28T05:00:21.5+00:00 host x") == pytest.approx(1795842021.5)
    assert sniff_timestamp("2026-11-28T07:00:21+02:00 host x") == pytest.approx(1795842021.0)
    assert sniff_timestamp("2026-11-28T05:00:21Z host x") == pytest.approx(1795842021.0)
    local = time.mktime((2026, 11, 28, 5, 19, 9, 0, 0, -1))
    assert sniff_timestamp("2026-11-28 05:19:09 pop3-login: Info: x") == pytest.approx(local)
    now = time.mktime((2026, 12, 1, 0, 0, 0, 0, 0, -1))
    assert sniff_timestamp("Nov 28 05:19:09 mx sshd[1]: x", now=now) == pytest.approx(local)
    # a December line read in January belongs to last year
    jan = time.mktime((2027, 1, 2, 0, 0, 0, 0, 0, -1))
    dec = sniff_timestamp("Dec 31 23:00:00 mx sshd[1]: x", now=jan)
    assert dec is not None and time.localtime(dec).tm_year == 2026
    assert sniff_timestamp("Failed password for root") is None
    assert sniff_timestamp("Foo 28 05:19:09 x") is None


# --------------------------------------------------------------------------- start positions

async def test_starts_at_end_and_completes_a_partial_last_line(tmp_path, sources) -> None:
    p = tmp_path / "auth.log"
    write(p, "one\ntwo\npart", "w")
    src, it = sources(FileSource(p))
    assert await nothing_more(it) == []
    assert src.health().state == "following"
    write(p, "ial\nthree\n")
    got = await take(it, 2)
    assert [(ln.text, ln.lineno, ln.source) for ln in got] == [
        ("partial", 3, str(p)), ("three", 4, str(p))]
    assert src.health().lines == 2


async def test_from_start_reads_everything(tmp_path, sources) -> None:
    p = tmp_path / "auth.log"
    write(p, "".join(SSH.format(i) + "\n" for i in range(5000)), "w")
    src, it = sources(FileSource(p, from_start=True))
    got = await take(it, 5000)
    assert texts(got) == [SSH.format(i) for i in range(5000)]
    assert [ln.lineno for ln in got] == list(range(1, 5001))
    assert await nothing_more(it) == []


async def test_backfill_lines_reaches_into_rotated_and_gz_files(tmp_path, sources) -> None:
    p = tmp_path / "auth.log"
    with gzip.open(f"{p}.2.gz", "wt") as f:
        f.write("".join(f"g{i}\n" for i in range(1, 6)))
    write(f"{p}.1", "r1\nr2\nr3\n", "w")
    os.utime(f"{p}.2.gz", (time.time() - 7200, time.time() - 7200))
    os.utime(f"{p}.1", (time.time() - 3600, time.time() - 3600))
    write(p, "c1\nc2\n", "w")
    src, it = sources(FileSource(p, backfill_lines=7))
    got = await take(it, 7)
    assert [(ln.text, ln.lineno, os.path.basename(ln.source)) for ln in got] == [
        ("g4", 4, "auth.log.2.gz"), ("g5", 5, "auth.log.2.gz"),
        ("r1", 1, "auth.log.1"), ("r2", 2, "auth.log.1"), ("r3", 3, "auth.log.1"),
        ("c1", 1, "auth.log"), ("c2", 2, "auth.log"),
    ]
    write(p, "c3\n")
    assert [(ln.text, ln.lineno) for ln in await take(it, 1)] == [("c3", 3)]


async def test_backfill_lines_from_a_big_current_file(tmp_path, sources) -> None:
    p = tmp_path / "auth.log"
    write(p, "".join(SSH.format(i) + "\n" for i in range(20000)), "w")
    write(f"{p}.1", "never\n", "w")
    src, it = sources(FileSource(p, backfill_lines=1500))
    got = await take(it, 1500)
    assert texts(got) == [SSH.format(i) for i in range(18500, 20000)]
    assert [ln.lineno for ln in got] == list(range(18501, 20001))
    assert await nothing_more(it) == []


async def test_backfill_seconds_uses_the_line_timestamps(tmp_path, sources) -> None:
    p = tmp_path / "auth.log"
    now = time.time()

    def stamp(ago: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now - ago))

    write(f"{p}.1", f"{stamp(900)} old\n{stamp(500)} rotated-recent\n", "w")
    os.utime(f"{p}.1", (now - 400, now - 400))
    write(p, f"{stamp(300)} a\ncontinuation without stamp\n{stamp(10)} b\n", "w")
    src, it = sources(FileSource(p, backfill_seconds=600))
    got = await take(it, 4)
    assert [t.split(" ", 1)[1] if t[0].isdigit() else t for t in texts(got)] == [
        "rotated-recent", "a", "continuation without stamp", "b"]
    assert [os.path.basename(ln.source) for ln in got] == ["auth.log.1"] + ["auth.log"] * 3
    assert await nothing_more(it) == []


# --------------------------------------------------------------------------- appear, vanish, rotate

async def test_file_that_appears_late_is_read_from_its_start(tmp_path, sources) -> None:
    p = tmp_path / "sub" / "mail.log"
    src, it = sources(FileSource(p))
    assert await nothing_more(it, 0.2) == []
    h = src.health()
    assert (h.state, h.name) == ("waiting", str(p))
    p.parent.mkdir()  # the directory appears too: covered by the poll
    write(p, "first\nsecond\n", "w")
    got = await take(it, 2, timeout=10)
    assert [(ln.text, ln.lineno) for ln in got] == [("first", 1), ("second", 2)]
    assert src.health().state == "following"


async def test_delete_then_recreate_loses_nothing(tmp_path, sources) -> None:
    p = tmp_path / "auth.log"
    write(p, "", "w")
    src, it = sources(FileSource(p, rotate_grace=0.5))
    await nothing_more(it, 0.1)
    old = open(p, "a", encoding="utf-8")  # a daemon holding the file open
    try:
        old.write("a1\n")
        old.flush()
        os.unlink(p)
        old.write("a2\n")  # still written to the deleted file: we hold it open too
        old.flush()
        got = await take(it, 2)
        assert texts(got) == ["a1", "a2"]
        await asyncio.sleep(0.05)
        assert src.health().state == "waiting"
    finally:
        old.close()
    write(p, "b1\n", "w")
    got = await take(it, 1)
    assert [(ln.text, ln.lineno) for ln in got] == [("b1", 1)]
    assert src.health().state == "following"


async def test_rename_rotation_drains_the_old_file_then_reads_the_new(tmp_path, sources) -> None:
    p = tmp_path / "auth.log"
    write(p, "x\n", "w")
    src, it = sources(FileSource(p, from_start=True))
    assert texts(await take(it, 1)) == ["x"]
    daemon = open(p, "a", encoding="utf-8")
    try:
        daemon.write("before\n")
        daemon.flush()
        os.rename(p, f"{p}.1")
        write(p, "new1\n", "w")
        daemon.write("after rename, before HUP\n")  # rsyslog writes here until it reopens
        daemon.flush()
        got = await take(it, 3)
    finally:
        daemon.close()
    assert [(ln.text, ln.lineno) for ln in got] == [
        ("before", 2), ("after rename, before HUP", 3), ("new1", 1)]
    assert "1 rotation" in src.health().detail


async def test_copytruncate_salvages_unread_lines_from_the_copy(tmp_path, sources) -> None:
    p = tmp_path / "mail.log"
    write(p, "a\n", "w")
    src, it = sources(FileSource(p, from_start=True))
    assert texts(await take(it, 1)) == ["a"]
    # the source is suspended between reads: these happen before it looks again
    write(p, "b\nc-partial-")
    write(p, "rest\n")
    shutil.copyfile(p, f"{p}.1")
    with open(p, "r+b") as f:
        f.truncate(0)
    write(p, "d\n")
    got = await take(it, 3)
    assert [(ln.text, ln.lineno) for ln in got] == [("b", 2), ("c-partial-rest", 3), ("d", 1)]
    assert src.followers[0].truncations == 1


async def test_truncated_and_regrown_past_our_offset_is_noticed(tmp_path, sources) -> None:
    p = tmp_path / "mail.log"
    write(p, "short\n", "w")
    src, it = sources(FileSource(p, from_start=True))
    assert texts(await take(it, 1)) == ["short"]
    write(p, "a much longer first line after truncation\nsecond\n", "w")  # O_TRUNC + regrow
    got = await take(it, 2)
    assert [(ln.text, ln.lineno) for ln in got] == [
        ("a much longer first line after truncation", 1), ("second", 2)]


async def test_polling_fallback_follows_and_rotates(tmp_path, sources) -> None:
    p = tmp_path / "auth.log"
    write(p, "", "w")
    src, it = sources(FileSource(p, use_inotify=False))
    await nothing_more(it, 0.05)
    write(p, "one\n")
    assert texts(await take(it, 1)) == ["one"]
    os.rename(p, f"{p}.1")
    write(p, "two\n", "w")
    assert texts(await take(it, 1)) == ["two"]
    assert src._ino is None


async def test_aclose_releases_descriptors(tmp_path) -> None:
    p = tmp_path / "auth.log"
    write(p, "x\n", "w")
    before = len(os.listdir("/proc/self/fd"))
    src = FileSource(p, from_start=True)
    tap = Tap(src)
    try:
        assert texts(await take(tap, 1)) == ["x"]
        assert len(os.listdir("/proc/self/fd")) > before
    finally:
        await tap.close()
    assert len(os.listdir("/proc/self/fd")) == before
    assert src.health().state == "stopped"


# --------------------------------------------------------------------------- several files

async def test_glob_follows_matches_and_new_files_but_not_rotated_copies(tmp_path, sources) -> None:
    write(tmp_path / "a.log", "old-a\n", "w")
    write(tmp_path / "b.log", "old-b\n", "w")
    write(tmp_path / "a.log.1", "rotated\n", "w")
    with gzip.open(tmp_path / "c.log.gz", "wt") as f:
        f.write("gz\n")
    src, it = sources(GlobSource(str(tmp_path / "*.log*")))
    assert await nothing_more(it, 0.2) == []
    write(tmp_path / "a.log", "new-a\n")
    write(tmp_path / "c.log", "c1\n", "w")  # appears later: read from its start
    got = await take(it, 2)
    assert sorted((os.path.basename(ln.source), ln.text, ln.lineno) for ln in got) == [
        ("a.log", "new-a", 2), ("c.log", "c1", 1)]
    os.rename(tmp_path / "b.log", tmp_path / "b.log.1")
    write(tmp_path / "b.log", "b-new\n", "w")
    got = await take(it, 1)
    assert [(os.path.basename(ln.source), ln.text) for ln in got] == [("b.log", "b-new")]
    assert await nothing_more(it, 0.3) == []
    h = src.health()
    assert (h.state, h.detail) == ("following", "3 files")


def test_make_file_sources_picks_the_kind() -> None:
    got = make_file_sources(["/var/log/auth.log", "/var/log/mail*.log"])
    assert [type(s).__name__ for s in got] == ["FileSource", "GlobSource"]
    assert [s.name for s in got] == ["/var/log/auth.log", "/var/log/mail*.log"]


def test_inotify_binding_reports_events(tmp_path) -> None:
    need(_inotify.available(), "no inotify on this system")
    ino = _inotify.Inotify()
    try:
        wd = ino.add_watch(str(tmp_path), _inotify.IN_CREATE)
        assert ino.read() == []
        (tmp_path / "f").write_text("x")
        evs = ino.read()
        assert [(e.wd, e.name) for e in evs] == [(wd, "f")]
        assert evs[0].mask & _inotify.IN_CREATE
    finally:
        ino.close()


async def test_a_fifo_is_an_error_not_a_hang(tmp_path, sources) -> None:
    p = tmp_path / "pipe.log"
    os.mkfifo(p)
    src, tap = sources(FileSource(p))
    assert await nothing_more(tap, 0.3) == []
    h = src.health()
    assert (h.state, h.detail) == ("error", "not a regular file")


async def test_copytruncate_salvage_from_an_already_gzipped_copy(tmp_path, sources) -> None:
    p = tmp_path / "mail.log"
    write(p, "a\n", "w")
    src, tap = sources(FileSource(p, from_start=True))
    assert texts(await take(tap, 1)) == ["a"]
    write(p, "b\n")
    with open(p, "rb") as f, gzip.open(f"{p}.1.gz", "wb") as g:
        g.write(f.read())
    os.truncate(p, 0)
    write(p, "c\n")
    write(tmp_path / "mail.log.swp", "not a rotated copy\n", "w")
    assert texts(await take(tap, 2)) == ["b", "c"]


def test_rotated_siblings_names_and_order(tmp_path) -> None:
    from popwatch.sources.tail import rotated_siblings
    now = time.time()
    for i, name in enumerate(["auth.log.1", "auth.log.2.gz", "auth.log-20261127", "auth.log.swp",
                              "auth.log.3.xz", "auth.logger", "auth.log-20261120.gz"]):
        write(tmp_path / name, "", "w")
        os.utime(tmp_path / name, (now - i * 100, now - i * 100))
    got = [os.path.basename(p) for p in rotated_siblings(str(tmp_path / "auth.log"))]
    assert got == ["auth.log.1", "auth.log.2.gz", "auth.log-20261127", "auth.log-20261120.gz"]


async def test_glob_renamed_match_is_not_read_again_and_gone_matches_are_dropped(tmp_path, sources) -> None:
    write(tmp_path / "a.log", "a1\n", "w")
    write(tmp_path / "b.log", "b1\n", "w")
    src, tap = sources(GlobSource(str(tmp_path / "*.log*"), rotate_grace=0.2))
    assert await nothing_more(tap, 0.2) == []
    os.rename(tmp_path / "a.log", tmp_path / "a.log.old")  # still matches the glob
    write(tmp_path / "a.log.old", "a2\n")
    os.unlink(tmp_path / "b.log")
    got = await take(tap, 1)
    assert [(os.path.basename(ln.source), ln.text) for ln in got] == [("a.log", "a2")]
    extra: list[RawLine] = []
    for _ in range(50):  # the old descriptor closes after the grace, then a rescan drops both
        if not src.followers:
            break
        src._dir_dirty = True  # rescan now rather than at the 2 s safety poll
        src._wake.set()
        extra += await nothing_more(tap, 0.1)
    assert src.followers == []
    src._dir_dirty = True
    extra += await nothing_more(tap, 0.5)
    assert extra == []  # a.log.old is not read again from its start
    assert src.health().state == "waiting"


def test_backfill_kwargs() -> None:
    from popwatch.sources.tail import backfill_kwargs
    assert backfill_kwargs("500") == {"backfill_lines": 500}
    assert backfill_kwargs(20) == {"backfill_lines": 20}
    assert backfill_kwargs("10m") == {"backfill_seconds": 600.0}
    assert backfill_kwargs("1.5h") == {"backfill_seconds": 5400.0}
    assert backfill_kwargs(None) == {} and backfill_kwargs("0") == {"backfill_lines": 0}
    for bad in ("ten", "10x", "-5", "m"):
        with pytest.raises(ValueError):
            backfill_kwargs(bad)
