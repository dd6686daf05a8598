"""The ``local`` backend: every instance is a ``python -m neve.server`` process on this machine.

Each instance runs detached, in its own session and process group (``start_new_session``), with
the image environment's python, its output appended to the instance log. It outlives the
control plane: the handle records pid, process group and the process's start time, so a
restarted daemon can tell "still our server" from "a recycled pid" and stop it. Stopping sends
SIGTERM (the server drains and stops its workers), then SIGKILLs the whole process group, so no
worker is left behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psutil

from neve.compute.backends.base import ComputeBackend, InstanceHandle, InstanceSpec
from neve.compute.backends.ray_actor import instance_environment, rotate_log
from neve.errors import ServiceUnavailableError
from neve.server.launch import read_port_file, server_command

_CREATE_TIME_SLACK = 0.05  # seconds: psutil create times are rounded


class LocalBackend(ComputeBackend):
    name = "local"

    def __init__(self, pool) -> None:  # noqa: ANN001 (PoolInfo; see base)
        super().__init__(pool)
        # Processes this daemon started: polled so that dead ones are reaped, not left zombies.
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    # -- start ------------------------------------------------------------------------------------
    def start_instance(self, spec: InstanceSpec) -> InstanceHandle:
        python = Path(spec.python)
        if not python.exists():
            raise ServiceUnavailableError(
                f"cannot start instance {spec.instance_index} of {spec.service}: image python "
                f"{python} does not exist (was the image removed?)"
            )
        log_path = Path(spec.log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.pool.runs_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="start-", dir=self.pool.runs_dir))
        port_file = scratch / "port"
        cmd = server_command(
            spec.model_dir,
            python=str(python),
            host=spec.host,
            port=0,
            num_workers=spec.num_workers,
            port_file=port_file,
            max_batch_rows=spec.max_batch_rows,
            **{"grpc_port": 0, **spec.server_options},
        )
        env = self._environment(spec)
        try:
            rotate_log(log_path)
            with log_path.open("ab") as log:
                process = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=str(log_path.parent),  # never the repo: `-m` puts cwd on sys.path
                    start_new_session=True,  # own process group: stop kills the workers too
                )
            with self._lock:
                self._children[process.pid] = process
            handle = InstanceHandle(
                host=spec.host,
                port=0,
                pid=process.pid,
                node=spec.node,
                backend=self.name,
                backend_ref={
                    "pid": process.pid,
                    "pgid": process.pid,  # session leader: its pid is the group id
                    "create_time": _create_time(process.pid),
                    "log_path": str(log_path),
                    "python": str(python),
                    "service": spec.service,
                    "instance": spec.instance_index,
                },
            )
            handle.port, grpc_port = self._wait_for_port(process, port_file, spec, handle)
            handle.backend_ref["port"] = handle.port
            if grpc_port is not None:
                handle.backend_ref["grpc_port"] = grpc_port
            return handle
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    @staticmethod
    def _environment(spec: InstanceSpec) -> dict[str, str]:
        env = instance_environment(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        # Only the GPUs placement gave this instance are visible to it (none: none).
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in spec.gpu_ids)
        env["NEVE_SERVICE"] = spec.service
        env["NEVE_INSTANCE"] = str(spec.instance_index)
        if spec.node:
            env["NEVE_NODE"] = spec.node
        env.update({str(k): str(v) for k, v in spec.env.items()})
        return env

    def _wait_for_port(
        self,
        process: subprocess.Popen[bytes],
        port_file: Path,
        spec: InstanceSpec,
        handle: InstanceHandle,
    ) -> tuple[int, int | None]:
        deadline = time.monotonic() + spec.start_timeout_s
        while True:
            ports = read_port_file(port_file)
            if ports is not None:
                return ports
            code = process.poll()
            if code is not None or time.monotonic() >= deadline:
                self.stop_instance(handle, timeout=2.0)
                why = (
                    f"exited with status {code}"
                    if code is not None
                    else f"did not listen within {spec.start_timeout_s:g} s"
                )
                raise ServiceUnavailableError(
                    f"instance {spec.instance_index} of {spec.service} {why}; log "
                    f"{spec.log_path}:\n{_tail(Path(spec.log_path))}"
                )
            time.sleep(0.02)

    # -- watch ------------------------------------------------------------------------------------
    def is_alive(self, handle: InstanceHandle) -> bool:
        pid = handle.pid
        if pid is None:
            return False
        with self._lock:
            child = self._children.get(pid)
        if child is not None:
            return child.poll() is None
        proc = self._process(handle)
        if proc is None:
            return False
        try:
            return proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def _process(self, handle: InstanceHandle) -> psutil.Process | None:
        """The instance's leader process, unless its pid now belongs to another process."""
        if handle.pid is None:
            return None
        try:
            proc = psutil.Process(handle.pid)
            started = handle.backend_ref.get("create_time")
            if (
                started is not None
                and abs(proc.create_time() - float(started)) > _CREATE_TIME_SLACK
            ):
                return None  # the pid was recycled: our instance is gone
            return proc
        except psutil.Error:
            return None

    # -- stop -------------------------------------------------------------------------------------
    def stop_instance(self, handle: InstanceHandle, timeout: float = 15.0) -> None:
        with self._lock:
            child = self._children.get(handle.pid) if handle.pid is not None else None
        if child is not None:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)  # graceful: the server stops its workers
                try:
                    child.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
        else:
            leader = self._process(handle)
            try:
                if leader is not None and leader.status() != psutil.STATUS_ZOMBIE:
                    leader.send_signal(signal.SIGTERM)
                    leader.wait(timeout)
            except (psutil.TimeoutExpired, psutil.Error):
                pass
        # Whatever is left of the group (a stuck leader, orphaned workers) is killed.
        for proc in self._group_members(handle):
            try:
                proc.kill()
            except psutil.Error:
                pass
        if child is not None:
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                pass
            with self._lock:
                self._children.pop(child.pid, None)

    @staticmethod
    def _group_members(handle: InstanceHandle) -> list[psutil.Process]:
        """Processes still in the instance's process group (workers included).

        Only processes started no earlier than the instance count: a recycled group id cannot
        take an unrelated process down with it.
        """
        pgid = handle.backend_ref.get("pgid", handle.pid)
        if pgid is None:
            return []
        started = float(handle.backend_ref.get("create_time") or 0.0) - _CREATE_TIME_SLACK
        members = []
        for proc in psutil.process_iter(["pid", "create_time"]):
            try:
                if os.getpgid(proc.pid) == int(pgid) and proc.info["create_time"] >= started:
                    members.append(proc)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        return members

    def close(self) -> None:
        # Instances outlive the daemon on purpose; only forget the Popen objects.
        with self._lock:
            self._children.clear()


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
