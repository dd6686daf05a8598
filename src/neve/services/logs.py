"""Where a service's logs live, and reading the end of them.

Layout under the account's log directory::

    logs/services/<db>.<schema>.<service>/<instance>/model-inference.log   stdout+stderr
    logs/services/<db>.<schema>.<service>/events.log                       supervisor events

The instance process writes its own file (the compute backend redirects its output there), so
the log survives the daemon; a restart appends a marker line and the new process's output after
it. ``events.log`` records what the supervisor did (started, crashed, restarted, scaled,
suspended) with a timestamp, so ``neve services logs`` can explain a restart.
"""

from __future__ import annotations

import logging
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

from neve.identifiers import QualifiedName
from neve.services.spec import CONTAINER_NAME

log = logging.getLogger("neve.services")

#: Most bytes returned for "the whole log": older output is cut (the file keeps it).
MAX_LOG_BYTES = 8 * 1024 * 1024
EVENTS_FILE = "events.log"


def service_dir_name(qn: QualifiedName) -> str:
    # Unquoted names keep the path readable; quoted parts cannot contain '/' or '..'.
    return f"{qn.database}.{qn.schema}.{qn.name}"


class ServiceLogs:
    def __init__(self, logs_dir: Path) -> None:
        self.root = Path(logs_dir) / "services"

    def service_dir(self, qn: QualifiedName) -> Path:
        return self.root / service_dir_name(qn)

    def instance_log(
        self, qn: QualifiedName, instance: int, container: str = CONTAINER_NAME
    ) -> Path:
        return self.service_dir(qn) / str(int(instance)) / f"{container}.log"

    def mark_start(self, qn: QualifiedName, instance: int, text: str) -> Path:
        """Append a marker line before a (re)started process writes to the instance log."""
        path = self.instance_log(qn, instance)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(f"--- {_now()} neve: {text}\n")
        return path

    def event(self, qn: QualifiedName, text: str, *, level: int = logging.INFO) -> None:
        """Record a supervisor event in the service's events log and the Python log."""
        log.log(level, "service %s: %s", qn, text)
        directory = self.service_dir(qn)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with (directory / EVENTS_FILE).open("a", encoding="utf-8") as fh:
                fh.write(f"{_now()} {text}\n")
        except OSError:  # a full disk must not stop supervision
            log.exception("cannot write the events log of service %s", qn)

    def events_log(self, qn: QualifiedName) -> Path:
        return self.service_dir(qn) / EVENTS_FILE

    def events(self, qn: QualifiedName, last_n_lines: int | None = None) -> str:
        return tail(self.events_log(qn), last_n_lines)

    def remove(self, qn: QualifiedName) -> None:
        shutil.rmtree(self.service_dir(qn), ignore_errors=True)


def tail(path: Path, last_n_lines: int | None = None) -> str:
    """The last ``last_n_lines`` lines of ``path`` (all of it, up to MAX_LOG_BYTES, when None)."""
    if not path.exists():
        return ""
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if last_n_lines is None or last_n_lines <= 0:
            start = max(0, size - MAX_LOG_BYTES)
            fh.seek(start)
            data = fh.read()
            if start > 0:  # drop the partial first line
                data = data.split(b"\n", 1)[-1]
            return data.decode("utf-8", errors="replace")
        # Read backwards in blocks until enough line breaks are seen (logs can be large).
        block = 64 * 1024
        pos = size
        chunks: list[bytes] = []
        newlines = 0
        while pos > 0 and newlines <= last_n_lines and size - pos < MAX_LOG_BYTES:
            step = min(block, pos)
            pos -= step
            fh.seek(pos)
            chunk = fh.read(step)
            chunks.append(chunk)
            newlines += chunk.count(b"\n")
        data = b"".join(reversed(chunks))
    lines = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(lines[-last_n_lines:]) + ("\n" if lines else "")


#: Most bytes one follow read returns (the next read goes on from there).
MAX_FOLLOW_BYTES = 1024 * 1024


def read_from(path: Path, offset: int) -> tuple[str, int]:
    """What was appended to ``path`` since byte ``offset``, and the offset to read from next.

    ``offset`` -1 is the end (nothing read: where to follow from). A file shorter than
    ``offset`` was rotated or replaced: it is read from its start. At most MAX_FOLLOW_BYTES,
    ending at a line break when there is one."""
    if not path.exists():
        return "", 0
    with path.open("rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        if offset < 0:
            return "", size
        if offset > size:
            offset = 0
        fh.seek(offset)
        data = fh.read(MAX_FOLLOW_BYTES)
    if len(data) == MAX_FOLLOW_BYTES and b"\n" in data:
        data = data[: data.rindex(b"\n") + 1]  # a whole last line; the rest comes next time
    return data.decode("utf-8", errors="replace"), offset + len(data)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
