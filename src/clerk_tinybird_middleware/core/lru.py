"""A weight-bounded, least-recently-used map whose reads take no lock.

Reads are one ``OrderedDict.get`` (atomic under the GIL) plus setting the entry's ``used``
flag; recency is applied when room is needed (the "second chance" / CLOCK approximation of
LRU): the oldest entry is evicted unless it was used since it was last looked at, in which case
it moves to the young end. Writes take a lock. Every entry carries its own weight (bytes, or 1
for a count bound), and evicting an entry calls ``on_evict`` so owners can keep indexes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

__all__ = ["LRU", "Entry"]

K = TypeVar("K", bound=Hashable)


class Entry:
    """Base of what an :class:`LRU` holds. ``live`` turns false once it leaves the map."""

    __slots__ = ("live", "used", "weight")

    def __init__(self, weight: int = 1) -> None:
        self.weight = weight
        self.used = False
        self.live = True


E = TypeVar("E", bound=Entry)


class LRU(Generic[K, E]):
    def __init__(self, limit: int, on_evict: Callable[[K, E], None] | None = None) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.limit = limit
        self.weight = 0
        self._data: OrderedDict[K, E] = OrderedDict()
        self._lock = threading.Lock()
        self._on_evict = on_evict
        self.evictions = 0
        #: A read that leaves ``used`` alone (the caller sets it when the entry serves).
        self.peek: Callable[[K], E | None] = self._data.get

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._data))

    def get(self, key: K) -> E | None:
        entry = self._data.get(key)
        if entry is not None:
            entry.used = True
        return entry

    def put(self, key: K, entry: E) -> None:
        evicted: list[tuple[K, E]] = []
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._drop(old)  # replaced, not evicted: owners' indexes stay as they are
            self._data[key] = entry
            self.weight += entry.weight
            while self.weight > self.limit and len(self._data) > 1:
                oldest, candidate = self._data.popitem(last=False)
                if candidate.used and candidate is not entry:
                    candidate.used = False
                    self._data[oldest] = candidate  # a second chance, at the young end
                    continue
                self._drop(candidate)
                self.evictions += 1
                evicted.append((oldest, candidate))
        self._notify(evicted)

    def pop(self, key: K) -> E | None:
        with self._lock:
            entry = self._data.pop(key, None)
            if entry is not None:
                self._drop(entry)
        if entry is not None:
            self._notify([(key, entry)])
        return entry

    def clear(self) -> None:
        with self._lock:
            items = list(self._data.items())
            self._data.clear()
            for _, entry in items:
                self._drop(entry)
        self._notify(items)

    def _drop(self, entry: E) -> None:
        entry.live = False
        self.weight -= entry.weight

    def _notify(self, evicted: list[tuple[K, E]]) -> None:
        if self._on_evict is not None:
            for key, entry in evicted:
                self._on_evict(key, entry)
