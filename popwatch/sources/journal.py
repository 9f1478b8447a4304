"""Read sshd, dovecot and postfix messages from journald with ``journalctl -f -o json``.

Debian 12 without rsyslog (and many current distributions) keep these logs only in the
journal. One ``journalctl`` child follows the matching entries; each JSON entry becomes a
:class:`RawLine` whose ``text`` is ``MESSAGE`` and whose ``fields`` carry
``SYSLOG_IDENTIFIER``, ``_PID``, ``__REALTIME_TIMESTAMP``, ``_HOSTNAME`` (and
``_SYSTEMD_UNIT`` when present).

Position: the ``__CURSOR`` of the last entry handed out is remembered (and, with
``cursor_file``, saved atomically at most once a second and on close), so a ``journalctl``
that dies is restarted with ``--after-cursor`` after a backoff and neither replays nor skips.
On the very first start without a cursor the source asks ``journalctl -n 1`` for the newest
matching entry's cursor and follows after it, so nothing written between that look-up and the
follower's start is lost either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from ..model import RawLine, SourceHealth
from ..sanitize import decode
from .base import Source

#: identifiers and units whose messages popwatch reads (bare name: identifier or NAME.service;
#: a name with "/" is an identifier only; "*.service" a unit only; "FIELD=value" as given)
DEFAULT_MATCHES: tuple[str, ...] = (
    "sshd", "sshd-session", "ssh", "dovecot",
    "postfix/smtpd", "postfix/submission/smtpd", "postfix/smtps/smtpd", "postfix@-.service",
)

#: journal fields copied into ``RawLine.fields``
FIELDS = ("SYSLOG_IDENTIFIER", "_PID", "__REALTIME_TIMESTAMP", "_HOSTNAME", "_SYSTEMD_UNIT")

#: a MESSAGE longer than this (bytes) is cut and marked ``…[+N]``
LINE_CAP = 8192
#: a JSON line longer than this is dropped whole (it cannot be parsed in part)
JSON_CAP = 4 << 20
#: lines per yielded batch
MAX_BATCH = 2000


def match_args(matches: Iterable[str]) -> list[str]:
    """``("sshd", "dovecot.service")`` -> journalctl match arguments, all OR'ed with ``+``."""
    terms: list[str] = []
    for m in matches:
        if "=" in m:
            terms.append(m)
        elif m.endswith((".service", ".socket", ".scope")):
            terms.append(f"_SYSTEMD_UNIT={m}")
        elif "/" in m:
            terms.append(f"SYSLOG_IDENTIFIER={m}")
        else:
            terms += [f"SYSLOG_IDENTIFIER={m}", f"_SYSTEMD_UNIT={m}.service"]
    out: list[str] = []
    for t in dict.fromkeys(terms):
        if out:
            out.append("+")
        out.append(t)
    return out


def field_text(value: Any) -> str | None:
    """One journal JSON field -> text. Binary fields come as lists of byte values; a field
    that occurs several times comes as a list of values (the first is used); fields that
    journalctl did not print in full come as null."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if not value:
            return ""
        if all(isinstance(x, int) for x in value):
            try:
                return decode(bytes(value))
            except ValueError:
                return None
        return field_text(value[0])
    return str(value)


def _cap(text: str, cap: int) -> str:
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= cap:
        return text
    return f"{decode(raw[:cap])}…[+{len(raw) - cap}]"


def parse_entry(obj: Mapping[str, Any], line_cap: int = LINE_CAP) -> RawLine | None:
    """A decoded ``journalctl -o json`` entry -> RawLine (None when it has no MESSAGE)."""
    msg = field_text(obj.get("MESSAGE"))
    if msg is None:
        return None
    if "\n" in msg:  # multi-line messages: one RawLine, newlines made visible by sanitize
        msg = msg.rstrip("\n")
    fields: dict[str, str] = {}
    for k in FIELDS:
        v = field_text(obj.get(k))
        if v is not None:
            fields[k] = v
    return RawLine(_cap(msg, line_cap), "journal", None, fields)


class JournalSource(Source):
    """Follow journald through a ``journalctl -f -o json`` child process."""

    name = "journal"

    def __init__(self, matches: Sequence[str] = DEFAULT_MATCHES, *, cursor_file: str | os.PathLike[str] | None = None,
                 journalctl: str = "journalctl", extra_args: Sequence[str] = (),
                 files: Sequence[str | os.PathLike[str]] = (), directory: str | os.PathLike[str] | None = None,
                 from_start: bool = False, backfill_lines: int = 0, backfill_seconds: float = 0.0,
                 line_cap: int = LINE_CAP, backoff: tuple[float, float] = (0.5, 30.0),
                 max_batch: int = MAX_BATCH) -> None:
        self.matches = tuple(matches)
        self.cursor_file = os.fspath(cursor_file) if cursor_file is not None else None
        self.journalctl = journalctl
        # journalctl -f fails on a relative --file path ("Failed to get journal fd")
        self.extra_args = list(extra_args)
        self.extra_args += [f"--file={os.path.abspath(f)}" for f in files]
        if directory is not None:
            self.extra_args.append(f"--directory={os.path.abspath(directory)}")
        self.from_start = from_start
        self.backfill_lines = backfill_lines
        self.backfill_seconds = backfill_seconds
        self.line_cap = line_cap
        self.backoff = backoff
        self.max_batch = max_batch
        self.cursor: str | None = None
        self.lines = 0
        self.starts = 0
        self.state = "waiting"
        self.detail = "starting journalctl"
        self._proc: asyncio.subprocess.Process | None = None
        self._closed = False
        self._stop = asyncio.Event() if _has_loop() else None
        self._saved_cursor: str | None = None
        self._saved_at = 0.0
        self._stderr: deque[str] = deque(maxlen=5)
        if self.cursor_file:
            self.cursor = self._load_cursor()

    # -- cursor file
    def _load_cursor(self) -> str | None:
        assert self.cursor_file is not None
        try:
            with open(self.cursor_file, encoding="utf-8") as f:
                c = f.read().strip()
        except OSError:
            return None
        return c or None

    def _save_cursor(self, force: bool = False) -> None:
        if not self.cursor_file or self.cursor is None or self.cursor == self._saved_cursor:
            return
        now = time.monotonic()
        if not force and now - self._saved_at < 1.0:
            return
        tmp = f"{self.cursor_file}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(self.cursor + "\n")
            os.replace(tmp, self.cursor_file)
        except OSError as e:
            self._stderr.append(f"cannot save cursor: {e}")
            return
        self._saved_cursor = self.cursor
        self._saved_at = now

    # -- the child
    def _base(self) -> list[str]:
        return [self.journalctl, "-o", "json", "--all", "--no-pager", "-q", *self.extra_args]

    async def _newest_cursor(self) -> str | None:
        """The cursor of the newest matching entry now, or None when there is none."""
        proc = await asyncio.create_subprocess_exec(
            *self._base(), "-n", "1", *match_args(self.matches),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=_env())
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise OSError(decode(err).strip() or f"journalctl exited {proc.returncode}")
        for line in reversed(out.splitlines()):
            if line.startswith(b"{"):
                with contextlib.suppress(ValueError):
                    c = json.loads(line).get("__CURSOR")
                    if isinstance(c, str):
                        return c
        return None

    async def _position(self) -> list[str]:
        if self.cursor is not None:
            return [f"--after-cursor={self.cursor}"]
        if self.from_start:
            return ["--no-tail"]
        if self.backfill_seconds > 0:
            return [f"--since=@{int(time.time() - self.backfill_seconds)}"]
        if self.backfill_lines > 0:
            return ["-n", str(self.backfill_lines)]
        c = await self._newest_cursor()
        if c is None:
            return ["--no-tail"]  # nothing matches yet: everything that comes is new
        self.cursor = c
        return [f"--after-cursor={c}"]

    def argv(self, position: Sequence[str]) -> list[str]:
        """The follower's command line."""
        return [*self._base(), "-f", *position, *match_args(self.matches)]

    async def _spawn(self) -> asyncio.subprocess.Process:
        pos = await self._position()
        proc = await asyncio.create_subprocess_exec(
            *self.argv(pos), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=_env(), start_new_session=True)
        self.starts += 1
        return proc

    async def _drain_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while True:
            line = await proc.stderr.readline()
            if not line:
                return
            self._stderr.append(decode(line).strip()[:200])

    def _parse(self, line: bytes, out: list[RawLine]) -> None:
        if not line.startswith(b"{"):
            return
        try:
            obj = json.loads(line)
        except ValueError:
            return
        if not isinstance(obj, dict):
            return
        rl = parse_entry(obj, self.line_cap)
        c = obj.get("__CURSOR")
        if isinstance(c, str):
            self.cursor = c
        if rl is not None:
            out.append(rl)

    async def batches(self) -> AsyncIterator[list[RawLine]]:
        self._stop = asyncio.Event()
        delay = self.backoff[0]
        try:
            while not self._closed:
                started = time.monotonic()
                try:
                    proc = await self._spawn()
                except (OSError, ValueError) as e:
                    self.state, self.detail = "error", f"cannot run {self.journalctl}: {e}"
                else:
                    self._proc = proc
                    self.state, self.detail = "journal", f"journalctl pid {proc.pid}"
                    lines_before, used_cursor = self.lines, self.cursor
                    err_task = asyncio.create_task(self._drain_stderr(proc))
                    try:
                        async for batch in self._read(proc):
                            yield batch
                    finally:
                        await self._reap(proc)
                        # the child is gone: its stderr ends soon; keep what it said last
                        with contextlib.suppress(asyncio.TimeoutError, Exception):
                            await asyncio.wait_for(asyncio.shield(err_task), 1.0)
                        err_task.cancel()
                        with contextlib.suppress(BaseException):
                            await err_task
                        self._proc = None
                    if self._closed:
                        break
                    why = "; ".join(self._stderr) or f"exit status {proc.returncode}"
                    self.state, self.detail = "error", f"journalctl ended ({why}); restarting"
                    if (proc.returncode and used_cursor is not None and self.lines == lines_before
                            and "cursor" in why.lower()):
                        # a saved cursor this journal rejects: start over by the start policy
                        self.cursor = None
                        self.detail += " without the rejected cursor"
                    self._stderr.clear()
                if time.monotonic() - started > 10:
                    delay = self.backoff[0]
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, self.backoff[1])
        finally:
            self._save_cursor(force=True)
            if self._closed:
                self.state, self.detail = "stopped", ""

    async def _read(self, proc: asyncio.subprocess.Process) -> AsyncIterator[list[RawLine]]:
        assert proc.stdout is not None
        stdout = proc.stdout
        buf = bytearray()
        dropping = False
        while not self._closed:
            data = await stdout.read(1 << 16)
            if not data:
                return
            out: list[RawLine] = []
            start = 0
            while True:
                nl = data.find(b"\n", start)
                if nl < 0:
                    break
                if dropping:
                    dropping = False
                elif buf:
                    buf += data[start:nl]
                    self._parse(bytes(buf), out)
                    buf.clear()
                else:
                    self._parse(data[start:nl], out)
                start = nl + 1
            if not dropping:
                buf += data[start:]
                if len(buf) > JSON_CAP:
                    buf.clear()
                    dropping = True
            if out:
                self.lines += len(out)
                for i in range(0, len(out), self.max_batch):
                    yield out[i : i + self.max_batch]
                self._save_cursor()

    async def _reap(self, proc: asyncio.subprocess.Process) -> None:
        # os.kill, not proc.send_signal: Popen.send_signal() polls first, reaping the child
        # behind asyncio's child watcher, which then reports exit status 255.
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 2.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()

    def health(self) -> SourceHealth:
        return SourceHealth(self.name, self.state, self.detail, self.lines)

    async def aclose(self) -> None:
        self._closed = True
        if self._stop is not None:
            self._stop.set()
        proc = self._proc
        if proc is not None:
            await self._reap(proc)
        self._save_cursor(force=True)
        self.state, self.detail = "stopped", ""


def _has_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "SYSTEMD_LESS": ""})
    return env
