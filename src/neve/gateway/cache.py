"""A small time- and generation-bounded cache for the gateway's per-request look-ups.

Authenticating a token and resolving + authorizing a service cost three catalog transactions;
the gateway remembers the answers for ``ttl`` seconds. Every change made through the
``SecurityManager`` (revoked token, revoked grant, dropped role, ...) bumps its ``generation``,
which empties this cache at once in this process; changes made by another process sharing the
catalog take effect within ``ttl``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any


class TtlCache:
    def __init__(self, *, ttl: float, maxsize: int = 10_000) -> None:
        self.ttl = ttl
        self.maxsize = maxsize
        self._items: OrderedDict[str, tuple[float, Hashable, Any]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(*parts: Any) -> str:
        # hashed: the cache never holds a caller's token in clear
        return hashlib.sha256(repr(parts).encode("utf-8", "surrogatepass")).hexdigest()

    def get(self, key: str, generation: Hashable) -> Any:
        if self.ttl <= 0:
            return None
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            expires, gen, value = item
            if gen != generation or expires <= time.monotonic():
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return value

    def put(self, key: str, value: Any, generation: Hashable, ttl: float | None = None) -> None:
        if self.ttl <= 0:
            return
        lifetime = self.ttl if ttl is None else min(ttl, self.ttl)
        with self._lock:
            self._items[key] = (time.monotonic() + lifetime, generation, value)
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def discard(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
