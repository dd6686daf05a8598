"""The ``ray`` backend's cluster side: the connection, the nodes a pool may use, finding, watching and stopping instance actors, and the ingress proxy on every node (``RayBackend``'s first layer; starting instances is in ``ray``)."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

from neve.compute.backends import ray_actor, ray_trees
from neve.compute.backends.base import ComputeBackend, InstanceHandle, PoolInfo
from neve.compute.backends.ray_connect import RayAddress, connect, import_ray
from neve.compute.backends.ray_ship import TreeShipper
from neve.errors import ServiceUnavailableError

log = logging.getLogger("neve.compute.ray")

FAMILY_LABEL = "neve.io/instance-family"
POOL_LABEL = "neve.io/pool"
#: Seconds a method call on a live actor may take before we stop waiting (it is threaded).
CALL_TIMEOUT_S = 10.0
#: Seconds a live actor takes to answer at most (else it is treated as unreachable).
REACH_TIMEOUT_S = 3.0
#: Seconds an actor may wait for a node with room before the start fails.
MIN_PLACEMENT_TIMEOUT_S = 60.0
#: While an instance waits for placement, how often the cluster is checked for a lost node.
PLACEMENT_RECHECK_S = 5.0
#: Seconds a node stays suspect after an instance on it was found dead (see ``_nodes_to_avoid``).
SUSPECT_NODE_S = 60.0
#: Ray's default node label holding the node id (label selectors can exclude a node by it).
NODE_ID_LABEL = "ray.io/node-id"
LOG_PUMP_INTERVAL_S = 0.5

_remote_classes: dict[type, Any] = {}
_remote_classes_lock = threading.Lock()


def remote_class(ray: Any, actor: type) -> Any:
    """``actor`` (``ray_actor.InstanceActor`` or ``ProxyActor``) as a Ray actor class, made once;
    its modules are pickled by value, so nodes need no neve installed."""
    with _remote_classes_lock:
        if actor not in _remote_classes:
            ray.cloudpickle.register_pickle_by_value(ray_trees)
            ray.cloudpickle.register_pickle_by_value(ray_actor)
            _remote_classes[actor] = ray.remote(actor)
        return _remote_classes[actor]


def node_name(node_id: str) -> str:
    """The pool-node name of a Ray node (``ray-`` and the first 8 hex digits of its id)."""
    return f"ray-{node_id[:8]}"


class LogPump:
    """Appends the logs of instances on nodes without our filesystem to their instance logs."""

    def __init__(self, backend: RayCluster) -> None:
        self.backend = backend
        self._tracked: dict[str, tuple[Any, Path, int | None]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def track(self, name: str, actor: Any, path: Path, offset: int | None) -> None:
        with self._lock:
            self._tracked.setdefault(name, (actor, path, offset))
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._loop, name="neve-ray-log-pump", daemon=True
                )
                self._thread.start()

    def untrack(self, name: str | None) -> None:
        if name:
            with self._lock:
                self._tracked.pop(name, None)

    def flush(self, name: str | None) -> bool:
        """Pull what is left of one instance's log (before it is stopped); False: not tracked."""
        if not name:
            return False
        with self._lock:
            entry = self._tracked.get(name)
        if entry is None:
            return False
        for _ in range(64):  # up to 64 MiB left unread: pull until nothing new comes
            self._pull({name: entry})
            with self._lock:
                latest = self._tracked.get(name)
            if latest is None or latest[2] == entry[2]:
                break
            entry = latest
        return True

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(LOG_PUMP_INTERVAL_S):
            with self._lock:
                tracked = dict(self._tracked)
            if tracked:
                self._pull(tracked)

    def _pull(self, tracked: dict[str, tuple[Any, Path, int | None]]) -> None:
        ray = self.backend.ray
        refs = {
            name: actor.read_log.remote(offset) for name, (actor, _p, offset) in tracked.items()
        }
        for name, ref in refs.items():
            actor, path, _offset = tracked[name]
            try:
                data, new_offset = ray.get(ref, timeout=CALL_TIMEOUT_S)
            except ray.exceptions.RayActorError:
                self.untrack(name)  # its node or process is gone: nothing more to pull
                continue
            except ray.exceptions.RayError:
                continue
            if data:
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("ab") as fh:
                    fh.write(data)
            with self._lock:
                if name in self._tracked:
                    self._tracked[name] = (actor, path, new_offset)


def raylet_answers(node: dict[str, Any], timeout: float = 1.0) -> bool:
    """Whether the node's raylet accepts a TCP connection (a lost node's does not)."""
    address, port = node.get("NodeManagerAddress"), node.get("NodeManagerPort")
    if not address or not port:
        return True  # nothing to check: trust the GCS
    try:
        with socket.create_connection((address, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def _ray_error_text(exc: BaseException) -> str:
    """The interesting line of a Ray error (the actor's own exception, not Ray's wrapper)."""
    cause = getattr(exc, "cause", None)
    if cause is not None and cause is not exc:
        inner = getattr(cause, "cause", None)
        return str(inner or cause)
    text = str(exc)
    marker = "RuntimeError: "
    if marker in text:
        return text.split(marker, 1)[1].strip()
    return text.strip().splitlines()[-1] if text.strip() else type(exc).__name__


class RayCluster(ComputeBackend):
    name = "ray"

    def __init__(self, pool: PoolInfo) -> None:
        super().__init__(pool)
        self.address = RayAddress.parse(pool.address, pool=pool.name)
        # One namespace per pool of one account: two accounts may share a cluster.
        scope = hashlib.sha1(str(pool.runs_dir.resolve()).encode()).hexdigest()[:10]
        self.namespace = self.address.namespace or f"neve-{scope}"
        self.shipper = TreeShipper(self.address.ship_limit_mb * 2**20)
        self._ray: Any = None
        self._lock = threading.Lock()
        self._actors: dict[str, Any] = {}  # actor name -> handle
        self._unreachable_since: dict[str, float] = {}
        self._suspect_nodes: dict[str, float] = {}  # node id -> when an instance on it died
        self._probe: tuple[str, str] | None = None
        self._probe_lock = threading.Lock()
        self._pump = LogPump(self)

    @classmethod
    def check_address(cls, address: str | None, *, pool: str) -> str:
        """Validate a pool's ``ADDRESS`` (at CREATE COMPUTE POOL); return it normalized."""
        parsed = RayAddress.parse(address, pool=pool)
        return (address or "auto").strip().strip("'\"") if parsed.kind != "auto" else "auto"

    # -- connection -------------------------------------------------------------------------------
    @property
    def ray(self) -> Any:
        """The ``ray`` module, connected to this pool's cluster (again, if it was dropped)."""
        ray = self._ray
        if ray is None or not ray.is_initialized():
            with self._lock:
                ray = import_ray(self.address)
                connect(self.address, self.pool.runs_dir)
                self._ray = ray
        return ray

    def _log_probe(self) -> tuple[str, str]:
        """A file with a random token: a node that reads it back sees our filesystem."""
        with self._probe_lock:  # instances start from several threads at once
            if self._probe is None:
                self.pool.runs_dir.mkdir(parents=True, exist_ok=True)
                path = self.pool.runs_dir / "ray-fs-probe"
                if path.exists():
                    token = path.read_text().strip()
                else:
                    token = secrets.token_hex(16)
                    # unique per writer: another control plane process may write it too
                    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
                    tmp.write_text(token)
                    os.replace(tmp, path)
                    token = path.read_text().strip()
                self._probe = (str(path), token)
            return self._probe

    # -- nodes ------------------------------------------------------------------------------------
    def cluster_nodes(self) -> list[dict[str, Any]]:
        """Alive Ray nodes this pool may use: name, id, address, resources, labels."""
        out = []
        family = self.pool.family.name
        all_nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        family_labelled = any(FAMILY_LABEL in (n.get("Labels") or {}) for n in all_nodes)
        own = [
            n
            for n in all_nodes
            if str((n.get("Labels") or {}).get(POOL_LABEL, "")).lower() == self.pool.name.lower()
        ]
        for node in own or all_nodes:
            labels = dict(node.get("Labels") or {})
            if family_labelled and labels.get(FAMILY_LABEL) != family:
                continue
            resources = node.get("Resources") or {}
            out.append(
                {
                    "name": node_name(node["NodeID"]),
                    "node_id": node["NodeID"],
                    "address": node.get("NodeManagerAddress"),
                    "cpu": float(resources.get("CPU", 0)),
                    "gpu": float(resources.get("GPU", 0)),
                    "memory_gb": float(resources.get("memory", 0)) / 2**30,
                    "labels": labels,
                }
            )
        return out

    def node_names(self) -> list[str]:
        """Names of the Ray nodes this pool's instances may run on now."""
        return [n["name"] for n in self.cluster_nodes()]

    def describe_cluster(self) -> dict[str, Any]:
        """For DESCRIBE COMPUTE POOL: the cluster, its nodes and what they hold."""
        ray = self.ray
        try:
            available = ray.available_resources()
        except Exception:  # noqa: BLE001 - a state call; the rest is still useful
            available = {}
        return {
            "backend": self.name,
            "address": self.address.target,
            "namespace": self.namespace,
            "nodes": self.cluster_nodes(),
            "available": {k: v for k, v in available.items() if k in ("CPU", "GPU", "memory")},
        }

    def _label_selector(self, nodes: list[dict[str, Any]]) -> dict[str, str] | None:
        selector = {}
        if any(FAMILY_LABEL in n["labels"] for n in nodes):
            selector[FAMILY_LABEL] = self.pool.family.name
        pool_values = sorted(
            {
                n["labels"][POOL_LABEL]
                for n in nodes
                if str(n["labels"].get(POOL_LABEL, "")).lower() == self.pool.name.lower()
            }
        )
        if pool_values:
            selector[POOL_LABEL] = (
                pool_values[0] if len(pool_values) == 1 else f"in({','.join(pool_values)})"
            )
        return selector or None

    def _alive_node_ids(self) -> set[str]:
        return {n["NodeID"] for n in self.ray.nodes() if n.get("Alive")}

    def _suspect(self, handle: InstanceHandle) -> None:
        node_id = handle.backend_ref.get("node_id")
        if node_id:
            with self._lock:
                self._suspect_nodes.setdefault(str(node_id), time.monotonic())

    def _nodes_to_avoid(self) -> list[str]:
        """Nodes where an instance was just found dead and whose raylet does not take a TCP
        connection: lost, though the GCS may still count them alive (it marks a node dead only
        after several missed health checks) and would place a restarted instance there, where it
        would wait for a node that never answers."""
        now = time.monotonic()
        with self._lock:
            suspects = [n for n, t in self._suspect_nodes.items() if now - t < SUSPECT_NODE_S]
            self._suspect_nodes = {n: self._suspect_nodes[n] for n in suspects}
        if not suspects:
            return []
        alive = {n["NodeID"]: n for n in self.ray.nodes() if n.get("Alive")}
        avoid = []
        for node_id in suspects:
            node = alive.get(node_id)
            if node is not None and not raylet_answers(node):
                avoid.append(node_id)
                continue
            with self._lock:  # dead for the GCS too (no longer a candidate), or well
                self._suspect_nodes.pop(node_id, None)
        return sorted(avoid)

    def ray_nodes_raw(self) -> list[dict[str, Any]]:
        return [{"labels": dict(n.get("Labels") or {})} for n in self.ray.nodes() if n.get("Alive")]

    def _free_text(self) -> str:
        try:
            free = self.ray.available_resources()
        except Exception:  # noqa: BLE001
            return "unknown"
        return (
            f"{free.get('CPU', 0):g} CPU, {free.get('GPU', 0):g} GPU, "
            f"{free.get('memory', 0) / 2**30:.1f} GiB memory in the whole cluster"
        )

    def _get(self, ref: Any, timeout: float, what: str) -> Any:
        """``ray.get`` with neve errors: the actor's own message when it failed."""
        ray = self.ray
        try:
            return ray.get(ref, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise ServiceUnavailableError(what) from None
        except ray.exceptions.RayError as exc:
            raise ServiceUnavailableError(f"{what}: {_ray_error_text(exc)}") from None

    # -- find -------------------------------------------------------------------------------------
    def _actor(self, handle: InstanceHandle) -> Any | None:
        name = handle.backend_ref.get("actor_name")
        if not name:
            return None
        with self._lock:
            actor = self._actors.get(name)
        if actor is not None:
            return actor
        ray = self.ray
        try:  # after a control-plane restart: the detached actor is found by name
            actor = ray.get_actor(name, namespace=handle.backend_ref.get("namespace"))
        except ValueError:
            return None
        with self._lock:
            self._actors[name] = actor
        if handle.backend_ref.get("node_log_path"):
            # Resume pulling its log where the last control plane left off (the actor knows).
            self._pump.track(name, actor, Path(handle.backend_ref["log_path"]), offset=None)
        return actor

    # -- watch ------------------------------------------------------------------------------------
    def is_alive(self, handle: InstanceHandle) -> bool:
        name = str(handle.backend_ref.get("actor_name") or "")
        actor = self._actor(handle)
        if actor is None:
            return False
        ray = self.ray
        try:
            info = ray.get(actor.info.remote(), timeout=CALL_TIMEOUT_S)
        except ray.exceptions.ActorUnavailableError:  # its node may be back: give it time
            self._suspect(handle)
            return self._unreachable(name, dead=False)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnschedulableError):
            self._suspect(handle)
            return False  # dead for good: its server exited with it, or its node is gone
        except ray.exceptions.RayError:  # GetTimeoutError included
            return self._unreachable(name, dead=False)
        with self._lock:
            self._unreachable_since.pop(name, None)
        return bool(info["alive"])

    def _unreachable(self, name: str, *, dead: bool) -> bool:
        """A dead actor is dead; an unreachable one gets ``unreachable_grace_s`` to answer."""
        if dead:
            return False
        now = time.monotonic()
        with self._lock:
            since = self._unreachable_since.setdefault(name, now)
        return now - since < self.address.unreachable_grace_s

    def instance_info(self, handle: InstanceHandle) -> dict[str, Any] | None:
        """What the actor reports (node, pid, port, python, log), or None when it is gone."""
        actor = self._actor(handle)
        if actor is None:
            return None
        try:
            return self.ray.get(actor.info.remote(), timeout=CALL_TIMEOUT_S)
        except self.ray.exceptions.RayError:
            return None

    # -- stop -------------------------------------------------------------------------------------
    def stop_instance(self, handle: InstanceHandle, timeout: float = 15.0) -> None:
        name = handle.backend_ref.get("actor_name")
        actor = self._actor(handle)
        if actor is None:
            self._pump.untrack(name)
            return
        ray = self.ray
        # A graceful stop only when the actor answers at once: one on a lost node would make us
        # wait for Ray to give up on it. Killing the actor takes its server down with it.
        ready, _ = ray.wait([actor.info.remote()], timeout=REACH_TIMEOUT_S)
        if ready:
            try:
                ray.get(ready[0])
                ray.get(actor.stop.remote(timeout), timeout=timeout + CALL_TIMEOUT_S)
            except ray.exceptions.RayError:
                pass  # already dead or unreachable: killing the actor is all that is left
            if self._pump.flush(name):
                try:  # the instance log holds it all now: the node's copy can go
                    ray.get(actor.discard_log.remote(), timeout=REACH_TIMEOUT_S)
                except ray.exceptions.RayError:
                    pass
        self._kill(name, actor)

    def _kill(self, name: str | None, actor: Any) -> None:
        self._pump.untrack(name)
        try:
            self.ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        with self._lock:
            if name:
                self._actors.pop(name, None)
                self._unreachable_since.pop(name, None)

    # -- ingress proxies, one per node ----------------------------------------------------------
    @property
    def proxy_namespace(self) -> str:
        """One namespace per account and cluster: pools of an account on one cluster share the
        node proxies (actor ``proxy/<node id>``)."""
        account_run_dir = self.pool.runs_dir.resolve().parent.parent
        scope = hashlib.sha1(str(account_run_dir).encode()).hexdigest()[:10]
        return f"neve-proxies-{scope}"

    def ensure_ingress_proxies(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        """A proxy actor pinned to every node of the pool (started where missing or dead, all
        at once); what each reports (``node``, ``url``, ``grpc_address``, ``admin_url``,
        ``control_url``...)."""
        ray = self.ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        found: dict[str, dict[str, Any]] = {}
        starting: dict[str, tuple[Any, Any]] = {}  # node id -> (actor, its start() reference)
        nodes = [n["node_id"] for n in self.cluster_nodes()]
        for node_id in nodes:
            name = f"proxy/{node_id}"
            try:
                actor = ray.get_actor(name, namespace=self.proxy_namespace)
            except ValueError:
                actor = None
            if actor is not None:
                try:
                    info = ray.get(actor.info.remote(), timeout=CALL_TIMEOUT_S)
                except ray.exceptions.RayError:
                    info = None
                if info is not None and info["alive"]:
                    found[node_id] = info
                    continue
                self._kill(None, actor)
            node_config = dict(config)
            if self.address.loopback:
                node_config["host"] = "127.0.0.1"
            node_config.setdefault("cache_dir", self.address.cache_dir)
            actor = (
                remote_class(ray, ray_actor.ProxyActor)
                .options(
                    name=name,
                    namespace=self.proxy_namespace,
                    lifetime="detached",
                    max_restarts=0,
                    max_concurrency=4,
                    num_cpus=0,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                )
                .remote(node_config)
            )
            starting[node_id] = (actor, actor.start.remote())
        for node_id, (actor, started) in starting.items():
            try:
                info = self._get(
                    started,
                    MIN_PLACEMENT_TIMEOUT_S,
                    f"ingress proxy on Ray node {node_name(node_id)} did not start",
                )
            except ServiceUnavailableError as exc:
                log.warning("%s", exc)
                self._kill(None, actor)
                continue
            log.info("ingress proxy on Ray node %s at %s", node_name(node_id), info["url"])
            found[node_id] = info
        return [{"node": node_name(n), **found[n]} for n in nodes if n in found]

    def stop_ingress_proxies(self) -> None:
        ray = self.ray
        for node in self.cluster_nodes():
            try:
                actor = ray.get_actor(f"proxy/{node['node_id']}", namespace=self.proxy_namespace)
            except ValueError:
                continue
            try:
                ray.get(actor.stop.remote(), timeout=CALL_TIMEOUT_S + 10)
            except ray.exceptions.RayError:
                pass
            self._kill(None, actor)

    def close(self) -> None:
        # Instances (detached actors) outlive the control plane; only our side goes.
        self._pump.stop()
        with self._lock:
            self._actors.clear()
        self.shipper.clear()
