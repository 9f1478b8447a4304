"""The one thread that makes firewall calls in this process.

python-iptables is not thread-safe and keeps per-thread handles, and every backend's calls may
block (netlink, binaries, locks): so every firewall call (a ban from the screen, an auto-ban, a
counter poll, the legacy backend's own table reads) runs on this one thread, whoever asks. A
call made from the thread itself runs at once (no second hop, no deadlock).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class FirewallThread:
    """A lazily started single worker thread, shared by the Monitor, the actions and the
    backends (:data:`FW_THREAD`)."""

    def __init__(self, name: str = "popwatch-fw") -> None:
        self.name = name
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._ident: int | None = None

    def _mark(self) -> None:
        self._ident = threading.get_ident()

    @property
    def executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name,
                                                    initializer=self._mark)
            return self._executor

    def on_thread(self) -> bool:
        return threading.get_ident() == self._ident

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue ``fn(*args)`` on the thread (FIFO)."""
        return self.executor.submit(fn, *args)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the thread and wait for it (at once when already on it)."""
        if self.on_thread():
            return fn(*args)
        return self.submit(fn, *args).result()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Await ``fn(*args)`` run on the thread, without blocking the event loop."""
        if self.on_thread():
            return fn(*args)
        return await asyncio.wrap_future(self.submit(fn, *args))

    def drain(self) -> None:
        """Wait until everything queued so far has run (the queue is FIFO)."""
        if self._executor is not None and not self.on_thread():
            self.submit(lambda: None).result()


#: the process's firewall thread
FW_THREAD = FirewallThread()
