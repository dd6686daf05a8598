"""A real multi-node Ray cluster on this one machine, for tests and demos.

``LocalCluster(nodes=3)`` starts a head and ``nodes - 1`` worker nodes (separate raylets, object
stores and worker pools; one GCS) with ``ray.cluster_utils.Cluster``, sized for a small machine:
1 CPU and an 80 MiB object store per node, no dashboard, no autoscaler monitor, loopback only,
and a faster node-failure detector so a removed node is noticed in seconds. ``remove_node``
kills one worker node's processes (as a lost machine: no goodbye to the GCS).

Measured on a 2-core / 24 GiB machine (Ray 2.60): the head starts in ~8 s, each further node in
~3-5 s; the cluster holds ~1 GiB RSS for 3 nodes (per node: raylet ~30 MB, dashboard agent
~130 MB, runtime-env agent ~80 MB; head: GCS ~50 MB, API server ~120 MB, log monitor ~80 MB),
plus ~130 MB per actor process.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from neve.compute.backends.ray_connect import import_ray, prefer_loopback

OBJECT_STORE_BYTES = 80 * 2**20
#: Node failure detection: a node that misses 5 health checks 1 s apart is dead (default ~15 s+).
FAST_FAILURE_DETECTION = {
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 5,
}


class LocalCluster:
    def __init__(
        self,
        nodes: int = 3,
        *,
        cpus_per_node: float = 1,
        labels: dict[str, str] | None = None,
        fast_failure_detection: bool = True,
        client_server: bool = False,
    ) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self.nodes = nodes
        self.cpus_per_node = cpus_per_node
        self.labels = dict(labels or {})
        self.system_config = dict(FAST_FAILURE_DETECTION) if fast_failure_detection else {}
        self.cluster: Any = None
        self.head: Any = None
        self.workers: list[Any] = []
        self.temp_dir: str | None = None
        self.start_seconds: float | None = None
        self.client_port: int | None = _free_port() if client_server else None
        self._address_file: Path | None = None

    @property
    def address(self) -> str:
        """The GCS address (``127.0.0.1:<port>``): a pool's ``ADDRESS``."""
        return self.cluster.address

    @property
    def client_address(self) -> str | None:
        """``ray://127.0.0.1:<port>`` (Ray Client) when started with ``client_server=True``."""
        return f"ray://127.0.0.1:{self.client_port}" if self.client_port else None

    def _node_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "num_cpus": self.cpus_per_node,
            "object_store_memory": OBJECT_STORE_BYTES,
            "node_ip_address": "127.0.0.1",
        }
        if self.labels:
            args["labels"] = dict(self.labels)
        return args

    def start(self) -> LocalCluster:
        prefer_loopback()
        import_ray()
        from ray.cluster_utils import Cluster

        t0 = time.monotonic()
        # Ray's socket paths must stay short (AF_UNIX): a fresh directory right under /tmp.
        self.temp_dir = tempfile.mkdtemp(prefix="nray-")
        head_args = {
            **self._node_args(),
            "include_dashboard": False,
            "no_monitor": True,
            "temp_dir": self.temp_dir,
        }
        if self.system_config:
            head_args["_system_config"] = self.system_config
        if self.client_port:
            head_args["ray_client_server_port"] = self.client_port
        # Cluster writes its address file under Ray's default temp dir, which exists only
        # where Ray ran before: make it, and take the file back at shutdown.
        self._address_file = default_address_file()
        self._address_file.parent.mkdir(parents=True, exist_ok=True)
        self.cluster = Cluster(initialize_head=True, head_node_args=head_args)
        self.head = self.cluster.head_node
        try:
            for _ in range(self.nodes - 1):
                self.add_node()
            self.cluster.wait_for_nodes()
        except BaseException:
            self.shutdown()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def add_node(self, **overrides: Any) -> Any:
        node = self.cluster.add_node(**{**self._node_args(), **overrides})
        self.workers.append(node)
        return node

    def node_ids(self) -> list[str]:
        return [n.node_id for n in [self.head, *self.workers]]

    def remove_node(self, node: Any, *, graceful: bool = False) -> None:
        """Kill one worker node (not graceful: as if its machine were lost)."""
        self.cluster.remove_node(node, allow_graceful=graceful)
        self.workers.remove(node)

    def worker_by_id(self, node_id: str) -> Any | None:
        return next((n for n in self.workers if n.node_id == node_id), None)

    def shutdown(self) -> None:
        from neve.compute.backends.ray_connect import disconnect

        disconnect()
        if self.cluster is not None:
            self._forget_address()
            try:
                self.cluster.shutdown()
            finally:
                self.cluster = None
                self.workers = []
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None

    def _forget_address(self) -> None:
        """Remove the default address file when it names this cluster, so a later
        ``ray.init()`` on this machine does not try to join a cluster that is gone."""
        path = self._address_file
        try:
            if path is not None and path.read_text().strip() == self.cluster.address:
                path.unlink()
        except OSError:
            pass

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def default_address_file() -> Path:
    """Where ``ray.cluster_utils.Cluster`` records the cluster's address: ``ray_current_cluster``
    in Ray's default temp dir (``$RAY_TMPDIR/ray``, else ``$TMPDIR/ray``, else ``/tmp/ray``)."""
    root = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return Path(root) / "ray" / "ray_current_cluster"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
