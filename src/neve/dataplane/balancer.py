"""Least-outstanding-requests choice among a service's ready instances.

Counts are per ``(host, port)`` and live in the process that sends (a proxy, the control
plane's SQL engine, a client). Ties are broken round-robin so idle instances share the load,
and an instance that just failed sits out for ``cooldown_s`` unless it is the only one.
Thread-safe: the sync router sends from many threads at once.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

Address = tuple[str, int]


class LeastOutstanding:
    def __init__(self, *, cooldown_s: float = 2.0) -> None:
        self.cooldown_s = cooldown_s
        self.outstanding: dict[Address, int] = {}
        self._failed_at: dict[Address, float] = {}
        self._ticket = itertools.count()
        self._last_pick: dict[Address, int] = {}
        self._lock = threading.Lock()

    def choose(self, instances: Sequence[Address], exclude: set[Address]) -> Address | None:
        candidates = [a for a in instances if a not in exclude]
        if not candidates:
            return None
        now = time.monotonic()
        with self._lock:
            healthy = [
                a for a in candidates if now - self._failed_at.get(a, -1e9) > self.cooldown_s
            ]
            pool = healthy or candidates
            # fewest in flight first; among equals, the one picked least recently
            best = min(pool, key=lambda a: (self.outstanding.get(a, 0), self._last_pick.get(a, -1)))
            self._last_pick[best] = next(self._ticket)
        return best

    def acquire(self, address: Address) -> None:
        with self._lock:
            self.outstanding[address] = self.outstanding.get(address, 0) + 1

    def release(self, address: Address) -> None:
        with self._lock:
            left = self.outstanding.get(address, 1) - 1
            if left <= 0:
                self.outstanding.pop(address, None)
            else:
                self.outstanding[address] = left

    @contextmanager
    def track(self, address: Address) -> Iterator[None]:
        self.acquire(address)
        try:
            yield
        finally:
            self.release(address)

    def failed(self, address: Address) -> None:
        with self._lock:
            self._failed_at[address] = time.monotonic()
