"""A small time- and generation-bounded cache for the gateway's per-request look-ups.

Authenticating a token and resolving + authorizing a service cost three catalog transactions;
the gateway remembers the answers for ``ttl`` seconds. Every change made through the
``SecurityManager`` (revoked token, revoked grant, dropped role, ...) bumps its ``generation``,
which empties this cache at once in this process; changes made by another process sharing the
catalog take effect within ``ttl`` (plus the one look-up that refreshes an answer).

An answer past its ``ttl`` is still *usable* for another ``ttl`` (``lookup`` says it is stale):
the gateway answers with it and refreshes it in the background, so a busy caller never waits on
a look-up once a second. Never beyond the lifetime ``put`` was given (a token's expiry), never
across a generation change.
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
        self._items: OrderedDict[str, tuple[float, float, Hashable, Any]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(*parts: Any) -> str:
        # hashed: the cache never holds a caller's token in clear
        return hashlib.sha256(repr(parts).encode("utf-8", "surrogatepass")).hexdigest()

    def get(self, key: str, generation: Hashable) -> Any:
        """The answer while fresh (within ``ttl``), else None."""
        found = self.lookup(key, generation)
        return found[0] if found is not None and found[1] else None

    def lookup(self, key: str, generation: Hashable) -> tuple[Any, bool] | None:
        """``(answer, fresh)`` while usable; None when absent, too old or of another generation."""
        if self.ttl <= 0:
            return None
        now = time.monotonic()
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            fresh_until, usable_until, gen, value = item
            if gen != generation or usable_until <= now:
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return value, fresh_until > now

    def put(self, key: str, value: Any, generation: Hashable, ttl: float | None = None) -> None:
        """Remember ``value``: fresh for ``ttl`` (at most the cache's), usable twice as long but
        never past ``ttl`` when that is shorter (an answer that expires itself)."""
        if self.ttl <= 0:
            return
        now = time.monotonic()
        lifetime = self.ttl if ttl is None else min(ttl, self.ttl)
        usable = 2 * self.ttl if ttl is None else min(ttl, 2 * self.ttl)
        with self._lock:
            self._items[key] = (now + lifetime, now + usable, generation, value)
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def discard(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
