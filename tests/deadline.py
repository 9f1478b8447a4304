"""Blocking reads with a deadline: a child that stops talking fails the test, never hangs it.

Standard library only (the namespace labs and the benchmarks import it too).
"""

from __future__ import annotations

import threading
from typing import IO, AnyStr


def readline_within(stream: IO[AnyStr], seconds: float, what: str = "the child") -> AnyStr:
    """``stream.readline()``, or :class:`TimeoutError` after ``seconds``.

    The read runs in a daemon thread (works with buffered text streams, where ``select`` on the
    fd would miss lines already buffered); the caller's cleanup kills the child, which ends it.
    An empty result still means end of file, as with ``readline``.
    """
    box: list[AnyStr] = []
    err: list[BaseException] = []

    def read() -> None:
        try:
            box.append(stream.readline())
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            err.append(e)

    t = threading.Thread(target=read, name=f"readline:{what}", daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise TimeoutError(f"no line from {what} within {seconds:g} s")
    if err:
        raise err[0]
    return box[0]
