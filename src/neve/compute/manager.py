"""Compute pools: the catalog side (create, alter, suspend, show) and placement of instances.

A pool has MIN_NODES..MAX_NODES nodes of one instance family. Nodes are ``pool_nodes`` rows;
what runs on them is ``pool_allocations`` rows (one per holder: a service instance, a job), so
placement survives a control-plane restart and two services never overcommit a node. Nodes come
up on demand: ``place`` adds a node (up to MAX_NODES) when no node has room, ``release`` removes
empty nodes above MIN_NODES. States:

    STARTING   nodes are coming up (backends that provision machines)
    IDLE       running, nothing placed on it
    ACTIVE     at least one instance placed on it
    SUSPENDED  no nodes; AUTO_RESUME brings it back on the next placement

Privileges: CREATE COMPUTE POOL on the account to create; the owner drops it; MODIFY to SET
properties, OPERATE to SUSPEND/RESUME; USAGE to place instances on it; MONITOR (or any of the
others) to see it. ``backend_for(pool)`` gives the ``ComputeBackend`` that runs its instances.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from neve.catalog import lookup
from neve.catalog import models as m
from neve.compute.backends import backend_class, backend_name
from neve.compute.backends.base import ComputeBackend, PoolInfo
from neve.compute.families import InstanceFamily, instance_family
from neve.compute.resources import Placement, ResourceRequest
from neve.context import RequestContext
from neve.errors import (
    InvalidArgumentError,
    InvalidStateError,
    ObjectExistsError,
    ObjectInUseError,
    ObjectNotFoundError,
    PermissionDeniedError,
    ResourceError,
)
from neve.identifiers import ident, quote
from neve.like import like_regex
from neve.security.objects import ACCOUNT

if TYPE_CHECKING:
    from neve.catalog import Catalog
    from neve.config import Settings
    from neve.security.manager import SecurityManager

STARTING, IDLE, ACTIVE, SUSPENDED = "STARTING", "IDLE", "ACTIVE", "SUSPENDED"
STATES = (STARTING, IDLE, ACTIVE, SUSPENDED)
MAX_NODES_LIMIT = 150  # the reference's per-pool limit
POOL_PRIVILEGES = ("USAGE", "OPERATE", "MONITOR", "MODIFY")
ACTIVE_JOB_STATES = ("PENDING", "RUNNING")
_EPS = 1e-9

#: ``listener(ctx, pool_name, action)``: called before SUSPEND or STOP ALL of a pool, so the
#: services component can suspend or drop what runs there (compute must not import services).
PoolListener = Callable[[RequestContext | None, str, str], None]

log = logging.getLogger("neve.compute")


def _now() -> datetime:
    return datetime.now(UTC)


def _int(value: Any, what: str, pool: str, *, minimum: int) -> int:
    if isinstance(value, bool) or value is None:
        raise InvalidArgumentError(f"compute pool {pool}: {what} must be an integer, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"compute pool {pool}: {what} must be an integer, got {value!r}"
        ) from None
    if number != value and not (isinstance(value, str) and value.strip().isdigit()):
        raise InvalidArgumentError(f"compute pool {pool}: {what} must be an integer, got {value!r}")
    if number < minimum:
        raise InvalidArgumentError(
            f"compute pool {pool}: {what} must be >= {minimum}, got {number}"
        )
    return number


def _bool(value: Any, what: str, pool: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().upper() in ("TRUE", "FALSE"):
        return value.strip().upper() == "TRUE"
    raise InvalidArgumentError(f"compute pool {pool}: {what} must be TRUE or FALSE, got {value!r}")


def _check_node_range(pool: str, lo: int, hi: int) -> None:
    """MIN_NODES <= MAX_NODES <= the per-pool limit."""
    if lo > hi:
        raise InvalidArgumentError(
            f"compute pool {pool}: MIN_NODES ({lo}) must not be greater than MAX_NODES ({hi})"
        )
    if hi > MAX_NODES_LIMIT:
        raise InvalidArgumentError(
            f"compute pool {pool}: MAX_NODES must be <= {MAX_NODES_LIMIT}, got {hi}"
        )


class ComputeManager:
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

    # -- create / drop ----------------------------------------------------------------------------
    def create_pool(
        self,
        ctx: RequestContext,
        name: str,
        *,
        min_nodes: int = 1,
        max_nodes: int = 1,
        instance_family: str | None = None,
        auto_resume: bool = True,
        auto_suspend_secs: int = 3600,
        initially_suspended: bool = False,
        backend: str = "local",
        address: str | None = None,
        comment: str | None = None,
        if_not_exists: bool = False,
    ) -> dict:
        """CREATE COMPUTE POOL. Returns the pool's DESCRIBE row."""
        pool_name = self._name(name)
        if instance_family is None:
            raise InvalidArgumentError(
                f"compute pool {pool_name}: INSTANCE_FAMILY is required (e.g. 'CPU_X64_S')"
            )
        family = _family(instance_family)
        lo = _int(min_nodes, "MIN_NODES", pool_name, minimum=1)
        hi = _int(max_nodes, "MAX_NODES", pool_name, minimum=1)
        _check_node_range(pool_name, lo, hi)
        suspend_secs = _int(auto_suspend_secs, "AUTO_SUSPEND_SECS", pool_name, minimum=0)
        resume = _bool(auto_resume, "AUTO_RESUME", pool_name)
        suspended = _bool(initially_suspended, "INITIALLY_SUSPENDED", pool_name)
        kind = backend_name(backend)
        if kind == "local" and address:
            raise InvalidArgumentError(
                f"compute pool {pool_name}: ADDRESS applies to BACKEND = 'ray' only"
            )
        if kind != "local":
            # refuse now, not at first placement, when it cannot load or ADDRESS is malformed
            cls = backend_class(kind)
            check = getattr(cls, "check_address", None)
            address = check(address, pool=pool_name) if check else (address or "auto")
        try:
            with self._lock, self.catalog.transaction() as s:
                self.security.require(s, ctx, "CREATE COMPUTE POOL", ACCOUNT)
                existing = s.scalar(select(m.ComputePool).where(m.ComputePool.name == pool_name))
                if existing is not None:
                    if if_not_exists:
                        return self._describe(s, existing)
                    raise ObjectExistsError(f"compute pool {pool_name} already exists")
                now = _now()
                pool = m.ComputePool(
                    name=pool_name,
                    instance_family=family.name,
                    min_nodes=lo,
                    max_nodes=hi,
                    auto_resume=resume,
                    auto_suspend_secs=suspend_secs,
                    state=SUSPENDED if suspended else IDLE,
                    backend=kind,
                    address=address,
                    owner_role=self.security.owner_role_for_create(ctx),
                    comment=comment,
                    created_on=now,
                    resumed_on=None if suspended else now,
                    idle_since=None if suspended else now,
                )
                s.add(pool)
                s.flush()
                if not suspended:
                    self._ensure_min_nodes(s, pool)
                return self._describe(s, pool)
        except IntegrityError:  # created concurrently by another process
            if if_not_exists:
                return self.describe_pool(ctx, pool_name)
            raise ObjectExistsError(f"compute pool {pool_name} already exists") from None

    def drop_pool(self, ctx: RequestContext, name: str, if_exists: bool = False) -> bool:
        """DROP COMPUTE POOL; refused while services use it (it names them)."""
        pool_name = self._name(name)
        with self._lock, self.catalog.transaction() as s:
            pool = s.scalar(select(m.ComputePool).where(m.ComputePool.name == pool_name))
            if pool is None:
                if if_exists:
                    return False
                raise ObjectNotFoundError(
                    f"compute pool {pool_name} does not exist or not authorized"
                )
            self.security.require_owner(s, ctx, pool)
            services = self._services_on(s, pool)
            if services:
                raise ObjectInUseError(
                    f"compute pool {pool_name} cannot be dropped: services use it ("
                    + ", ".join(services)
                    + "); drop those services first (DROP SERVICE ...)"
                )
            holders = self._holders(s, pool)
            if holders:
                raise ObjectInUseError(
                    f"compute pool {pool_name} cannot be dropped: still running "
                    f"{', '.join(holders)}"
                )
            self.security.on_drop(s, pool)
            cluster = (pool.backend, pool.address)
            s.delete(pool)
            shared = s.scalar(
                select(func.count(m.ComputePool.id)).where(
                    m.ComputePool.backend == cluster[0], m.ComputePool.address == cluster[1]
                )
            )
        with self._lock:
            cached = self._backends.get(pool_name)
        if cached is not None and not shared:
            try:  # the last pool on its cluster: its node proxies go with it
                cached[1].stop_ingress_proxies()
            except Exception:  # the cluster may be gone already
                log.exception("stopping the ingress proxies of pool %s failed", pool_name)
        self._forget_backend(pool_name)
        return True

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

    # -- alter ------------------------------------------------------------------------------------
    def alter_pool(
        self,
        ctx: RequestContext,
        name: str,
        *,
        suspend: bool | None = None,
        resume: bool | None = None,
        stop_all: bool | None = None,
        min_nodes: int | None = None,
        max_nodes: int | None = None,
        auto_resume: bool | None = None,
        auto_suspend_secs: int | None = None,
        comment: str | None = None,
        if_exists: bool = False,
    ) -> dict | None:
        """ALTER COMPUTE POOL ... SUSPEND | RESUME | STOP ALL | SET props. Returns DESCRIBE."""
        pool_name = self._name(name)
        actions = [
            a for a, on in (("SUSPEND", suspend), ("RESUME", resume), ("STOP ALL", stop_all)) if on
        ]
        props = {
            k: v
            for k, v in {
                "min_nodes": min_nodes,
                "max_nodes": max_nodes,
                "auto_resume": auto_resume,
                "auto_suspend_secs": auto_suspend_secs,
                "comment": comment,
            }.items()
            if v is not None
        }
        if len(actions) > 1 or (actions and props):
            raise InvalidArgumentError(
                f"ALTER COMPUTE POOL {pool_name}: use one of SUSPEND, RESUME, STOP ALL or SET"
            )
        if not actions and not props:
            raise InvalidArgumentError(
                f"ALTER COMPUTE POOL {pool_name}: nothing to change (SUSPEND, RESUME, STOP ALL "
                "or SET MIN_NODES / MAX_NODES / AUTO_RESUME / AUTO_SUSPEND_SECS / COMMENT)"
            )
        with self.catalog.transaction() as s:
            pool = s.scalar(select(m.ComputePool).where(m.ComputePool.name == pool_name))
            if pool is None:
                if if_exists:
                    return None
                raise ObjectNotFoundError(
                    f"compute pool {pool_name} does not exist or not authorized"
                )
            self.security.require(s, ctx, "OPERATE" if actions else "MODIFY", pool)
        if actions:
            action = actions[0]
            if action in ("SUSPEND", "STOP ALL"):
                for listener in list(self._listeners):
                    listener(ctx, pool_name, action)
                return self._suspend(pool_name, action, suspend_after=action == "SUSPEND")
            return self._resume(pool_name)
        return self._set(pool_name, props)

    def _suspend(self, pool_name: str, action: str, *, suspend_after: bool) -> dict:
        with self._lock, self.catalog.transaction() as s:
            pool = self._pool(s, pool_name)
            holders = self._holders(s, pool)
            if holders:
                raise InvalidStateError(
                    f"ALTER COMPUTE POOL {pool_name} {action}: instances still run on it "
                    f"({', '.join(holders)}); suspend or drop those services first "
                    "(ALTER SERVICE ... SUSPEND / DROP SERVICE ...)"
                )
            if suspend_after and pool.state != SUSPENDED:
                for node in s.scalars(select(m.PoolNode).where(m.PoolNode.pool_id == pool.id)):
                    s.delete(node)
                pool.state = SUSPENDED
                pool.idle_since = None
                s.flush()
            return self._describe(s, pool)

    def _resume(self, pool_name: str) -> dict:
        with self._lock, self.catalog.transaction() as s:
            pool = self._pool(s, pool_name)
            if pool.state == SUSPENDED:
                self._wake(s, pool)
            return self._describe(s, pool)

    def _wake(self, s: Session, pool: m.ComputePool) -> None:
        now = _now()
        pool.state = IDLE
        pool.resumed_on = now
        pool.idle_since = now
        self._ensure_min_nodes(s, pool)
        s.flush()

    def _set(self, pool_name: str, props: dict[str, Any]) -> dict:
        with self._lock, self.catalog.transaction() as s:
            pool = self._pool(s, pool_name)
            lo = (
                _int(props["min_nodes"], "MIN_NODES", pool_name, minimum=1)
                if "min_nodes" in props
                else pool.min_nodes
            )
            hi = (
                _int(props["max_nodes"], "MAX_NODES", pool_name, minimum=1)
                if "max_nodes" in props
                else pool.max_nodes
            )
            _check_node_range(pool_name, lo, hi)
            busy = self._busy_nodes(s, pool)
            if len(busy) > hi:
                raise InvalidStateError(
                    f"compute pool {pool_name}: cannot lower MAX_NODES to {hi}: {len(busy)} "
                    f"nodes run instances ({', '.join(sorted(busy))})"
                )
            pool.min_nodes, pool.max_nodes = lo, hi
            if "auto_resume" in props:
                pool.auto_resume = _bool(props["auto_resume"], "AUTO_RESUME", pool_name)
            if "auto_suspend_secs" in props:
                pool.auto_suspend_secs = _int(
                    props["auto_suspend_secs"], "AUTO_SUSPEND_SECS", pool_name, minimum=0
                )
            if "comment" in props:
                pool.comment = str(props["comment"])
            pool.updated_on = _now()
            if pool.state != SUSPENDED:
                self._ensure_min_nodes(s, pool)
                self._trim_nodes(s, pool)
            s.flush()
            return self._describe(s, pool)

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
            family = _family(pool.instance_family)
            if (
                request.cpu > family.vcpu + _EPS
                or request.memory_gb > family.memory_gb + _EPS
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
                pool.idle_since = _now()
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
        now = now or _now()
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
        family = _family(pool.instance_family)
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
                family=_family(family),
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


def _family(name: str) -> InstanceFamily:
    return instance_family(name)


def _capacity(family: InstanceFamily) -> str:
    return f"{family.vcpu:g} vCPU, {family.memory_gb:g} GiB memory, {family.gpu} GPU"


def _fits(request: ResourceRequest, free: tuple[float, float, list[int]]) -> bool:
    return (
        request.cpu <= free[0] + _EPS
        and request.memory_gb <= free[1] + _EPS
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
