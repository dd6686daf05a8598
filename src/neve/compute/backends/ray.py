"""The ``ray`` backend: a compute pool whose instances run on the nodes of a Ray cluster.

Each service instance is a detached, named Ray actor (``ray_actor.InstanceActor``) that starts the
same ``python -m neve.server`` process the ``local`` backend starts, on the node Ray chose, and
reports where it listens. Why actors wrapping our server, not Ray Serve replicas: every instance
must serve the inference-server routes (service-function protocol, V2, ``/ready``, ``/metrics``,
admission control, batching, worker processes) so the gateway, SQL service functions and
``mv.run`` work unchanged; Serve would put its own HTTP proxy, router and request model in front
of the model and duplicate what neve's server and gateway already do. An actor is only a
placement and lifetime handle: Ray reserves the instance's CPUs / GPUs / memory on a node and
tells us when the node or process is gone.

- Placement: ``scheduling_strategy="SPREAD"`` with ``num_cpus`` / ``num_gpus`` / ``memory`` from
  the service's requests. Nodes labelled ``neve.io/instance-family`` (or ``neve.io/pool``) restrict
  a pool to nodes of its family (or to its own nodes): ``ray start --labels
  neve.io/instance-family=CPU_X64_S``. A cluster without such labels is one pool-wide node set.
- Restarts: the actor has ``max_restarts=0``. When its server exits, or its node is lost,
  ``is_alive`` turns False and the services supervisor restarts the instance (backoff,
  restart count, event log, new address in the catalog): one owner of restarts for every
  backend. A Ray-side restart would move the instance to another host:port behind the
  catalog's back.
- Lifetime: detached actors outlive the control plane; the handle stores the actor's name and
  namespace, so a restarted control plane finds, checks and stops them.
- Environment and logs: see ``ray_ship`` (trees shipped to nodes that lack them) and
  ``ray_actor`` (the server's output goes to the instance log when the node sees the control
  plane's filesystem; otherwise it stays on the node and ``LogPump`` appends it to the instance
  log over Ray).

The class is layered: ``ray_cluster.RayCluster`` (connection, nodes, finding / watching / stopping
actors, node proxies, log pump) <- ``RayBackend`` (starting instances).
"""

from __future__ import annotations

import math
import os
import secrets
import time
from pathlib import Path
from typing import Any

from neve.compute.backends import ray_actor
from neve.compute.backends.base import InstanceHandle, InstanceSpec
from neve.compute.backends.ray_cluster import (
    CALL_TIMEOUT_S,
    FAMILY_LABEL,
    MIN_PLACEMENT_TIMEOUT_S,
    NODE_ID_LABEL,
    PLACEMENT_RECHECK_S,
    RayCluster,
    log,
    node_name,
    remote_class,
)
from neve.errors import ResourceError, ServiceUnavailableError
from neve.server.launch import server_command


class RayBackend(RayCluster):
    """Starting instances: placement (away from lost nodes) and the server's start."""

    # -- start ------------------------------------------------------------------------------------
    def start_instance(self, spec: InstanceSpec) -> InstanceHandle:
        ray = self.ray
        request = spec.request
        nodes = self.cluster_nodes()
        self._check_fits(spec, nodes)
        trees = self.shipper.trees_for(spec.python, spec.model_dir)
        python = os.path.join(
            os.path.realpath(os.path.dirname(spec.python)), Path(spec.python).name
        )
        num_workers = spec.num_workers or _default_workers(request.cpu, request.gpu)
        argv = server_command(
            "{model_dir}",
            python="python",
            host="{host}",
            port=0,
            num_workers=num_workers,
            port_file="{port_file}",
            max_batch_rows=spec.max_batch_rows,
            **{"grpc_port": 0, **spec.server_options},
        )[3:]  # drop "python -m neve.server": the actor runs the image's python
        config = {
            "service": spec.service,
            "instance": spec.instance_index,
            "argv": argv,
            "python": python,
            "model_dir": os.path.realpath(spec.model_dir),
            "trees": {t.path: t.descriptor() for t in trees},
            "ship": self.address.ship,
            "cache_dir": self.address.cache_dir,
            "log_path": str(spec.log_path),
            "log_probe": list(self._log_probe()),
            "env": {
                **spec.env,
                "NEVE_SERVICE": spec.service,
                "NEVE_INSTANCE": str(spec.instance_index),
            },
            "host": None if spec.host in ("127.0.0.1", "0.0.0.0", "", None) else spec.host,
            "start_timeout_s": spec.start_timeout_s,
        }
        if self.address.loopback:
            config["host"] = "127.0.0.1"
        options: dict[str, Any] = {
            "name": f"{spec.service}/{spec.instance_index}/{secrets.token_hex(4)}",
            "namespace": self.namespace,
            "lifetime": "detached",
            "max_restarts": 0,
            "max_concurrency": 4,  # info/read_log answer while start() runs
            "num_cpus": request.cpu,
            "num_gpus": request.gpu,
            "memory": int(request.memory_gb * 2**30),
            "scheduling_strategy": "SPREAD",
        }
        selector = self._label_selector(nodes) or {}
        avoid = self._nodes_to_avoid()
        if avoid:
            log.info(
                "%s/%s: not on Ray node %s (an instance there died and its raylet does not answer)",
                spec.service,
                spec.instance_index,
                ", ".join(node_name(n) for n in avoid),
            )
            selector[NODE_ID_LABEL] = (
                f"!{avoid[0]}" if len(avoid) == 1 else f"!in({','.join(avoid)})"
            )
        if selector:
            options["label_selector"] = selector
        Path(spec.log_path).parent.mkdir(parents=True, exist_ok=True)
        placement_timeout = max(spec.start_timeout_s, MIN_PLACEMENT_TIMEOUT_S)
        actor_name, actor, prepared = self._place(
            config,
            options,
            placement_timeout,
            f"instance {spec.instance_index} of {spec.service} was not placed on a Ray node "
            f"within {placement_timeout:g} s (it requests {request.describe()}",
        )
        try:
            shipped = self.shipper.refs(ray, trees, prepared["missing"])
            if shipped:
                log.info(
                    "shipping %s to Ray node %s for %s/%s",
                    ", ".join(shipped),
                    node_name(prepared["node_id"]),
                    spec.service,
                    spec.instance_index,
                )
            info = self._get(
                actor.start.remote(shipped),
                spec.start_timeout_s + 60.0 * len(shipped),
                f"instance {spec.instance_index} of {spec.service} did not start in time",
            )
        except BaseException:
            self._kill(actor_name, actor)
            raise
        handle = InstanceHandle(
            host=info["host"],
            port=int(info["port"]),
            pid=info["pid"],
            node=node_name(info["node_id"]),
            backend=self.name,
            backend_ref={
                "actor_name": actor_name,
                "namespace": self.namespace,
                "node_id": info["node_id"],
                "log_path": str(spec.log_path),
                "node_log_path": None if info["shared_logs"] else info["log_path"],
                "python": info["python"],
                "model_dir": info["model_dir"],
                "service": spec.service,
                "instance": spec.instance_index,
                "port": int(info["port"]),
                **({"grpc_port": int(info["grpc_port"])} if info.get("grpc_port") else {}),
            },
        )
        if not info["shared_logs"]:
            self._pump.track(actor_name, actor, Path(spec.log_path), offset=0)
        return handle

    def _place(
        self, config: dict[str, Any], options: dict[str, Any], timeout: float, what: str
    ) -> tuple[str, Any, dict[str, Any]]:
        """Create the instance's actor and wait until Ray has placed it (its ``prepare`` answered).

        Ray may have put the actor on a node lost meanwhile (the GCS notices a lost node only
        after its health checks fail): when a node goes while the actor waits, it is created
        again (under a new name, returned) instead of waiting out the whole timeout. Nothing
        short of that: an actor Ray placed may take long to start its worker on a busy node.
        """
        ray = self.ray
        deadline = time.monotonic() + timeout
        while True:
            alive = self._alive_node_ids()
            actor = remote_class(ray, ray_actor.InstanceActor).options(**options).remote(config)
            with self._lock:
                self._actors[options["name"]] = actor
            prepared_ref = actor.prepare.remote()
            try:
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ServiceUnavailableError(f"{what}; free now: {self._free_text()})")
                    done, _ = ray.wait([prepared_ref], timeout=min(PLACEMENT_RECHECK_S, left))
                    if done:
                        prepared = self._get(prepared_ref, CALL_TIMEOUT_S, what + ")")
                        return options["name"], actor, prepared
                    lost = alive - self._alive_node_ids()
                    if lost:
                        break
            except BaseException:
                self._kill(options["name"], actor)
                raise
            log.info(
                "%s: Ray node %s was lost while it waited for placement; placing it again",
                options["name"],
                ", ".join(node_name(n) for n in sorted(lost)),
            )
            self._kill(options["name"], actor)
            with self._lock:
                for node_id in lost:
                    self._suspect_nodes.pop(node_id, None)
            options = {
                **options,
                "name": f"{options['name'].rsplit('/', 1)[0]}/{secrets.token_hex(4)}",
            }

    def _check_fits(self, spec: InstanceSpec, nodes: list[dict[str, Any]]) -> None:
        """Refuse at once what no node of the cluster could ever hold."""
        request = spec.request
        if not nodes:
            raise ResourceError(
                f"compute pool {self.pool.name}: the Ray cluster at {self.address.target} has no "
                f"alive node for instance family {self.pool.family.name}"
                + (
                    f" (nodes are labelled {FAMILY_LABEL}; label some with {self.pool.family.name})"
                    if any(FAMILY_LABEL in n["labels"] for n in self.ray_nodes_raw())
                    else ""
                )
            )
        memory = request.memory_gb
        if not any(
            n["cpu"] + 1e-9 >= request.cpu
            and n["gpu"] + 1e-9 >= request.gpu
            and n["memory_gb"] + 1e-9 >= memory
            for n in nodes
        ):
            sizes = "; ".join(
                f"{n['name']}: {n['cpu']:g} CPU, {n['gpu']:g} GPU, {n['memory_gb']:.1f} GiB"
                for n in nodes
            )
            raise ResourceError(
                f"instance {spec.instance_index} of {spec.service} requests "
                f"{request.describe()}, more than any node of the Ray cluster of compute pool "
                f"{self.pool.name} has ({sizes})"
            )


def _default_workers(cpu: float, gpu: int) -> int:
    """DESIGN's default per instance (2 * cpus + 1 on CPU, 1 on GPU), from the Ray request:
    the server's own default would count every core of the node, not the instance's share."""
    if gpu:
        return 1
    return 2 * max(1, math.floor(cpu)) + 1
