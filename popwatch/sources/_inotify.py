"""A minimal Linux inotify binding over ctypes (no dependency).

Only what the file follower needs: create a non-blocking instance, add and remove watches,
read the pending events. :func:`available` says whether the running libc offers inotify; on
other systems (or when the per-user instance limit is reached) the follower polls instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from typing import NamedTuple

IN_ACCESS = 0x00000001
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len

_libc: ctypes.CDLL | None = None


def _load() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            lib.inotify_init1  # noqa: B018 - raises AttributeError when missing
            lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        except (OSError, AttributeError):
            return None
        _libc = lib
    return _libc


def available() -> bool:
    """True when this system offers inotify."""
    return _load() is not None


class Event(NamedTuple):
    wd: int
    mask: int
    cookie: int
    name: str


class Inotify:
    """One non-blocking, close-on-exec inotify instance."""

    def __init__(self) -> None:
        lib = _load()
        if lib is None:
            raise OSError("inotify is not available")
        self._lib = lib
        fd = lib.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.fd: int = fd

    def add_watch(self, path: str, mask: int) -> int:
        """Watch ``path`` (follows symlinks, so ``/proc/self/fd/N`` watches an open file)."""
        wd = self._lib.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        return int(wd)

    def rm_watch(self, wd: int) -> None:
        """Stop a watch; a watch the kernel already dropped is ignored."""
        self._lib.inotify_rm_watch(self.fd, wd)

    def read(self) -> list[Event]:
        """All pending events (empty when none)."""
        events: list[Event] = []
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return events
            if not buf:
                return events
            pos = 0
            while pos + _HEADER.size <= len(buf):
                wd, mask, cookie, size = _HEADER.unpack_from(buf, pos)
                pos += _HEADER.size
                name = os.fsdecode(buf[pos : pos + size].rstrip(b"\0"))
                pos += size
                events.append(Event(wd, mask, cookie, name))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
