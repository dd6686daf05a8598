"""Compute pools in the catalog: look-ups, nodes, SHOW / DESCRIBE, backends (``ComputeManager``'s first layer)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from neve.catalog import lookup
from neve.catalog import models as m
from neve.compute.backends import backend_class
from neve.compute.backends.base import ComputeBackend, PoolInfo
from neve.compute.families import InstanceFamily, instance_family
from neve.context import RequestContext
from neve.errors import (
    PermissionDeniedError,
)
from neve.identifiers import ident, quote
from neve.like import like_regex

if TYPE_CHECKING:
    from neve.catalog import Catalog
    from neve.config import Settings
    from neve.security.manager import SecurityManager

STARTING, IDLE, ACTIVE, SUSPENDED = "STARTING", "IDLE", "ACTIVE", "SUSPENDED"
STATES = (STARTING, IDLE, ACTIVE, SUSPENDED)
MAX_NODES_LIMIT = 150  # the reference's per-pool limit
POOL_PRIVILEGES = ("USAGE", "OPERATE", "MONITOR", "MODIFY")
ACTIVE_JOB_STATES = ("PENDING", "RUNNING")
EPS = 1e-9

#: ``listener(ctx, pool_name, action)``: called before SUSPEND or STOP ALL of a pool, so the
#: services component can suspend or drop what runs there (compute must not import services).
PoolListener = Callable[[RequestContext | None, str, str], None]

log = logging.getLogger("neve.compute")


def utc_now() -> datetime:
    return datetime.now(UTC)


def family_named(name: str) -> InstanceFamily:
    return instance_family(name)


class PoolCatalog:
    def __init__(self, catalog: Catalog, settings: Settings, security: SecurityManager) -> None:
        self.catalog = catalog
        self.settings = settings
        self.security = security
        # Placement reads free capacity and then writes an allocation: one at a time here.
        self._lock = threading.RLock()
        self._backends: dict[str, tuple[int, ComputeBackend]] = {}
        self._listeners: list[PoolListener] = []

    def add_pool_listener(self, listener: PoolListener) -> None:
        """Register ``listener(ctx, pool_name, action)`` for SUSPEND / STOP ALL of any pool."""
        self._listeners.append(listener)

    # -- lookups ----------------------------------------------------------------------------------
    @staticmethod
    def _name(name: str) -> str:
        return ident(name, kind="compute pool name")

    @staticmethod
    def _pool(s: Session, name: str) -> m.ComputePool:
        return lookup.account_level(s, m.ComputePool, name, "compute pool")

    def _require_any(self, s: Session, ctx: RequestContext, pool: m.ComputePool) -> None:
        if any(self.security.has_privilege(s, ctx, p, pool) for p in POOL_PRIVILEGES):
            return
        raise PermissionDeniedError(
            f"insufficient privileges: role {ctx.role} needs MONITOR (or USAGE, OPERATE) on "
            f"COMPUTE POOL {quote(pool.name)}"
        )

    @staticmethod
    def _services_on(s: Session, pool: m.ComputePool) -> list[str]:
        rows = s.scalars(
            select(m.Service).where(m.Service.pool_id == pool.id).order_by(m.Service.name)
        ).all()
        return [f"{lookup.qualified(s, sv.schema_id, sv.name)} ({sv.status})" for sv in rows]

    @staticmethod
    def _holders(s: Session, pool: m.ComputePool) -> list[str]:
        return list(
            s.scalars(
                select(m.PoolAllocation.holder)
                .where(m.PoolAllocation.pool_id == pool.id)
                .order_by(m.PoolAllocation.holder)
            )
        )

    def _wake(self, s: Session, pool: m.ComputePool) -> None:
        now = utc_now()
        pool.state = IDLE
        pool.resumed_on = now
        pool.idle_since = now
        self._ensure_min_nodes(s, pool)
        s.flush()

    # -- nodes ------------------------------------------------------------------------------------
    @staticmethod
    def _nodes(s: Session, pool: m.ComputePool) -> list[m.PoolNode]:
        return list(
            s.scalars(
                select(m.PoolNode).where(m.PoolNode.pool_id == pool.id).order_by(m.PoolNode.id)
            )
        )

    @staticmethod
    def _busy_nodes(s: Session, pool: m.ComputePool) -> set[str]:
        return set(
            s.scalars(
                select(m.PoolNode.name)
                .join(m.PoolAllocation, m.PoolAllocation.node_id == m.PoolNode.id)
                .where(m.PoolNode.pool_id == pool.id)
            )
        )

    def _add_node(self, s: Session, pool: m.ComputePool, taken: set[str]) -> m.PoolNode:
        n = 1
        while f"{pool.name}-node-{n}" in taken:
            n += 1
        node = m.PoolNode(pool_id=pool.id, name=f"{pool.name}-node-{n}", state=IDLE)
        s.add(node)
        s.flush()
        return node

    def _ensure_min_nodes(self, s: Session, pool: m.ComputePool) -> None:
        nodes = self._nodes(s, pool)
        taken = {n.name for n in nodes}
        for _ in range(pool.min_nodes - len(nodes)):
            taken.add(self._add_node(s, pool, taken).name)

    def _trim_nodes(self, s: Session, pool: m.ComputePool) -> None:
        """Remove empty nodes above MIN_NODES (newest first)."""
        nodes = self._nodes(s, pool)
        busy = self._busy_nodes(s, pool)
        extra = len(nodes) - pool.min_nodes
        for node in reversed(nodes):
            if extra <= 0:
                break
            if node.name not in busy:
                s.delete(node)
                extra -= 1
        s.flush()

    @staticmethod
    def _free(
        s: Session, node: m.PoolNode, family: InstanceFamily
    ) -> tuple[float, float, list[int]]:
        cpu, mem = family.vcpu, family.memory_gb
        used_gpus: set[int] = set()
        for alloc in s.scalars(select(m.PoolAllocation).where(m.PoolAllocation.node_id == node.id)):
            cpu -= alloc.cpu
            mem -= alloc.memory_gb
            used_gpus.update(alloc.gpu_ids or [])
        return (
            round(max(cpu, 0.0), 6),
            round(max(mem, 0.0), 6),
            [i for i in range(family.gpu) if i not in used_gpus],
        )

    # -- show / describe --------------------------------------------------------------------------
    def show_pools(self, ctx: RequestContext, like: str | None = None) -> list[dict]:
        """SHOW COMPUTE POOLS [LIKE]: the pools the role owns or holds a privilege on."""
        pattern = like_regex(like) if like else None
        with self.catalog.transaction() as s:
            rows = []
            for pool in s.scalars(select(m.ComputePool).order_by(m.ComputePool.name)):
                if pattern is not None and not pattern.match(pool.name):
                    continue
                if not any(self.security.has_privilege(s, ctx, p, pool) for p in POOL_PRIVILEGES):
                    continue
                rows.append(self._row(s, pool))
            return rows

    def describe_pool(self, ctx: RequestContext, name: str) -> dict:
        """DESCRIBE COMPUTE POOL: the SHOW row plus backend, node size and each node's load."""
        pool_name = self._name(name)
        with self.catalog.transaction() as s:
            pool = self._pool(s, pool_name)
            self._require_any(s, ctx, pool)
            return self._describe(s, pool)

    def _row(self, s: Session, pool: m.ComputePool) -> dict:
        nodes = self._nodes(s, pool)
        busy = self._busy_nodes(s, pool)
        num_services = s.scalar(
            select(func.count()).select_from(m.Service).where(m.Service.pool_id == pool.id)
        )
        num_jobs = s.scalar(
            select(func.count())
            .select_from(m.Job)
            .where(m.Job.pool_id == pool.id, m.Job.status.in_(ACTIVE_JOB_STATES))
        )
        return {
            "name": pool.name,
            "state": pool.state,
            "min_nodes": pool.min_nodes,
            "max_nodes": pool.max_nodes,
            "instance_family": pool.instance_family,
            "num_services": int(num_services or 0),
            "num_jobs": int(num_jobs or 0),
            "auto_suspend_secs": pool.auto_suspend_secs,
            "auto_resume": bool(pool.auto_resume),
            "active_nodes": sum(1 for n in nodes if n.name in busy),
            "idle_nodes": sum(1 for n in nodes if n.name not in busy),
            "created_on": pool.created_on,
            "resumed_on": pool.resumed_on,
            "updated_on": pool.updated_on,
            "owner": pool.owner_role,
            "comment": pool.comment,
            "backend": pool.backend,
        }

    def _describe(self, s: Session, pool: m.ComputePool) -> dict:
        family = family_named(pool.instance_family)
        row = self._row(s, pool)
        row.update(
            {
                "address": pool.address,
                "vcpu_per_node": family.vcpu,
                "memory_gb_per_node": family.memory_gb,
                "gpu_per_node": family.gpu,
                "nodes": [
                    {
                        "name": n.name,
                        "state": n.state,
                        "free_cpu": free[0],
                        "free_memory_gb": free[1],
                        "free_gpu": len(free[2]),
                        "holders": sorted(
                            s.scalars(
                                select(m.PoolAllocation.holder).where(
                                    m.PoolAllocation.node_id == n.id
                                )
                            )
                        ),
                    }
                    for n in self._nodes(s, pool)
                    for free in [self._free(s, n, family)]
                ],
            }
        )
        return row

    # -- backends ---------------------------------------------------------------------------------
    def backend_for(self, pool: str | m.ComputePool) -> ComputeBackend:
        """The backend that runs the pool's instances (one per pool, kept for the daemon's life)."""
        pool_name = pool.name if isinstance(pool, m.ComputePool) else self._name(pool)
        with self.catalog.transaction() as s:
            row = self._pool(s, pool_name)
            pool_id, kind, family, address = row.id, row.backend, row.instance_family, row.address
        with self._lock:
            cached = self._backends.get(pool_name)
            if cached is not None and cached[0] == pool_id:
                return cached[1]
            info = PoolInfo(
                name=pool_name,
                family=family_named(family),
                backend=kind,
                address=address,
                runs_dir=self.settings.home / "run" / "pools" / str(pool_id),
                nodes=lambda: self._node_names(pool_id),
            )
            backend = backend_class(kind)(info)
            if cached is not None:
                cached[1].close()
            self._backends[pool_name] = (pool_id, backend)
            return backend

    def _node_names(self, pool_id: int) -> list[str]:
        with self.catalog.transaction() as s:
            return list(
                s.scalars(
                    select(m.PoolNode.name)
                    .where(m.PoolNode.pool_id == pool_id)
                    .order_by(m.PoolNode.id)
                )
            )

    def _forget_backend(self, pool_name: str) -> None:
        with self._lock:
            cached = self._backends.pop(pool_name, None)
        if cached is not None:
            cached[1].close()

    def close(self) -> None:
        with self._lock:
            backends = [b for _, b in self._backends.values()]
            self._backends.clear()
        for backend in backends:
            backend.close()
