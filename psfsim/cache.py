"""One bounded, thread-safe LRU cache for every per-process cache of psfsim (PSF engines, low-rank bases,
eigen-PSF transforms, Wiener transfer functions): bounded by entry count, by bytes, or both.

Threaded schedulers (Dask) call psfsim from several threads at once: lookups and insertions hold a lock, the
value is made outside it (two threads may both make one; the first stored wins and both get it). A copy
pickled into another process starts empty.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

__all__ = ["BoundedCache"]


def _nbytes(v) -> int:
    if isinstance(v, (tuple, list)):
        return sum(_nbytes(x) for x in v)
    return int(getattr(v, "nbytes", 0))


class BoundedCache:
    """LRU mapping bounded by ``max_items`` and/or ``max_bytes`` (the last entry always stays, however big)."""

    def __init__(self, max_items: int | None = None, max_bytes: int | None = None):
        self.max_items = None if max_items is None else int(max_items)
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return sum(_nbytes(v) for v in self._d.values())

    def _trim(self) -> None:
        while len(self._d) > 1 and (
            (self.max_items is not None and len(self._d) > self.max_items)
            or (self.max_bytes is not None and self.nbytes > self.max_bytes)
        ):
            self._d.popitem(last=False)

    def peek(self, key):
        """The value of ``key`` (marked recently used), or None."""
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        return None

    def put(self, key, value):
        """Store ``value`` unless ``key`` is already there; return the stored value."""
        with self._lock:
            value = self._d.setdefault(key, value)
            self._d.move_to_end(key)
            self._trim()
        return value

    def get(self, key, make):
        """The value of ``key``, made by ``make()`` (outside the lock) and stored when missing."""
        hit = self.peek(key)
        return hit if hit is not None else self.put(key, make())

    def clear(self) -> None:
        with self._lock:
            self._d.clear()

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key) -> bool:
        return key in self._d

    def __getstate__(self):
        return {"max_items": self.max_items, "max_bytes": self.max_bytes}

    def __setstate__(self, d):
        self.__init__(max_items=d["max_items"], max_bytes=d["max_bytes"])
