"""A build job's log: timestamped lines, one step at a time, with how long each step took.

Lines look like ``2026-01-01T10:00:00.123Z [   1.52s] ==> install base packages`` so the CLI
can show progress by tailing the file, and a failed build's log says which step failed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

MAX_TAIL_BYTES = 8 * 1024 * 1024


class BuildLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._t0 = time.monotonic()
        self._lock = threading.Lock()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def write(self, text: str) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        prefix = f"{stamp} [{self.elapsed:8.2f}s] "
        lines = str(text).rstrip("\n").splitlines() or [""]
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            for line in lines:
                fh.write(prefix + line + "\n")

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        """``==> title`` before, ``<== title: 1.23s`` (or ``FAILED``) after."""
        self.write(f"==> {title}")
        start = time.monotonic()
        try:
            yield
        except BaseException:
            self.write(f"<== {title}: FAILED after {time.monotonic() - start:.2f}s")
            raise
        self.write(f"<== {title}: {time.monotonic() - start:.2f}s")


def tail(path: Path | str | None, last_n_lines: int | None = None) -> str:
    """The last ``last_n_lines`` lines of a log (all of it, up to 8 MiB, when None)."""
    if path is None:
        return ""
    file = Path(path)
    if not file.exists():
        return ""
    with file.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - MAX_TAIL_BYTES))
        data = fh.read()
    lines = data.decode("utf-8", errors="replace").splitlines()
    if size > MAX_TAIL_BYTES and lines:
        lines = lines[1:]  # the first line was cut
    if last_n_lines is not None and last_n_lines > 0:
        lines = lines[-last_n_lines:]
    return "\n".join(lines) + ("\n" if lines else "")
