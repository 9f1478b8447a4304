"""Follow log files by path, like ``tail -F``, and lose nothing.

* Starts at the end (after the last complete line) unless ``from_start``; an optional bounded
  backfill (last N lines or the last N seconds, reaching into rotated and ``.gz`` files) comes
  first.
* Rename rotation: the old file is drained to its end, then the new one is read from 0. The old
  descriptor stays open for ``rotate_grace`` seconds after its last data, because a syslog daemon
  keeps writing to it until it is told to reopen.
* ``copytruncate``: a file that shrank below our offset, or whose bytes just before our offset
  changed (truncated and regrown before we looked), restarts at 0. Before that, the tail we had
  not read yet is salvaged from the rotated copy when one matches.
* Delete and recreate, a file that does not exist yet (``waiting``), permission denied
  (``denied``): reported in :meth:`health`, retried, never raised.
* Partial lines are joined; a line longer than ``line_cap`` bytes is cut and marked ``…[+N]``
  (N bytes dropped) while the rest is skipped, so memory stays bounded.

Reads go through aiofiles (one worker-thread hop per read of up to 256 KiB, so a slow or
network file system never blocks the event loop); ``fstat``/``stat`` are called directly
because they are metadata calls that return in microseconds and sit on the latency path.
Wake-ups come from inotify (``_inotify``) with a slow safety poll; without inotify the
follower polls, fast while data flows and slower when idle.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import glob as _glob
import gzip
import io
import os
import re
import stat
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable

import aiofiles

from ..model import RawLine, SourceHealth
from ..sanitize import decode
from . import _inotify as ino
from .base import Source

#: bytes per read
CHUNK = 256 * 1024
#: default cap on one line, in bytes (sanitize cuts the text further, to LINE_CAP characters)
LINE_CAP = 8192
#: lines per yielded batch (the Monitor ingests a batch, yields to the loop, repeats)
MAX_BATCH = 2000
#: files larger than this at start get no line numbers (counting would delay start-up)
COUNT_LIMIT = 1 << 30
#: backfill reads at most this many bytes per file
BACKFILL_MAX_BYTES = 64 << 20
#: at most this many rotated files are read for backfill
BACKFILL_MAX_FILES = 4
#: bytes compared just before our offset to notice a truncated-and-regrown file
FINGERPRINT = 64

_COMPRESSED = (".gz", ".xz", ".bz2", ".zst", ".lz4", ".z", ".Z")
#: names logrotate gives to rotated copies: auth.log.1, auth.log.2.gz, auth.log-20261127[.gz]
_ROTATED = re.compile(r"(\.\d+|-\d{8}(\d{2})?)(\.(gz|xz|bz2|zst|lz4|Z))?$")
#: what follows the live name in a rotated copy popwatch can read (plain or gzip)
_ROTATED_SUFFIX = re.compile(r"(\.\d+|-\d{8}(\d{2})?)(\.gz)?$")

_DIR_MASK = (
    ino.IN_CREATE | ino.IN_MOVED_TO | ino.IN_MOVED_FROM | ino.IN_DELETE | ino.IN_ATTRIB
    | ino.IN_DELETE_SELF | ino.IN_MOVE_SELF | ino.IN_ONLYDIR
)
_FILE_MASK = ino.IN_MODIFY | ino.IN_ATTRIB | ino.IN_MOVE_SELF | ino.IN_DELETE_SELF


# --------------------------------------------------------------------------- timestamps

_RFC3339 = re.compile(
    rb"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(\.\d+)?(Z|[+-]\d\d:?\d\d)?"
)
_TRAD = re.compile(rb"([A-Z][a-z]{2}) +(\d{1,2}) (\d\d):(\d\d):(\d\d)")
_MONTHS = {m.encode(): i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}


def sniff_timestamp(line: bytes | str, now: float | None = None) -> float | None:
    """Epoch seconds from a line's leading timestamp, or None.

    Knows RFC 3339 (rsyslog's default on Debian 12), ``YYYY-MM-DD HH:MM:SS`` (dovecot
    ``log_timestamp``) and the traditional ``Mmm dd HH:MM:SS`` (local time, the year that puts
    it not more than a day in the future). Only for backfill cut-offs: cheap, not a parser.
    """
    b = line.encode("utf-8", "replace") if isinstance(line, str) else line
    b = b[:40]
    m = _RFC3339.match(b)
    if m:
        y, mo, d, hh, mi, ss = (int(g) for g in m.groups()[:6])
        frac = float(m.group(7)) if m.group(7) else 0.0
        zone = m.group(8)
        try:
            if zone is None:
                return time.mktime((y, mo, d, hh, mi, ss, 0, 0, -1)) + frac
            base = calendar.timegm((y, mo, d, hh, mi, ss, 0, 0, 0)) + frac
        except (OverflowError, ValueError):
            return None
        if zone == b"Z":
            return base
        sign = -1 if zone[:1] == b"-" else 1
        z = zone[1:].replace(b":", b"")
        return base - sign * (int(z[:2]) * 3600 + int(z[2:4]) * 60)
    m = _TRAD.match(b)
    if m:
        month = _MONTHS.get(m.group(1))
        if month is None:
            return None
        now = time.time() if now is None else now
        year = time.localtime(now).tm_year
        d, hh, mi, ss = (int(g) for g in m.groups()[1:])
        try:
            ts = time.mktime((year, month, d, hh, mi, ss, 0, 0, -1))
            if ts > now + 86400:
                ts = time.mktime((year - 1, month, d, hh, mi, ss, 0, 0, -1))
        except (OverflowError, ValueError):
            return None
        return ts
    return None


# --------------------------------------------------------------------------- helpers

def is_compressed(path: str) -> bool:
    return path.endswith(_COMPRESSED)


def rotated_siblings(path: str, *, compressed: bool = True) -> list[str]:
    """Rotated copies of ``path`` (``path.1``, ``path.2.gz``, ``path-20261127``...), newest first."""
    d, base = os.path.split(path)
    try:
        names = os.listdir(d or ".")
    except OSError:
        return []
    found: list[tuple[float, str]] = []
    for n in names:
        if not n.startswith(base) or not _ROTATED_SUFFIX.match(n[len(base):]):
            continue
        p = os.path.join(d, n)
        if not compressed and is_compressed(p):
            continue
        try:
            st = os.stat(p)
        except OSError:
            continue
        if not os.path.isfile(p):
            continue
        found.append((st.st_mtime, p))
    found.sort(reverse=True)
    return [p for _, p in found]


def _strip_cr(b: bytes) -> bytes:
    return b[:-1] if b.endswith(b"\r") else b


class _LineSplitter:
    """Bytes in, complete lines out: joins partial lines and caps long ones."""

    __slots__ = ("cap", "lineno", "partial", "skipped")

    def __init__(self, cap: int, lineno: int | None = 0) -> None:
        self.cap = cap
        self.partial = bytearray()
        self.skipped = 0          # bytes dropped from the current over-long line
        self.lineno = lineno      # lines completed so far (None: unknown)

    def _text(self, raw: bytes, dropped: int) -> str:
        if len(raw) > self.cap:
            dropped += len(raw) - self.cap
            raw = raw[: self.cap]
        text = decode(_strip_cr(raw))
        if dropped:
            text = f"{text}…[+{dropped}]"
        return text

    def feed(self, data: bytes, out: list[tuple[int | None, str]]) -> None:
        parts = data.split(b"\n")
        rest = parts.pop()
        if parts:
            first = parts[0]
            if self.partial or self.skipped:
                self.partial += first
                parts[0] = bytes(self.partial)
                dropped = self.skipped
                self.partial.clear()
                self.skipped = 0
            else:
                dropped = 0
            cap = self.cap
            n = self.lineno
            for i, raw in enumerate(parts):
                if n is not None:
                    n += 1
                if i == 0 and dropped:
                    out.append((n, self._text(raw, dropped)))
                elif len(raw) > cap:
                    out.append((n, self._text(raw, 0)))
                else:
                    out.append((n, decode(_strip_cr(raw))))
            self.lineno = n
        if rest:
            if self.skipped:
                self.skipped += len(rest)
            else:
                self.partial += rest
                if len(self.partial) > self.cap:
                    self.skipped = len(self.partial) - self.cap
                    del self.partial[self.cap :]

    def flush(self, out: list[tuple[int | None, str]]) -> None:
        """The file ended without a final newline: emit what is pending as the last line."""
        if self.partial or self.skipped:
            if self.lineno is not None:
                self.lineno += 1
            out.append((self.lineno, self._text(bytes(self.partial), self.skipped)))
            self.partial.clear()
            self.skipped = 0

    def reset(self, lineno: int | None = 0) -> None:
        self.partial.clear()
        self.skipped = 0
        self.lineno = lineno


def _scan_start(path_fd: int, size: int, count_limit: int) -> tuple[int, int | None]:
    """(offset just after the last newline before ``size``, lines before it or None).

    Runs in a worker thread. Files above ``count_limit`` are not counted.
    """
    if size <= count_limit:
        count = 0
        last_nl = -1
        pos = 0
        while pos < size:
            buf = os.pread(path_fd, min(1 << 20, size - pos), pos)
            if not buf:
                break
            count += buf.count(b"\n")
            i = buf.rfind(b"\n")
            if i >= 0:
                last_nl = pos + i
            pos += len(buf)
        return last_nl + 1, count
    pos = size
    while pos > 0:
        n = min(1 << 16, pos)
        buf = os.pread(path_fd, n, pos - n)
        i = buf.rfind(b"\n")
        if i >= 0:
            return pos - n + i + 1, None
        pos -= n
    return 0, None


# --------------------------------------------------------------------------- backfill

class _Backfill:
    """Which past lines to emit on start: the last ``lines`` or those newer than ``since``."""

    def __init__(self, lines: int = 0, seconds: float = 0.0, max_bytes: int = BACKFILL_MAX_BYTES,
                 max_files: int = BACKFILL_MAX_FILES) -> None:
        self.lines = lines
        self.since = time.time() - seconds if seconds > 0 else None
        self.max_bytes = max_bytes
        self.max_files = max_files

    @property
    def wanted(self) -> bool:
        return self.lines > 0 or self.since is not None

    def _done(self, got: list[tuple[int | None, str]], oldest_ts: float | None) -> bool:
        if self.since is not None:
            return oldest_ts is not None and oldest_ts < self.since
        return len(got) >= self.lines

    def _keep(self, lines: list[tuple[int | None, str]]) -> list[tuple[int | None, str]]:
        """Trim newest-first ``lines`` to what is wanted (still newest first)."""
        if self.since is None:
            return lines[: self.lines]
        kept: list[tuple[int | None, str]] = []
        for item in lines:
            ts = sniff_timestamp(item[1])
            if ts is not None and ts < self.since:
                break
            kept.append(item)
        return kept

    def collect(self, fd: int, path: str, end: int, lines_before: int | None) -> list[RawLine]:
        """Past lines, oldest first (runs in a worker thread)."""
        newest_first: list[tuple[str, int | None, str]] = []
        got = self._backward(fd, end, lines_before)
        kept = self._keep(got)
        newest_first += [(path, n, t) for n, t in kept]
        done = len(kept) < len(got) or (self.since is None and len(kept) >= self.lines)
        if not done and end <= self.max_bytes:
            for rp in rotated_siblings(path)[: self.max_files]:
                got = self._whole(rp)
                kept = self._keep(got)
                newest_first += [(rp, n, t) for n, t in kept]
                if self.since is None:
                    if len(newest_first) >= self.lines:
                        break
                elif len(kept) < len(got):
                    break
        if self.since is None:
            newest_first = newest_first[: self.lines]
        return [RawLine(t, p, n) for p, n, t in reversed(newest_first)]

    def _backward(self, fd: int, end: int, lines_before: int | None) -> list[tuple[int | None, str]]:
        """Lines before ``end`` read backwards in chunks, newest first, until enough."""
        out: list[tuple[int | None, str]] = []
        pos = end
        tail = b""
        n = lines_before
        read = 0
        cap = LINE_CAP
        first = True
        while pos > 0 and read < self.max_bytes:
            size = min(1 << 16, pos)
            pos -= size
            buf = os.pread(fd, size, pos) + tail
            read += size
            parts = buf.split(b"\n")
            tail = parts[0] if pos > 0 else b""
            body = parts[1:] if pos > 0 else parts
            if first:  # ``end`` is just after a newline: the last part is empty
                first = False
                if body and body[-1] == b"":
                    body = body[:-1]
            oldest_ts: float | None = None
            for raw in reversed(body):
                out.append((n, decode(_strip_cr(raw[:cap]))))
                if n is not None:
                    n -= 1
                oldest_ts = sniff_timestamp(raw)
                if oldest_ts is not None and self._done(out, oldest_ts):
                    return out
            if self.since is None and len(out) >= self.lines:
                return out
            if len(tail) > cap * 4:
                tail = tail[-cap:]
        return out

    def _whole(self, path: str) -> list[tuple[int | None, str]]:
        """All lines of a rotated file (gzip-aware, bounded), newest first."""
        keep: deque[tuple[int | None, str]] = deque(
            maxlen=self.lines if self.since is None else 200_000)
        try:
            raw: io.BufferedIOBase = gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")  # noqa: SIM115 - the file stays open for the source's life
        except OSError:
            return []
        n = 0
        total = 0
        try:
            with raw:
                for line in raw:
                    n += 1
                    total += len(line)
                    keep.append((n, decode(_strip_cr(line.rstrip(b"\n")[:LINE_CAP]))))
                    if total > self.max_bytes:
                        break
        except (OSError, EOFError, gzip.BadGzipFile):
            pass
        return list(reversed(keep))


# --------------------------------------------------------------------------- one open file

class _Reader:
    """One open file: descriptor, offset, line splitter."""

    def __init__(self, path: str, fh: object, st: os.stat_result, offset: int,
                 lineno: int | None, cap: int) -> None:
        self.path = path
        self.fh = fh
        self.fd: int = fh.fileno()  # type: ignore[attr-defined]  # aiofiles handles are untyped
        self.key = (st.st_dev, st.st_ino)
        self.offset = offset
        self.split = _LineSplitter(cap, lineno)
        self.fp = b""               # the bytes just before ``offset``
        self.mtime = st.st_mtime_ns
        self.size = st.st_size
        self.deadline = 0.0         # for a retired reader: close after this (monotonic)
        self.wd: int | None = None

    async def seek(self, offset: int) -> None:
        await self.fh.seek(offset)  # type: ignore[attr-defined]  # aiofiles handles are untyped
        self.offset = offset
        self.fp = os.pread(self.fd, min(FINGERPRINT, offset), offset - min(FINGERPRINT, offset)) if offset else b""

    async def read(self, out: list[tuple[int | None, str]], budget: int) -> int:
        """Read to EOF or until ``budget`` lines; returns bytes read.

        An ``fstat`` first: when the file is no longer than our offset there is nothing to
        read, and the worker-thread hop of an empty read (most of an idle wake-up) is saved."""
        total = 0
        try:
            if os.fstat(self.fd).st_size <= self.offset:
                return 0
        except OSError:
            pass
        while len(out) < budget:
            data = await self.fh.read(CHUNK)  # type: ignore[attr-defined]  # aiofiles handles are untyped
            if not data:
                break
            self.offset += len(data)
            total += len(data)
            self.split.feed(data, out)
            if len(data) >= FINGERPRINT:
                self.fp = data[-FINGERPRINT:]
            else:
                self.fp = (self.fp + data)[-FINGERPRINT:]
            if len(data) < CHUNK:
                break
        return total

    def truncated(self) -> bool:
        """True when the file is shorter than our offset, or was truncated and regrown."""
        st = os.fstat(self.fd)
        changed = st.st_size != self.size or st.st_mtime_ns != self.mtime
        self.size, self.mtime = st.st_size, st.st_mtime_ns
        if st.st_size < self.offset:
            return True
        if changed and self.fp:
            n = len(self.fp)
            return os.pread(self.fd, n, self.offset - n) != self.fp
        return False

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.fh.close()  # type: ignore[attr-defined]  # aiofiles handles are untyped


# --------------------------------------------------------------------------- one followed path

class _Follower:
    """Follows one path through rotations; owned by a :class:`_FollowSource`."""

    def __init__(self, owner: _FollowSource, path: str, *, initial: bool) -> None:
        self.owner = owner
        self.path = path
        self.initial = initial      # existed when we started: apply from_start/backfill policy
        self.cur: _Reader | None = None
        self.retired: list[_Reader] = []
        self.state = "waiting"
        self.detail = "starting"
        self.lines = 0
        self.salvaged = 0
        self.rotations = 0
        self.truncations = 0
        self.pending: list[RawLine] = []   # backfill lines not yet handed out

    # -- opening
    async def _open(self, *, start: bool) -> bool:
        """Open ``path``. ``start``: apply the start policy, else read from 0."""
        try:
            if not stat.S_ISREG(os.stat(self.path).st_mode):  # a FIFO would block the open
                self._set("error", "not a regular file")
                return False
            fh = await aiofiles.open(self.path, "rb", buffering=0)
        except FileNotFoundError:
            self.initial = False  # it did not exist when we started: all of it will be new
            self._set("waiting", "not found; waiting for it to appear")
            return False
        except PermissionError as e:
            self._set("denied", f"permission denied ({e.strerror}); run as root or in group adm")
            return False
        except OSError as e:
            self._set("error", f"{e.strerror or e}")
            return False
        fd = fh.fileno()
        st = os.fstat(fd)
        for r in self.retired:       # renamed back to where it was: take it up again
            if r.key == (st.st_dev, st.st_ino):
                self.retired.remove(r)
                await fh.close()
                self.cur = r
                self._set("following", "")
                return True
        owner = self.owner
        lineno: int | None = 0
        offset = 0
        if start and not owner.from_start:
            offset, lineno = await asyncio.to_thread(_scan_start, fd, st.st_size, owner.count_limit)
            if owner.backfill.wanted:
                self.pending = await asyncio.to_thread(
                    owner.backfill.collect, fd, self.path, offset, lineno)
        reader = _Reader(self.path, fh, st, 0, lineno, owner.line_cap)
        if offset:
            await reader.seek(offset)
        self.cur = reader
        reader.wd = owner._watch_file(reader)
        self._set("following", "")
        return True

    def _set(self, state: str, detail: str) -> None:
        self.state, self.detail = state, detail

    def _emit(self, path: str, got: list[tuple[int | None, str]], out: list[RawLine]) -> None:
        out.extend(RawLine(t, path, n) for n, t in got)
        self.lines += len(got)

    async def _retire(self, r: _Reader) -> None:
        r.deadline = time.monotonic() + self.owner.rotate_grace
        self.retired.append(r)

    async def _close_reader(self, r: _Reader, out: list[RawLine]) -> None:
        got: list[tuple[int | None, str]] = []
        await r.read(got, 1 << 62)
        r.split.flush(got)
        self._emit(r.path, got, out)
        self.owner._unwatch(r)
        await r.close()

    # -- one round
    async def pump(self, out: list[RawLine], budget: int) -> bool:
        """Read what is new into ``out``; True when more is pending (budget ran out)."""
        if self.pending:
            take, self.pending = self.pending[:budget], self.pending[budget:]
            out.extend(take)
            self.lines += len(take)
            if self.pending or len(out) >= budget:
                return True
        now = time.monotonic()
        # old descriptors first: their lines were written before the new file's
        for r in list(self.retired):
            got: list[tuple[int | None, str]] = []
            n = await r.read(got, budget - len(out))
            self._emit(r.path, got, out)
            if n:
                r.deadline = now + self.owner.rotate_grace
            elif now >= r.deadline:
                self.retired.remove(r)
                await self._close_reader(r, out)
            if len(out) >= budget:
                return True
        if self.cur is None:
            if not await self._open(start=self.initial):
                return False
            self.initial = False
            if self.pending:
                return True
        cur = self.cur
        assert cur is not None
        if cur.truncated():
            await self._on_truncate(cur, out)
        got = []
        await cur.read(got, budget - len(out))
        self._emit(cur.path, got, out)
        if len(out) >= budget:
            return True
        # has the path moved on to another file (rename rotation, delete, recreate)?
        try:
            st = os.stat(self.path)
            key: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            key = None
        except OSError:
            return False
        if key == cur.key:
            return False
        self.rotations += 1
        self.cur = None
        await self._retire(cur)
        if key is None:
            self._set("waiting", "deleted or renamed; waiting for it to reappear")
            return True
        await self._open(start=False)
        return True

    async def _on_truncate(self, cur: _Reader, out: list[RawLine]) -> None:
        """copytruncate: salvage our unread tail from the rotated copy, then restart at 0."""
        self.truncations += 1
        got: list[tuple[int | None, str]] = []
        if cur.fp:
            got = await asyncio.to_thread(self._salvage, cur)
        if not got:
            cur.split.flush(got)
        self._emit(cur.path, got, out)
        cur.split.reset(0)
        await cur.seek(0)
        cur.size = 0

    def _salvage(self, cur: _Reader) -> list[tuple[int | None, str]]:
        """Read what followed our offset from a rotated copy whose bytes before it match."""
        n = len(cur.fp)
        for cand in rotated_siblings(self.path)[:3]:  # the copy may be gzipped already
            try:
                opener = gzip.open if cand.endswith(".gz") else open
                with opener(cand, "rb") as f:
                    f.seek(cur.offset - n)
                    if f.read(n) != cur.fp:
                        continue
                    got: list[tuple[int | None, str]] = []
                    read = 0
                    while True:
                        data = f.read(CHUNK)
                        if not data:
                            break
                        read += len(data)
                        cur.split.feed(data, got)
                    cur.split.flush(got)
                    self.salvaged += len(got)
                    return got
            except (OSError, EOFError, gzip.BadGzipFile):
                continue
        return []

    async def close(self) -> None:
        for r in self.retired:
            self.owner._unwatch(r)
            await r.close()
        self.retired.clear()
        if self.cur is not None:
            self.owner._unwatch(self.cur)
            await self.cur.close()
            self.cur = None

    def next_deadline(self) -> float | None:
        return min((r.deadline for r in self.retired), default=None)

    def health(self, name: str | None = None) -> SourceHealth:
        detail = self.detail
        if self.state == "following":
            bits = []
            if self.rotations:
                bits.append(f"{self.rotations} rotation{'s' if self.rotations != 1 else ''}")
            if self.truncations:
                bits.append(f"{self.truncations} truncation{'s' if self.truncations != 1 else ''}")
            detail = ", ".join(bits)
        return SourceHealth(name or self.path, self.state, detail, self.lines)


# --------------------------------------------------------------------------- sources

class _FollowSource(Source):
    """Shared machinery: followers, one inotify instance, the batching loop."""

    def __init__(self, *, from_start: bool = False, backfill_lines: int = 0,
                 backfill_seconds: float = 0.0, line_cap: int = LINE_CAP,
                 rotate_grace: float = 5.0, use_inotify: bool | None = None,
                 poll_interval: float | None = None, max_batch: int = MAX_BATCH,
                 count_limit: int = COUNT_LIMIT) -> None:
        self.from_start = from_start
        self.backfill = _Backfill(backfill_lines, backfill_seconds)
        self.line_cap = line_cap
        self.rotate_grace = rotate_grace
        self.max_batch = max_batch
        self.count_limit = count_limit
        self.followers: list[_Follower] = []
        self._use_inotify = ino.available() if use_inotify is None else use_inotify
        self._ino: ino.Inotify | None = None
        self._poll = poll_interval
        self._wake: asyncio.Event | None = None
        self._closed = False
        self._dir_wds: dict[str, int] = {}
        self._wd_readers: dict[int, set[int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_data = 0.0
        self._busy = False
        self._rr = 0
        self._dir_dirty = False  # a watched directory changed since the last glob scan

    # -- inotify plumbing
    def _setup(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if self._use_inotify and self._ino is None:
            try:
                self._ino = ino.Inotify()
            except OSError:
                self._ino = None
            else:
                self._loop.add_reader(self._ino.fd, self._on_inotify)

    def _on_inotify(self) -> None:
        if self._ino is None:
            return
        dir_wds = set(self._dir_wds.values())
        for ev in self._ino.read():
            if ev.wd in dir_wds or ev.mask & ino.IN_Q_OVERFLOW:
                self._dir_dirty = True
            if ev.mask & ino.IN_IGNORED:
                self._forget_wd(ev.wd)
        if self._wake is not None:
            self._wake.set()

    def _forget_wd(self, wd: int) -> None:
        for d, w in list(self._dir_wds.items()):
            if w == wd:
                del self._dir_wds[d]
        self._wd_readers.pop(wd, None)

    def _watch_dir(self, d: str) -> None:
        if self._ino is None or d in self._dir_wds:
            return
        try:
            self._dir_wds[d] = self._ino.add_watch(d, _DIR_MASK)
        except OSError:
            pass  # missing or unreadable directory: the poll covers it

    def _watch_file(self, r: _Reader) -> int | None:
        if self._ino is None:
            return None
        try:  # watch the inode we hold, not whatever the path names by now
            wd = self._ino.add_watch(f"/proc/self/fd/{r.fd}", _FILE_MASK)
        except OSError:
            try:  # no /proc: the path is close enough, every round re-checks the inode
                wd = self._ino.add_watch(r.path, _FILE_MASK)
            except OSError:
                return None
        self._wd_readers.setdefault(wd, set()).add(id(r))
        return wd

    def _unwatch(self, r: _Reader) -> None:
        if self._ino is None or r.wd is None:
            return
        users = self._wd_readers.get(r.wd)
        if users is not None:
            users.discard(id(r))
            if not users:
                del self._wd_readers[r.wd]
                if r.wd not in self._dir_wds.values():
                    self._ino.rm_watch(r.wd)
        r.wd = None

    def _timeout(self) -> float:
        if self._poll is not None:
            base = self._poll
        elif self._ino is not None:
            base = 2.0 if all(d in self._dir_wds for d in self._dirs()) else 0.5
        else:
            # polling fallback: fast while data flows, slower when idle
            base = 0.01 if time.monotonic() - self._last_data < 2.0 else 0.1
        dl = [d for f in self.followers if (d := f.next_deadline()) is not None]
        if dl:
            base = max(0.0, min(base, min(dl) - time.monotonic() + 0.01))
        return base

    def _dirs(self) -> Iterable[str]:
        return {os.path.dirname(f.path) or "." for f in self.followers}

    # -- hooks for subclasses
    async def _refresh(self) -> None:
        """Add followers (glob matches); called every round."""

    # -- the loop
    async def batches(self) -> AsyncIterator[list[RawLine]]:
        self._setup()
        assert self._wake is not None
        wake = self._wake
        try:
            while not self._closed:
                wake.clear()
                for d in self._dirs():
                    self._watch_dir(d)
                await self._refresh()
                out: list[RawLine] = []
                more = False
                self._busy = True
                # round robin: under a flood in one file the others still get their turn
                n = len(self.followers)
                first = self._rr % n if n else 0
                self._rr += 1
                for f in self.followers[first:] + self.followers[:first]:
                    try:
                        more |= await f.pump(out, self.max_batch)
                    except (OSError, ValueError) as e:
                        if self._closed:
                            return
                        f._set("error", str(e))
                    if len(out) >= self.max_batch:
                        more = True
                        break
                self._busy = False
                if out:
                    self._last_data = time.monotonic()
                    yield out
                if more or self._closed:
                    continue
                if not out:
                    # a timer that sets the same event: cheaper than wait_for's extra task
                    timer = self._loop.call_later(self._timeout(), wake.set)  # type: ignore[union-attr]  # the loop is set before the source runs
                    try:
                        await wake.wait()
                    finally:
                        timer.cancel()
        finally:
            await self._teardown()

    async def _teardown(self) -> None:
        for f in self.followers:
            await f.close()
        if self._ino is not None:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._ino.fd)
            self._ino.close()
            self._ino = None
        self._dir_wds.clear()
        self._wd_readers.clear()

    async def aclose(self) -> None:
        self._closed = True
        if self._wake is not None:
            self._wake.set()
        if not self._busy:  # not inside a read: release files and inotify now
            await self._teardown()


class FileSource(_FollowSource):
    """Follow one file by path, like ``tail -F``."""

    def __init__(self, path: str | os.PathLike[str], **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]  # keyword options pass through to the base source
        self.path = os.fspath(path)
        self.name = self.path
        self.followers = [_Follower(self, self.path, initial=True)]

    def health(self) -> SourceHealth:
        if self._closed:
            f = self.followers[0]
            return SourceHealth(self.name, "stopped", "", f.lines)
        return self.followers[0].health(self.name)


class GlobSource(_FollowSource):
    """Follow every file matching a glob; files that appear later are read from their start.

    Compressed files and rotated copies (``auth.log.1``, ``auth.log-20261127``) are skipped, and
    so is a new match whose inode we already follow, so a rename never makes lines appear twice.
    Rotated copies still feed the backfill of the live file they belong to.
    """

    def __init__(self, pattern: str, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]  # keyword options pass through to the base source
        self.pattern = os.path.expanduser(pattern)
        self.name = self.pattern
        self._started = False
        self._last_scan = 0.0
        # paths skipped because they named a file we already read (renamed), with that file's
        # identity: skipped while the path still names it (inode numbers are reused, paths too)
        self._aliases: dict[str, tuple[int, int]] = {}

    def _open_keys(self) -> set[tuple[int, int]]:
        keys: set[tuple[int, int]] = set()
        for f in self.followers:
            if f.cur is not None:
                keys.add(f.cur.key)
            keys.update(r.key for r in f.retired)
        return keys

    async def _refresh(self) -> None:
        now = time.monotonic()
        # rescan when the directory changed, else now and then (globbed directories, polling)
        every = 2.0 if self._ino is not None else 0.5
        if self._started and not self._dir_dirty and now - self._last_scan < every:
            return
        self._dir_dirty = False
        self._last_scan = now
        paths = sorted(p for p in _glob.glob(self.pattern)
                       if not is_compressed(p) and not _ROTATED.search(p))
        matched = set(paths)
        # a match that is gone and fully drained is forgotten
        self.followers = [f for f in self.followers
                          if f.path in matched or f.cur is not None or f.retired]
        have = {f.path for f in self.followers}
        open_keys = self._open_keys()
        aliases: dict[str, tuple[int, int]] = {}
        for p in paths:
            if p in have:
                continue
            try:
                st = os.stat(p)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            key = (st.st_dev, st.st_ino)
            if key in open_keys or self._aliases.get(p) == key:
                aliases[p] = key  # a file we read, under a new name
                continue
            self.followers.append(_Follower(self, p, initial=not self._started))
        self._aliases = aliases
        self._started = True

    def _dirs(self) -> Iterable[str]:
        dirs = set(super()._dirs())
        d = os.path.dirname(self.pattern)
        if d and not _glob.has_magic(d):
            dirs.add(d)
        return dirs

    def health(self) -> SourceHealth:
        lines = sum(f.lines for f in self.followers)
        if self._closed:
            return SourceHealth(self.name, "stopped", "", lines)
        states = [f.state for f in self.followers]
        n = states.count("following")
        if n:
            bad = len(states) - n
            detail = f"{n} file{'s' if n != 1 else ''}" + (f", {bad} not readable" if bad else "")
            return SourceHealth(self.name, "following", detail, lines)
        if "denied" in states:
            return SourceHealth(self.name, "denied", "permission denied", lines)
        return SourceHealth(self.name, "waiting", "no matching file yet", lines)


def backfill_kwargs(value: str | int | None) -> dict[str, float | int]:
    """``--backfill`` value -> FileSource/JournalSource keyword: ``"500"`` or 500 means the last
    500 lines, ``"10m"``/``"90s"``/``"2h"`` the last so long. Raises ValueError."""
    if value is None or value == "" or value == 0:
        return {}
    if isinstance(value, int) or str(value).strip().isdigit():
        n = int(value)
        if n < 0:
            raise ValueError(f"bad backfill {value!r}: expected N lines or a duration like 10m")
        return {"backfill_lines": n}
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*", str(value).lower())
    if not m:
        raise ValueError(f"bad backfill {value!r}: expected N lines or a duration like 10m")
    return {"backfill_seconds": float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]}


def make_file_sources(patterns: Iterable[str | os.PathLike[str]], **kw: object) -> list[Source]:
    """One source per pattern: :class:`GlobSource` for globs, :class:`FileSource` otherwise."""
    out: list[Source] = []
    for p in patterns:
        s = os.fspath(p)
        out.append(GlobSource(s, **kw) if _glob.has_magic(s) else FileSource(s, **kw))
    return out
