"""The log-source interface.

A source produces batches of :class:`~popwatch.model.RawLine` as an async iterator and reports
its health for the header. Sources never parse: the Monitor hands each line to the parser.
Batching matters under a flood: the Monitor ingests a batch, yields to the event loop, repeats.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

from ..model import RawLine, SourceHealth


class Source(ABC):
    """One producer of log lines (a followed file, journald, a replay)."""

    #: shown in the header and stored in each event's ``source`` field
    name: str = "source"

    @abstractmethod
    def batches(self) -> AsyncIterator[list[RawLine]]:
        """Yield lists of lines as they arrive, forever (or until the source ends).
        Must never raise for ordinary trouble (missing file, permission denied): report it in
        :meth:`health` and keep trying."""

    @abstractmethod
    def health(self) -> SourceHealth:
        """Current state for the header (following / waiting / denied / journal / replay ...)."""

    async def aclose(self) -> None:  # noqa: B027 - most sources hold nothing to release
        """Stop and release resources (files, child processes)."""
