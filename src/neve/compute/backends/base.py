"""The compute backend interface: start, stop and watch inference-server instances.

A backend runs the processes of one compute pool. ``ComputeManager`` owns the pool's catalog
rows (nodes, allocations) and decides on which node an instance goes; the backend makes the
instance run there and tells whether it still does:

- ``start_instance(spec) -> InstanceHandle``: returns once the server listens (not yet ready:
  ``wait_ready`` polls ``GET /ready``),
- ``stop_instance(handle)``: graceful stop, then kill whatever is left (no orphans),
- ``is_alive(handle) -> bool``, ``node_names() -> list[str]``.

An ``InstanceHandle`` is JSON-able (``to_json``/``from_json``): the services supervisor stores it
in ``service_instances.backend_ref`` and, after a control-plane restart, rebuilds it to check on
or stop an instance that outlived the old daemon. The ``local`` backend runs processes on this
machine; the Ray backend (a later issue) implements the same interface on a Ray cluster.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from neve.compute.families import InstanceFamily
from neve.compute.resources import ResourceRequest
from neve.errors import ServiceUnavailableError


@dataclass(frozen=True)
class InstanceSpec:
    """Everything a backend needs to start one instance of a service."""

    python: str  # the image environment's python executable
    model_dir: str  # a directory written by neve.models.save_model
    service: str  # qualified service name (db.schema.name), for logs and process titles
    instance_index: int
    log_path: str  # stdout and stderr of the instance are appended here
    request: ResourceRequest = field(default_factory=ResourceRequest)
    num_workers: int | None = None  # None: the server's default (2 * cpus + 1 on CPU)
    max_batch_rows: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    node: str | None = None  # the pool node ComputeManager.place chose
    gpu_ids: tuple[int, ...] = ()  # GPUs of that node given to this instance
    host: str = "127.0.0.1"
    # Further ``python -m neve.server`` options by keyword (see neve.server.launch.OPTION_FLAGS).
    server_options: dict[str, Any] = field(default_factory=dict)
    start_timeout_s: float = 60.0  # until the server has bound its port


@dataclass
class InstanceHandle:
    """A running instance: where it listens and how the backend finds it again."""

    host: str
    port: int
    pid: int | None
    node: str | None
    backend: str
    backend_ref: dict[str, Any] = field(default_factory=dict)  # backend-specific, JSON-able

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstanceHandle:
        return cls(
            host=str(data["host"]),
            port=int(data["port"]),
            pid=None if data.get("pid") is None else int(data["pid"]),
            node=data.get("node"),
            backend=str(data.get("backend") or "local"),
            backend_ref=dict(data.get("backend_ref") or {}),
        )

    @classmethod
    def from_json(cls, text: str) -> InstanceHandle:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class PoolInfo:
    """What a backend knows of its pool (a snapshot; node names come from a callback)."""

    name: str
    family: InstanceFamily
    backend: str
    address: str | None
    runs_dir: Path  # scratch space for the backend (port files, process records)
    nodes: Callable[[], list[str]]


class ComputeBackend(ABC):
    """Runs instances for one compute pool. Implementations must be thread-safe."""

    name: ClassVar[str]

    def __init__(self, pool: PoolInfo) -> None:
        self.pool = pool

    @abstractmethod
    def start_instance(self, spec: InstanceSpec) -> InstanceHandle:
        """Start one instance; return once it listens, or raise ``ServiceUnavailableError``."""

    @abstractmethod
    def stop_instance(self, handle: InstanceHandle, timeout: float = 15.0) -> None:
        """Stop gracefully, then kill what is left; idempotent (a dead instance is fine)."""

    @abstractmethod
    def is_alive(self, handle: InstanceHandle) -> bool:
        """Whether the instance's process (or actor) still runs."""

    def node_names(self) -> list[str]:
        """Names of the nodes this backend runs instances on now."""
        return list(self.pool.nodes())

    def wait_ready(self, handle: InstanceHandle, timeout: float = 60.0) -> dict:
        """Poll ``GET /ready`` until it answers 200; return its JSON body.

        Raises ``ServiceUnavailableError`` when the instance dies first or is not ready in time.
        """
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            if not self.is_alive(handle):
                raise ServiceUnavailableError(
                    f"instance at {handle.url} (pool {self.pool.name}) exited before it was ready"
                    + _log_hint(handle)
                )
            try:
                with urllib.request.urlopen(f"{handle.url}/ready", timeout=2.0) as resp:
                    body = resp.read()
                    if resp.status == 200:
                        return json.loads(body) if body else {}
                    last = f"/ready answered {resp.status}"
            except urllib.error.HTTPError as exc:
                last = f"/ready answered {exc.code}"
            except (OSError, ValueError) as exc:  # refused while loading, reset, timeout
                last = str(exc)
            if time.monotonic() >= deadline:
                raise ServiceUnavailableError(
                    f"instance at {handle.url} (pool {self.pool.name}) was not ready within "
                    f"{timeout:g} s ({last})" + _log_hint(handle)
                )
            time.sleep(0.1)

    def ensure_ingress_proxies(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        """Keep an ingress proxy on each of the pool's nodes; what each one reports.

        The ``local`` pool's machine is the control plane's, whose own proxies serve it: none
        here. ``config``: ``control_url``, ``secret``, ``settings``, ``python``, ``port``,
        ``grpc_port`` (see ``ray_actor.ProxyActor``).
        """
        return []

    def stop_ingress_proxies(self) -> None:  # noqa: B027 (optional hook, see above)
        """Stop the proxies ``ensure_ingress_proxies`` started (the pool is dropped)."""

    def close(self) -> None:  # noqa: B027 (optional hook: most backends hold nothing)
        """Release client resources. Running instances are left running (they outlive us)."""


def _log_hint(handle: InstanceHandle) -> str:
    path = handle.backend_ref.get("log_path")
    if not path:
        return ""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()[-20:]
    except OSError:
        return ""
    return f"; log {path}:\n" + "\n".join(lines)
