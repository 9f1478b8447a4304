"""Bounded per-connection / per-session memory used only to avoid counting one attempt twice."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class Ledger(Generic[V]):
    """A small LRU map: the oldest entries are dropped past ``cap``.

    Losing an entry can only make a later line count again (never hide an attempt), so a
    flood of connections degrades to "maybe counted twice", not to missed attacks.
    """

    def __init__(self, cap: int = 16384) -> None:
        self.cap = cap
        self._d: OrderedDict[Hashable, V] = OrderedDict()

    def get(self, key: Hashable) -> V | None:
        v = self._d.get(key)
        if v is not None:
            self._d.move_to_end(key)
        return v

    def put(self, key: Hashable, value: V) -> None:
        d = self._d
        d[key] = value
        d.move_to_end(key)
        if len(d) > self.cap:
            d.popitem(last=False)

    def pop(self, key: Hashable) -> V | None:
        return self._d.pop(key, None)

    def __len__(self) -> int:
        return len(self._d)
