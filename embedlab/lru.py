"""The one bounded least-recently-used mapping the caches in memory use (vectors, texts, indexes, maps)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, Hashable, Iterator, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most ``max_items`` entries and, with ``size``, at most ``max_size`` of ``size(value)`` in all;
    :meth:`put` forgets the least recently used first (even the new entry, when it alone is too big)
    and :meth:`get` counts as a use. Not thread-safe: each cache holds its own lock around it."""

    def __init__(self, max_items: int | None = None, max_size: int | None = None,
                 size: Callable[[V], int] | None = None) -> None:
        self.max_items, self.max_size, self.size = max_items, max_size, size
        self._d: OrderedDict[K, V] = OrderedDict()
        self._total = 0  # sum of size(value) over the entries

    def get(self, key: K, default: V | None = None) -> V | None:
        if key not in self._d:
            return default
        self._d.move_to_end(key)
        return self._d[key]

    def put(self, key: K, value: V) -> V:
        self.pop(key)
        self._d[key] = value
        self._total += self.size(value) if self.size else 0
        while self._d and ((self.max_items is not None and len(self._d) > self.max_items)
                           or (self.max_size is not None and self._total > self.max_size)):
            self.pop(next(iter(self._d)))
        return value

    def pop(self, key: K) -> V | None:
        value = self._d.pop(key, None)
        if value is not None and self.size:
            self._total -= self.size(value)
        return value

    def clear(self) -> None:
        self._d.clear()
        self._total = 0

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def __len__(self) -> int:
        return len(self._d)

    def __iter__(self) -> Iterator[K]:
        return iter(self._d)
