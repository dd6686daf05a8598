"""Run the build's commands (uv, the new environment's python) under a deadline.

Each command runs in its own process group with its output streamed into the build log. When
the build's time limit passes, or the job is cancelled, the whole group is killed (uv and any
build backend it started), so nothing keeps writing into the half-built environment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

from neve.environments.buildlog import BuildLog
from neve.errors import BuildError

#: Variables of the control plane's environment that would point uv or the new python at the
#: control plane's own virtualenv or packages.
SCRUBBED_ENV = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CONDA_PREFIX", "UV_PROJECT_ENVIRONMENT")


class BuildTimeoutError(BuildError):
    code = "BUILD_TIMEOUT"


class BuildCancelledError(BuildError):
    code = "BUILD_CANCELLED"


@dataclass
class Deadline:
    """The build's time limit, and its cancel switch."""

    limit_s: float
    started: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    #: Why it was cancelled (said in the job's status and log), when it was.
    cancel_reason: str | None = None

    def remaining(self) -> float:
        return self.limit_s - (time.monotonic() - self.started)

    def cancel(self, reason: str | None = None) -> None:
        self.cancel_reason = reason
        self.cancelled.set()

    def check(self, what: str) -> None:
        if self.cancelled.is_set():
            why = f": {self.cancel_reason}" if self.cancel_reason else ""
            raise BuildCancelledError(f"build cancelled during {what}{why}")
        if self.remaining() <= 0:
            raise BuildTimeoutError(
                f"build exceeded its time limit of {self.limit_s:g} s (during {what})"
            )


@dataclass
class CommandResult:
    returncode: int
    output: str


def run_command(
    argv: list[str],
    *,
    log: BuildLog,
    deadline: Deadline,
    what: str,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    log_output: bool = True,
) -> CommandResult:
    """Run ``argv``; its output goes to ``log`` (unless ``log_output`` is false) and is returned.
    Kills it at the deadline."""
    deadline.check(what)
    full_env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    full_env.update(env or {})
    shown = [
        "'<inline script>'" if i > 0 and argv[i - 1] == "-c" and "\n" in a else a
        for i, a in enumerate(argv)
    ]
    log.write("$ " + " ".join(shown))
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=full_env,
        cwd=cwd,
        start_new_session=True,  # its own group: a timeout kills uv and its children
    )
    chunks: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            chunks.append(line)
            if log_output:
                log.write("    " + line)

    reader = threading.Thread(target=pump, name=f"build-output-{proc.pid}", daemon=True)
    reader.start()
    try:
        while proc.poll() is None:
            if deadline.cancelled.is_set() or deadline.remaining() <= 0:
                _kill_group(proc)
                deadline.check(what)
            time.sleep(0.05)
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        reader.join(timeout=5)
    return CommandResult(proc.returncode, "\n".join(chunks))


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass
