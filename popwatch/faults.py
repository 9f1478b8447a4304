"""Fault injection for the crash tests (tests/netns/test_faults.py): with
``POPWATCH_FAULT_KILL_AT=N`` in the environment, the process SIGKILLs itself at the N-th
:func:`point` it passes (the points sit between every disk write and kernel change of ban,
unban, limit, mass ban and restore). Without the variable a point costs one global lookup."""

from __future__ import annotations

import os
import signal

_AT = int(os.environ.get("POPWATCH_FAULT_KILL_AT", "0") or 0)
_n = 0


def point(name: str = "") -> None:
    global _n
    if _AT:
        _n += 1
        if _n == _AT:
            os.kill(os.getpid(), signal.SIGKILL)
