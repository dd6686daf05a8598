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

``ComputeManager`` is layered: ``pools.PoolCatalog`` (look-ups, nodes, SHOW / DESCRIBE, backends)
<- ``placement.PoolPlacement`` (place, release, idle suspension) <- ``ComputeManager`` (CREATE /
DROP / ALTER).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from neve.catalog import models as m
from neve.compute.backends import backend_class, backend_name
from neve.compute.placement import PoolPlacement
from neve.compute.pools import IDLE, MAX_NODES_LIMIT, SUSPENDED, family_named, log, utc_now
from neve.context import RequestContext
from neve.errors import (
    InvalidArgumentError,
    InvalidStateError,
    ObjectExistsError,
    ObjectInUseError,
    ObjectNotFoundError,
)
from neve.security.objects import ACCOUNT


class ComputeManager(PoolPlacement):
    """CREATE / DROP / ALTER COMPUTE POOL over the catalog and placement layers."""

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
        family = family_named(instance_family)
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
                now = utc_now()
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
            pool.updated_on = utc_now()
            if pool.state != SUSPENDED:
                self._ensure_min_nodes(s, pool)
                self._trim_nodes(s, pool)
            s.flush()
            return self._describe(s, pool)


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
