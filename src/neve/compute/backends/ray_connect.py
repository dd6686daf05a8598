"""The control plane's connection to a Ray cluster, and the pool's ``ADDRESS`` option.

A compute pool on Ray names its cluster in ``ADDRESS``:

- ``'ray://host:10001'``: Ray Client, for a control plane that is not a node of the cluster,
- ``'host:6379'``: the cluster's GCS address, for a control plane running on a cluster node,
- ``'auto'``: a single-machine cluster that neve starts (``ray start --head --block`` on
  127.0.0.1, owned by neve, outliving the control plane) and reuses afterwards.

Options may follow as a query string, e.g. ``'ray://head:10001?ship=always&cache_dir=/data/neve'``:
``ship`` (``auto``: ship an environment to a node only when the node lacks it; ``always``: ship
everything small enough, and pull logs over Ray, as for machines that share no filesystem),
``ship_limit_mb`` (largest tree shipped, default 2048), ``cache_dir`` (where nodes unpack shipped
trees), ``namespace`` (Ray namespace of the instances' actors) and ``unreachable_grace_s``
(how long an instance may be unreachable before it counts as dead, default 30).

A process is connected to at most one Ray cluster (``ray.init`` is process-wide): pools on the
same cluster share the connection; a pool on another cluster is refused with a clear error.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from neve.errors import InvalidArgumentError, NotSupportedError, ServiceUnavailableError
from neve.server.processes import pid_alive

log = logging.getLogger("neve.compute.ray")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
SHIP_MODES = ("auto", "always")
DEFAULT_SHIP_LIMIT_MB = 2048
DEFAULT_UNREACHABLE_GRACE_S = 30.0
AUTO_START_TIMEOUT_S = 180.0  # `ray start --head` takes ~10 s idle, ~50 s on a busy 2-core box
STARTED_LINE = "Ray runtime started."
CLIENT_ATTEMPTS = 3
_OPTIONS = ("ship", "ship_limit_mb", "cache_dir", "namespace", "unreachable_grace_s")

_connect_lock = threading.Lock()
_connected_to: str | None = None  # the address this process's ray.init used


@dataclass(frozen=True)
class RayAddress:
    """A parsed pool ``ADDRESS``."""

    kind: str  # "auto" | "gcs" | "client"
    target: str  # "host:port", "ray://host:port" or "auto"
    ship: str = "auto"
    ship_limit_mb: int = DEFAULT_SHIP_LIMIT_MB
    cache_dir: str | None = None
    namespace: str | None = None
    unreachable_grace_s: float = DEFAULT_UNREACHABLE_GRACE_S
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str | None:
        if self.kind == "auto":
            return "127.0.0.1"
        hostport = self.target.removeprefix("ray://")
        host, _, _port = hostport.rpartition(":")
        return host.strip("[]") or None

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS

    @classmethod
    def parse(cls, address: str | None, *, pool: str) -> RayAddress:
        text = (address or "auto").strip().strip("'\"")
        target, _, query = text.partition("?")
        options = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise InvalidArgumentError(
                f"compute pool {pool}: unknown ADDRESS option(s) {', '.join(unknown)}; "
                f"valid options: {', '.join(_OPTIONS)}"
            )
        if target.lower() in ("auto", ""):
            kind, target = "auto", "auto"
        elif target.startswith("ray://"):
            kind = "client"
        elif "://" in target:
            raise InvalidArgumentError(
                f"compute pool {pool}: ADDRESS {text!r} must be 'auto', 'ray://host:port' "
                "(Ray Client) or 'host:port' (the cluster's GCS address)"
            )
        else:
            kind = "gcs"
        if kind != "auto":
            hostport = target.removeprefix("ray://")
            host, sep, port = hostport.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise InvalidArgumentError(
                    f"compute pool {pool}: ADDRESS {text!r} must name a host and a port, "
                    "e.g. 'ray://head:10001' or 'head:6379'"
                )
            if host == "localhost":
                target = target.replace("localhost", "127.0.0.1", 1)
        ship = options.get("ship", "auto").lower()
        if ship not in SHIP_MODES:
            raise InvalidArgumentError(
                f"compute pool {pool}: ADDRESS option ship={ship!r} must be one of "
                f"{', '.join(SHIP_MODES)}"
            )
        try:
            limit = int(options.get("ship_limit_mb", DEFAULT_SHIP_LIMIT_MB))
            grace = float(options.get("unreachable_grace_s", DEFAULT_UNREACHABLE_GRACE_S))
        except ValueError:
            raise InvalidArgumentError(
                f"compute pool {pool}: ADDRESS options ship_limit_mb and unreachable_grace_s "
                "must be numbers"
            ) from None
        if limit < 0 or grace <= 0:
            raise InvalidArgumentError(
                f"compute pool {pool}: ship_limit_mb must be >= 0 and unreachable_grace_s > 0"
            )
        return cls(
            kind=kind,
            target=target,
            ship=ship,
            ship_limit_mb=limit,
            cache_dir=options.get("cache_dir") or None,
            namespace=options.get("namespace") or None,
            unreachable_grace_s=grace,
        )


def prefer_loopback() -> None:
    """Keep a loopback-only cluster on loopback.

    Ray rewrites ``127.0.0.1`` in an address to the machine's outward IP unless multi-machine
    clustering is off, so a cluster bound to 127.0.0.1 would be unreachable. The switch is read
    from the environment when Ray is imported (and inherited by processes Ray starts).
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if "ray" in sys.modules:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


def import_ray(address: RayAddress | None = None) -> Any:
    """``import ray`` with neve's defaults (no usage stats; loopback for loopback clusters)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    if address is not None and address.loopback:
        prefer_loopback()
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is a dependency
        raise NotSupportedError(f"compute backend 'ray' needs the ray package: {exc}") from None
    return ray


def connect(address: RayAddress, runs_dir: Path) -> str:
    """Connect this process to the pool's cluster (once); return the address connected to."""
    global _connected_to
    ray = import_ray(address)
    with _connect_lock:
        target = ensure_local_cluster(runs_dir) if address.kind == "auto" else address.target
        if ray.is_initialized():
            current = _connected_to or _current_gcs_address(ray)
            if current is not None and _same_cluster(current, target):
                _connected_to = current
                return current
            raise NotSupportedError(
                f"this control plane is connected to the Ray cluster at {current}; it cannot "
                f"also use {target} (one Ray cluster per control plane: put the pools on one "
                "cluster, or run another neve account for the other cluster)"
            )
        # Ray retries an unreachable GCS for minutes: answer at once when nothing listens there.
        host, _, port = target.removeprefix("ray://").rpartition(":")
        if not _port_open(host.strip("[]"), int(port), timeout=5.0):
            raise ServiceUnavailableError(
                f"cannot connect to the Ray cluster at {target}: nothing listens there (is the "
                "head node up? `ray start --head` prints the address to use)"
            )
        kwargs: dict[str, Any] = {
            "address": target,
            "log_to_driver": False,
            "logging_level": logging.WARNING,
            "ignore_reinit_error": True,
        }
        for attempt in range(CLIENT_ATTEMPTS if address.kind == "client" else 1):
            try:
                ray.init(**kwargs)
                break
            except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError...
                # Ray Client's head starts one server per client on the first free port from
                # 23000; two starting at once can pick the same one and one fails (said as
                # "client server failed", or, when the loser is already a zombie as the proxier
                # inspects it, as an "Initialization failure from server"). Try again.
                transient = any(sign in str(exc) for sign in _TRANSIENT_CLIENT_ERRORS)
                if attempt + 1 < CLIENT_ATTEMPTS and address.kind == "client" and transient:
                    _shutdown_quietly(ray)
                    time.sleep(1.0 + attempt)
                    continue
                _shutdown_quietly(ray)
                raise ServiceUnavailableError(
                    f"cannot connect to the Ray cluster at {target}: {exc}"
                ) from None
        _connected_to = target
        return target


_TRANSIENT_CLIENT_ERRORS = ("client server failed", "Initialization failure from server")


def _shutdown_quietly(ray: Any) -> None:
    try:
        ray.shutdown()
    except Exception:  # noqa: BLE001 - nothing was connected
        pass


def disconnect() -> None:
    """Drop this process's Ray connection (clusters and detached actors keep running)."""
    global _connected_to
    with _connect_lock:
        if "ray" in sys.modules:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        _connected_to = None


def _current_gcs_address(ray: Any) -> str | None:
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - client mode has no GCS address here
        return None


def _same_cluster(a: str, b: str) -> bool:
    def norm(x: str) -> str:
        return x.removeprefix("ray://").replace("localhost", "127.0.0.1")

    return norm(a) == norm(b)


# -- 'auto': a local cluster started and owned by neve --------------------------------------------
def ray_state_dir(runs_dir: Path) -> Path:
    """``<home>/run/ray`` for pools under ``<home>/run/pools/<id>`` (one auto cluster per account)."""
    if runs_dir.parent.name == "pools":
        return runs_dir.parent.parent / "ray"
    return runs_dir / "ray"


def ensure_local_cluster(runs_dir: Path, *, num_cpus: int | None = None) -> str:
    """The address of the account's local cluster, started now when none runs."""
    state_dir = ray_state_dir(runs_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    record = state_dir / "cluster.json"
    if record.exists():
        try:
            info = json.loads(record.read_text())
            if pid_alive(int(info["pid"])) and _port_open("127.0.0.1", int(info["port"])):
                return f"127.0.0.1:{info['port']}"
        except (OSError, ValueError, KeyError):
            pass
    port = _free_port()
    # Ray's socket paths must stay short (AF_UNIX limit): a temp dir under /tmp, not the account.
    temp_dir = tempfile.mkdtemp(prefix="neve-ray-")
    log_path = state_dir / "cluster.log"
    cmd = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--num-cpus={num_cpus or os.cpu_count() or 1}",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    with log_path.open("ab") as out:
        process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # outlives the control plane; stop_local_cluster ends it
        )
    deadline = time.monotonic() + AUTO_START_TIMEOUT_S
    # Up when `ray start` says so (its GCS port opens before the node's raylet is there).
    while not (_port_open("127.0.0.1", port) and STARTED_LINE in _tail(log_path, 200)):
        if process.poll() is not None or time.monotonic() >= deadline:
            _kill_group(process.pid)
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise ServiceUnavailableError(
                f"could not start a local Ray cluster (ray start --head, log {log_path}):\n"
                + _tail(log_path)
            )
        time.sleep(0.2)
    record.write_text(
        json.dumps({"pid": process.pid, "port": port, "temp_dir": temp_dir, "started": time.time()})
    )
    log.info("started a local Ray cluster at 127.0.0.1:%s (pid %s)", port, process.pid)
    return f"127.0.0.1:{port}"


def stop_local_cluster(runs_dir: Path, timeout: float = 30.0) -> bool:
    """Stop the account's 'auto' cluster (and every instance on it); False when none ran."""
    record = ray_state_dir(runs_dir) / "cluster.json"
    try:
        info = json.loads(record.read_text())
    except (OSError, ValueError):
        return False
    if _connected_to is not None and _same_cluster(_connected_to, f"127.0.0.1:{info['port']}"):
        disconnect()
    pid = int(info["pid"])
    stopped = False
    if pid_alive(pid):
        try:
            # To the leader only: `ray start --block` then stops its processes in order (a
            # SIGTERM to each of them at once leaves the GCS and the leader hanging).
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        stopped = True
    # Ray's processes share the session `ray start` led (start_new_session): wait for all of
    # them, then kill what is left, so nothing of the cluster outlives the stop.
    deadline = time.monotonic() + timeout
    while _session_members(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    for member in _session_members(pid):
        try:
            os.kill(member, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if info.get("temp_dir") and Path(info["temp_dir"]).name.startswith("neve-ray-"):
        shutil.rmtree(info["temp_dir"], ignore_errors=True)
    record.unlink(missing_ok=True)
    return stopped


def _session_members(sid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getsid(int(entry)) == sid and pid_alive(int(entry)):
                members.append(int(entry))
        except (ProcessLookupError, PermissionError):
            continue
    return members


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
