"""Failed-login throttling: after a few wrong passwords a user name is locked for a while.

In memory, per process (the control plane is the one process that checks passwords). Unknown
user names are throttled like known ones, so the lock reveals nothing about which users exist.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from neve.errors import AuthenticationError

MAX_TRACKED = 100_000


@dataclass
class _Record:
    failures: list[float] = field(default_factory=list)
    locked_until: float = 0.0


class LoginThrottle:
    def __init__(
        self,
        *,
        max_failures: int = 5,
        window_s: float = 300.0,
        lockout_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.lockout_s = lockout_s
        self.clock = clock  # seconds, monotonic; injectable so lockouts are tested without sleeping
        self._records: dict[str, _Record] = {}
        self._lock = threading.Lock()

    def check(self, user: str) -> None:
        """Raise ``AuthenticationError`` while ``user`` is locked out (password not checked)."""
        with self._lock:
            record = self._records.get(user)
            left = record.locked_until - self.clock() if record else 0.0
        if left > 0:
            raise AuthenticationError(
                f"too many failed logins for user {user}; try again in {math.ceil(left)} s"
            )

    def failed(self, user: str) -> None:
        now = self.clock()
        with self._lock:
            if len(self._records) >= MAX_TRACKED:
                self._prune(now)
            record = self._records.setdefault(user, _Record())
            record.failures = [t for t in record.failures if now - t < self.window_s] + [now]
            if len(record.failures) >= self.max_failures:
                record.locked_until = now + self.lockout_s
                record.failures.clear()

    def succeeded(self, user: str) -> None:
        with self._lock:
            self._records.pop(user, None)

    def _prune(self, now: float) -> None:
        stale = [
            name
            for name, rec in self._records.items()
            if rec.locked_until < now and all(now - t >= self.window_s for t in rec.failures)
        ]
        for name in stale:
            del self._records[name]
        while len(self._records) >= MAX_TRACKED:  # still full: forget the oldest entries
            self._records.pop(next(iter(self._records)))
