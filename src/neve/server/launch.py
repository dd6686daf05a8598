"""Start and stop an inference server process (used by tests, benchmarks and the compute backend).

``start_server(model_dir, port=0, ...)`` runs ``<python> -m neve.server`` in its own process
group and returns once the server has bound its port (the server writes it to a port file, so
port 0 is race-free). ``ServerProcess.wait_ready()`` then polls ``GET /ready``, which answers
only when a worker has loaded the model; if the server exits instead (e.g. the model does not
load) it raises with the end of the server's log. ``stop()`` sends SIGTERM (graceful) and
kills the whole process group if that does not end it in time.

Standard library only, so it can be imported anywhere ``neve`` is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from neve.errors import InvalidArgumentError, ServiceUnavailableError

# start_server keyword -> command-line flag of ``python -m neve.server``.
OPTION_FLAGS = {
    "max_batch_rows": "--max-batch-rows",
    "max_queue_rows": "--max-queue-rows",
    "batch_timeout_ms": "--batch-timeout-ms",
    "max_body_bytes": "--max-body-bytes",
    "max_inflight_bytes": "--max-inflight-bytes",
    "queue_timeout_s": "--queue-timeout-s",
    "max_connections": "--max-connections",
    "max_concurrent_batches": "--max-concurrent-batches",
    "threads_per_worker": "--threads-per-worker",
    "device": "--device",
    "model_name": "--model-name",
    "log_level": "--log-level",
    "grpc_port": "--grpc-port",
}
FLAG_OPTIONS = {"access_log": "--access-log"}


def server_command(
    model_dir: str | os.PathLike,
    *,
    python: str = sys.executable,
    host: str = "127.0.0.1",
    port: int = 0,
    num_workers: int | None = None,
    port_file: str | os.PathLike | None = None,
    **opts: Any,
) -> list[str]:
    """The argv that starts a server (what ``start_server`` runs)."""
    cmd = [str(python), "-m", "neve.server", "--model-dir", str(model_dir)]
    cmd += ["--host", host, "--port", str(port)]
    if num_workers is not None:
        cmd += ["--num-workers", str(num_workers)]
    if port_file is not None:
        cmd += ["--port-file", str(port_file)]
    unknown = sorted(k for k in opts if k not in OPTION_FLAGS and k not in FLAG_OPTIONS)
    if unknown:
        raise InvalidArgumentError(
            f"unknown server option(s) {unknown}; valid: {sorted([*OPTION_FLAGS, *FLAG_OPTIONS])}"
        )
    for key, value in opts.items():
        if value is None:
            continue
        if key in FLAG_OPTIONS:
            if value:
                cmd.append(FLAG_OPTIONS[key])
        else:
            cmd += [OPTION_FLAGS[key], str(value)]
    return cmd


def read_port_file(path: str | os.PathLike) -> tuple[int, int | None] | None:
    """(HTTP port, V2 gRPC port or None) from a server's ``--port-file``; None until written."""
    try:
        lines = Path(path).read_text().split()
    except OSError:
        return None
    if not lines:
        return None
    return int(lines[0]), (int(lines[1]) if len(lines) > 1 else None)


class ServerProcess:
    """A running ``python -m neve.server`` process (the front plus its workers)."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        model_dir: str,
        host: str,
        port: int,
        log_path: Path,
        *,
        remove_log: bool,
        scratch: Path,
    ) -> None:
        self.process = process
        self.model_dir = model_dir
        self.host = host
        self.port = port
        #: The V2 gRPC port (``grpc_port=`` option), None when the server serves HTTP only.
        self.grpc_port: int | None = None
        self.log_path = log_path
        self._remove_log = remove_log
        self._scratch = scratch

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    @property
    def grpc_address(self) -> str:
        """``host:port`` of the V2 gRPC port (what ``tritonclient.grpc`` takes as url)."""
        if self.grpc_port is None:
            raise InvalidArgumentError("this server was started without grpc_port")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"[{host}]:{self.grpc_port}" if ":" in host else f"{host}:{self.grpc_port}"

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout: float = 60.0, *, all_workers: bool = False) -> dict:
        """Wait until ``GET /ready`` answers 200 and return its body.

        The first worker with a loaded model makes the server ready; ``all_workers=True`` waits
        until every worker has loaded it (``workers_ready == workers`` in the body).
        Raises ``ServiceUnavailableError`` (with the log's tail) when the server exits first or
        is not ready within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while True:
            code = self.process.poll()
            if code is not None:
                raise ServiceUnavailableError(
                    f"inference server for {self.model_dir} exited with status {code} before it was "
                    f"ready; log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/ready", timeout=2.0) as resp:
                    if resp.status == 200:
                        body = json.loads(resp.read())
                        if not all_workers or body.get("workers_ready", 0) >= body.get(
                            "workers", 1
                        ):
                            return body
                        last_error = f"{body.get('workers_ready')}/{body.get('workers')} ready"
                    else:
                        last_error = f"/ready answered {resp.status}"
            except urllib.error.HTTPError as exc:
                last_error = f"/ready answered {exc.code}"
            except (OSError, ValueError) as exc:  # refused while loading, reset, timeout
                last_error = str(exc)
            if time.monotonic() >= deadline:
                raise ServiceUnavailableError(
                    f"inference server for {self.model_dir} was not ready within {timeout:g} s "
                    f"({last_error}); log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def worker_pids(self) -> list[int]:
        """PIDs of the worker processes now alive (needs psutil)."""
        import psutil

        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        pids = []
        for child in children:
            try:
                if "spawn_main" in " ".join(child.cmdline()):
                    pids.append(child.pid)
            except psutil.Error:
                continue
        return pids

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> int | None:
        """Stop gracefully (SIGTERM), then kill the process group; return the exit status."""
        if self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGTERM)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Workers live in the server's process group: kill whatever is left of it.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            code = self.process.wait(5)
        except subprocess.TimeoutExpired:
            code = None
        if self._remove_log:
            self.log_path.unlink(missing_ok=True)
        _rmtree(self._scratch)
        return code

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ServerProcess(pid={self.pid}, url={self.url!r}, alive={self.is_alive()})"


def start_server(
    model_dir: str | os.PathLike,
    *,
    python: str = sys.executable,
    host: str = "127.0.0.1",
    port: int = 0,
    num_workers: int | None = 1,
    env: dict[str, str] | None = None,
    log_path: str | os.PathLike | None = None,
    cwd: str | os.PathLike | None = None,
    start_timeout: float = 60.0,
    **opts: Any,
) -> ServerProcess:
    """Start a server on ``model_dir`` and return once it listens (not yet ready: see
    ``wait_ready``). ``num_workers=None`` uses the server's default (2*cpus+1 on cpu).

    ``opts`` are the server's options by keyword: ``max_batch_rows``, ``max_queue_rows``,
    ``batch_timeout_ms``, ``max_body_bytes``, ``max_inflight_bytes``, ``queue_timeout_s``,
    ``max_connections``, ``max_concurrent_batches``, ``threads_per_worker``, ``device``,
    ``model_name``, ``log_level``, ``access_log``, ``grpc_port`` (0: serve V2 gRPC on a free
    port, then ``ServerProcess.grpc_port``).
    The server's stdout and stderr go to ``log_path`` (appended), or to a temporary file
    removed by ``stop()``.
    """
    scratch = Path(tempfile.mkdtemp(prefix="neve-server-"))
    port_file = scratch / "port"
    cmd = server_command(
        model_dir,
        python=python,
        host=host,
        port=port,
        num_workers=num_workers,
        port_file=port_file,
        **opts,
    )
    remove_log = log_path is None
    log_file = Path(log_path) if log_path is not None else scratch / "server.log"
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,  # own process group: stop() can kill the workers too
        )
    server = ServerProcess(
        process, str(model_dir), host, 0, log_file, remove_log=remove_log, scratch=scratch
    )
    deadline = time.monotonic() + start_timeout
    while (ports := read_port_file(port_file)) is None:
        code = process.poll()
        if code is not None or time.monotonic() >= deadline:
            tail = server.log_tail()
            server.stop()
            why = f"exited with status {code}" if code is not None else "did not bind in time"
            raise ServiceUnavailableError(
                f"inference server for {model_dir} {why}: {' '.join(cmd)}\n{tail}"
            )
        time.sleep(0.02)
    server.port, server.grpc_port = ports
    return server


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
