"""Run a command in a real pseudo-terminal the way a user would, type keys, read the screen.

No pexpect: ``pty.openpty`` + ``subprocess`` (own session, so the pty is its controlling
terminal), a reader thread collecting every byte, and :meth:`PtyProc.expect` waiting (with a
deadline) until a text shows up on the screen. "The screen" is the output with the terminal
escape sequences removed: Textual draws each line's text contiguously between its style codes,
so what the user reads is found as plain text.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_ESC = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[PX^_][^\x1b]*\x1b\\|\x1b[@-Z\\-_]"
                  rb"|[\x00-\x08\x0b-\x1f\x7f]")


def screen_text(raw: bytes) -> str:
    return _ESC.sub(b"", raw).decode("utf-8", "replace")


class PtyProc:
    def __init__(self, argv: Sequence[str], *, cols: int = 120, rows: int = 36,
                 env: dict[str, str] | None = None, cwd: str | Path = REPO) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        e = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(cols), "LINES": str(rows),
             "TEXTUAL_ANIMATIONS": "none", "PYTHONPATH": str(REPO)}
        e.pop("TEXTUAL", None)
        e.update(env or {})
        self.proc = subprocess.Popen(list(argv), stdin=slave, stdout=slave, stderr=slave, env=e, cwd=str(cwd),
                                     start_new_session=True)
        os.close(slave)
        self.master = master
        self.raw = bytearray()
        self.lock = threading.Lock()
        self.mark = 0
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            r, _, _ = select.select([self.master], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: the child closed the pty
                    return
                if not chunk:
                    return
                with self.lock:
                    self.raw += chunk
            elif self.proc.poll() is not None:
                return

    def screen(self, since: int = 0) -> str:
        with self.lock:
            return screen_text(bytes(self.raw[since:]))

    def expect(self, *texts: str, timeout: float = 30.0) -> str:
        """Wait until every one of ``texts`` was drawn since the last :meth:`send`; the screen."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.screen(self.mark)
            if all(t in s for t in texts):
                return s
            if time.monotonic() > deadline or (self.proc.poll() is not None and not self.reader.is_alive()):
                missing = [t for t in texts if t not in s]
                raise AssertionError(f"not on the screen within {timeout:g} s: {missing}; "
                                     f"exit {self.proc.poll()}; screen tail: {self.screen()[-1500:]!r}")
            time.sleep(0.05)

    def send(self, keys: str | bytes) -> None:
        with self.lock:
            self.mark = len(self.raw)
        os.write(self.master, keys.encode() if isinstance(keys, str) else keys)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"did not exit within {timeout:g} s; screen tail: "
                                 f"{self.screen()[-1500:]!r}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only what it started
            self.proc.wait(10)
        self.reader.join(5)
        os.close(self.master)

    def __enter__(self) -> PtyProc:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
