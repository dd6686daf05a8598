"""Advisory file locks (``flock``) that coordinate builds across threads and processes.

One lock per image digest makes two builds of the same inputs build once (the second finds the
image ready); one per job tells a restarted control plane whether the process that ran a job
is still alive: a RUNNING job whose lock can be taken has lost its builder.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from neve.environments.runner import Deadline


class FileLock:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def acquire(self, deadline: Deadline | None = None, *, what: str = "a lock") -> None:
        """Wait for the lock, giving up (with the deadline's error) when the deadline passes."""
        while not self.try_acquire():
            if deadline is not None:
                deadline.check(f"waiting for {what}")
            time.sleep(0.1)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_locked(path: Path) -> bool:
    """Whether some live process (or another open lock in this one) holds ``path``."""
    if not Path(path).exists():
        return False
    probe = FileLock(path)
    if probe.try_acquire():
        probe.release()
        return False
    return True
