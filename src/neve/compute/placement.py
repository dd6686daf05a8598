"""Placing instances on a pool's nodes: place, release, placements, idle suspension."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from neve.catalog import models as m
from neve.compute.families import InstanceFamily
from neve.compute.pools import ACTIVE, EPS, IDLE, SUSPENDED, PoolCatalog, family_named, log, utc_now
from neve.compute.resources import Placement, ResourceRequest
from neve.context import RequestContext
from neve.errors import (
    InvalidArgumentError,
    InvalidStateError,
    ResourceError,
)
from neve.identifiers import quote


class PoolPlacement(PoolCatalog):
    """Placement of holders (service instances, jobs) on nodes with room; nodes on demand."""

    # -- placement --------------------------------------------------------------------------------
    def place(
        self,
        ctx: RequestContext | None,
        pool_name: str,
        request: ResourceRequest,
        *,
        holder: str,
    ) -> Placement:
        """Reserve ``request`` on a node of the pool for ``holder`` and return where.

        ``holder`` names what holds it (e.g. ``ML.REG.SVC/0``); placing the same holder again
        returns its existing placement (what a restarted supervisor needs). A suspended pool is
        resumed when AUTO_RESUME is on. The least-loaded node with room wins, so instances
        spread; a new node comes up when none has room and MAX_NODES allows. ``ctx`` None is
        the supervisor acting for an already-authorized service (no privilege check).
        """
        name = self._name(pool_name)
        if not isinstance(request, ResourceRequest):
            raise InvalidArgumentError(
                f"place on compute pool {name}: request must be a ResourceRequest"
            )
        if not holder or not isinstance(holder, str):
            raise InvalidArgumentError(
                f"place on compute pool {name}: holder must be a non-empty string"
            )
        with self._lock, self.catalog.transaction() as s:
            pool = self._pool(s, name)
            if ctx is not None:
                self.security.require(s, ctx, "USAGE", pool)
            existing = s.scalar(
                select(m.PoolAllocation).where(
                    m.PoolAllocation.pool_id == pool.id, m.PoolAllocation.holder == holder
                )
            )
            if existing is not None:
                node = s.get(m.PoolNode, existing.node_id)
                return _placement(pool, node, existing)
            family = family_named(pool.instance_family)
            if (
                request.cpu > family.vcpu + EPS
                or request.memory_gb > family.memory_gb + EPS
                or request.gpu > family.gpu
            ):
                raise ResourceError(
                    f"{holder} requests {request.describe()}, more than one node of compute pool "
                    f"{name} has ({_capacity(family)}, instance family {family.name}); request "
                    "less or use a pool with a larger INSTANCE_FAMILY"
                )
            if pool.state == SUSPENDED:
                if not pool.auto_resume:
                    raise InvalidStateError(
                        f"compute pool {name} is suspended and AUTO_RESUME is FALSE; resume it "
                        f"with ALTER COMPUTE POOL {quote(name)} RESUME"
                    )
                self._wake(s, pool)
            nodes = self._nodes(s, pool)
            free = {n.id: self._free(s, n, family) for n in nodes}
            fitting = [n for n in nodes if _fits(request, free[n.id])]
            if fitting:
                # Least loaded first (most free vCPU, then memory): instances spread over nodes.
                node = max(fitting, key=lambda n: (free[n.id][0], free[n.id][1], -n.id))
            elif len(nodes) < pool.max_nodes:
                node = self._add_node(s, pool, {n.name for n in nodes})
                free[node.id] = (family.vcpu, family.memory_gb, list(range(family.gpu)))
            else:
                detail = "; ".join(
                    f"{n.name}: {free[n.id][0]:g} vCPU, {free[n.id][1]:g} GiB, "
                    f"{len(free[n.id][2])} GPU free"
                    for n in nodes
                )
                raise ResourceError(
                    f"compute pool {name} has no room for {holder}: it requests "
                    f"{request.describe()}, available per node: {detail or 'no nodes'}; "
                    f"MAX_NODES = {pool.max_nodes} reached (raise MAX_NODES or stop other "
                    "instances)"
                )
            gpu_ids = free[node.id][2][: request.gpu]
            alloc = m.PoolAllocation(
                pool_id=pool.id,
                node_id=node.id,
                holder=holder,
                cpu=float(request.cpu),
                memory_gb=float(request.memory_gb),
                gpu=int(request.gpu),
                gpu_ids=list(gpu_ids),
            )
            s.add(alloc)
            node.state = ACTIVE
            pool.state = ACTIVE
            pool.idle_since = None
            s.flush()
            return _placement(pool, node, alloc)

    def release(self, ctx: RequestContext | None, pool_name: str, holder: str) -> bool:
        """Give back ``holder``'s placement; idempotent. Empty nodes above MIN_NODES go away."""
        name = self._name(pool_name)
        with self._lock, self.catalog.transaction() as s:
            pool = s.scalar(select(m.ComputePool).where(m.ComputePool.name == name))
            if pool is None:
                return False
            if ctx is not None:
                self.security.require(s, ctx, "USAGE", pool)
            alloc = s.scalar(
                select(m.PoolAllocation).where(
                    m.PoolAllocation.pool_id == pool.id, m.PoolAllocation.holder == holder
                )
            )
            if alloc is None:
                return False
            node = s.get(m.PoolNode, alloc.node_id)
            s.delete(alloc)
            s.flush()
            if node is not None and node.name not in self._busy_nodes(s, pool):
                node.state = IDLE
            self._trim_nodes(s, pool)
            if not self._holders(s, pool) and pool.state == ACTIVE:
                pool.state = IDLE
                pool.idle_since = utc_now()
            return True

    def placements(self, ctx: RequestContext | None, pool_name: str) -> list[Placement]:
        """Every current placement on the pool (for reattaching and for DESCRIBE)."""
        name = self._name(pool_name)
        with self.catalog.transaction() as s:
            pool = self._pool(s, name)
            if ctx is not None:
                self._require_any(s, ctx, pool)
            out = []
            for alloc, node in s.execute(
                select(m.PoolAllocation, m.PoolNode)
                .join(m.PoolNode, m.PoolAllocation.node_id == m.PoolNode.id)
                .where(m.PoolAllocation.pool_id == pool.id)
                .order_by(m.PoolAllocation.id)
            ):
                out.append(_placement(pool, node, alloc))
            return out

    def ensure_ingress_proxies(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        """Every pool's node proxies (``ComputeBackend.ensure_ingress_proxies``), one pass per
        cluster; each record names its ``pool``. A cluster that cannot be reached is logged."""
        with self.catalog.transaction() as s:
            pools = [(p.name, p.backend, p.address) for p in s.scalars(select(m.ComputePool))]
        seen: set[tuple[str, str | None]] = set()
        out: list[dict[str, Any]] = []
        for name, kind, address in pools:
            if (kind, address) in seen:
                continue
            seen.add((kind, address))
            try:
                found = self.backend_for(name).ensure_ingress_proxies(config)
            except Exception:
                log.exception("ingress proxies of compute pool %s", name)
                continue
            out.extend({"pool": name, **record} for record in found)
        return out

    def suspend_idle_pools(self, now: datetime | None = None) -> list[str]:
        """AUTO_SUSPEND_SECS: suspend pools idle that long; the supervisor loop calls this."""
        now = now or utc_now()
        done = []
        with self._lock, self.catalog.transaction() as s:
            for pool in s.scalars(select(m.ComputePool).where(m.ComputePool.state == IDLE)):
                since = pool.idle_since
                if not pool.auto_suspend_secs or since is None:
                    continue
                if (now - since).total_seconds() < pool.auto_suspend_secs:
                    continue
                if self._holders(s, pool):
                    continue
                for node in self._nodes(s, pool):
                    s.delete(node)
                pool.state = SUSPENDED
                pool.idle_since = None
                done.append(pool.name)
        return done


def _capacity(family: InstanceFamily) -> str:
    return f"{family.vcpu:g} vCPU, {family.memory_gb:g} GiB memory, {family.gpu} GPU"


def _fits(request: ResourceRequest, free: tuple[float, float, list[int]]) -> bool:
    return (
        request.cpu <= free[0] + EPS
        and request.memory_gb <= free[1] + EPS
        and request.gpu <= len(free[2])
    )


def _placement(pool: m.ComputePool, node: m.PoolNode | None, alloc: m.PoolAllocation) -> Placement:
    return Placement(
        pool=pool.name,
        node=node.name if node is not None else "",
        holder=alloc.holder,
        request=ResourceRequest(cpu=alloc.cpu, memory_gb=alloc.memory_gb, gpu=alloc.gpu),
        gpu_ids=list(alloc.gpu_ids or []),
    )
