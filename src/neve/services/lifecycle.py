"""Service lifecycle: provision (build + start), start/stop instances, suspend, resume, scale, drop.

Every change of a service's processes goes through here, under that service's lock (one
``threading.RLock`` per service in this process), and is mirrored in the catalog: a
``service_instances`` row exists for every instance the service should have (its *target*),
with the process's host, port, pid and backend reference once launched. The supervisor
(``neve.services.supervisor``) keeps those rows true; callers waiting for readiness only read
rows and probe ``/ready``.

Provisioning (image build, then the first instances) runs in a background thread, so
``create_service(block=False)`` returns at once and a ``block=True`` caller just waits on it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from neve.catalog import lookup
from neve.catalog import models as m
from neve.context import RequestContext
from neve.errors import (
    InvalidStateError,
    NeveError,
    ObjectNotFoundError,
    ResourceError,
    ServiceUnavailableError,
)
from neve.identifiers import QualifiedName
from neve.services import states
from neve.services.instances import InstanceRef, InstanceRuntime, ServiceRef
from neve.services.logs import ServiceLogs, tail

if TYPE_CHECKING:
    from neve.catalog import Catalog
    from neve.config import Settings

log = logging.getLogger("neve.services")

#: Lines of an instance's log quoted in the error when it dies before it is ready.
LOG_LINES_IN_ERRORS = 25


def now() -> datetime:
    return datetime.now(UTC)


def initial_instances(min_instances: int, max_instances: int) -> int:
    """How many instances a (re)starting service gets: its minimum, at least one."""
    return max(1, min(max_instances, max(min_instances, 1)))


class ServiceLocks:
    """One re-entrant lock per service id (in this process)."""

    def __init__(self) -> None:
        self._locks: dict[int, threading.RLock] = {}
        self._guard = threading.Lock()

    def get(self, sid: int) -> threading.RLock:
        with self._guard:
            lock = self._locks.get(sid)
            if lock is None:
                lock = self._locks[sid] = threading.RLock()
            return lock

    @contextmanager
    def hold(self, sid: int) -> Iterator[None]:
        with self.get(sid):
            yield

    @contextmanager
    def try_hold(self, sid: int) -> Iterator[bool]:
        lock = self.get(sid)
        got = lock.acquire(blocking=False)
        try:
            yield got
        finally:
            if got:
                lock.release()

    def forget(self, sid: int) -> None:
        with self._guard:
            self._locks.pop(sid, None)


@dataclass
class Provisioning:
    thread: threading.Thread
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class Lifecycle:
    def __init__(
        self, catalog: Catalog, settings: Settings, logs: ServiceLogs, runtime: InstanceRuntime
    ) -> None:
        self.catalog = catalog
        self.settings = settings
        self.logs = logs
        self.runtime = runtime
        self.locks = ServiceLocks()
        self._provisioning: dict[int, Provisioning] = {}
        self._prov_guard = threading.Lock()
        self.start_timeout_s = settings.service.start_timeout_secs

    # -- catalog helpers --------------------------------------------------------------------------
    def service_ref(self, s: Session, svc: m.Service) -> ServiceRef:
        pool = s.get(m.ComputePool, svc.pool_id)
        return ServiceRef(
            id=svc.id,
            qn=lookup.qualified(s, svc.schema_id, svc.name),
            pool_id=svc.pool_id,
            pool_name=pool.name if pool is not None else "?",
            spec=dict(svc.spec or {}),
            image_id=svc.image_id,
            model_version_id=svc.model_version_id,
            owner_role=svc.owner_role,
        )

    def ref(self, sid: int) -> tuple[ServiceRef, str, list[InstanceRef]]:
        """The service, its status and its instances, read in one transaction."""
        with self.catalog.transaction() as s:
            svc = s.get(m.Service, sid)
            if svc is None:
                raise ObjectNotFoundError(f"service #{sid} no longer exists")
            return self.service_ref(s, svc), svc.status, [InstanceRef.of(i) for i in svc.instances]

    def status_of(self, sid: int) -> tuple[str, str | None] | None:
        with self.catalog.transaction() as s:
            svc = s.get(m.Service, sid)
            return None if svc is None else (svc.status, svc.status_reason)

    def set_status(
        self,
        sid: int,
        status: str,
        reason: str | None = None,
        *,
        only_from: frozenset[str] | set[str] | None = None,
        **values: Any,
    ) -> bool:
        """Set the service's status (if it is in ``only_from``); False when it was not."""
        with self.catalog.transaction() as s:
            svc = s.get(m.Service, sid)
            if svc is None or (only_from is not None and svc.status not in only_from):
                return False
            svc.status = status
            svc.status_reason = reason
            for key, value in values.items():
                setattr(svc, key, value)
            return True

    def update_instance(self, sid: int, index: int, **values: Any) -> None:
        with self.catalog.transaction() as s:
            inst = s.scalar(
                select(m.ServiceInstance).where(
                    m.ServiceInstance.service_id == sid,
                    m.ServiceInstance.instance_index == index,
                )
            )
            if inst is None:
                return
            for key, value in values.items():
                setattr(inst, key, value)

    # -- provisioning -----------------------------------------------------------------------------
    def provisioning(self, sid: int) -> Provisioning | None:
        with self._prov_guard:
            return self._provisioning.get(sid)

    def provision(
        self,
        ctx: RequestContext,
        sid: int,
        *,
        force_rebuild: bool,
        on_progress: Callable[[str], None] | None = None,
    ) -> Provisioning:
        """Build the image and start the first instances in a background thread."""
        with self._prov_guard:
            current = self._provisioning.get(sid)
            if current is not None and not current.done.is_set():
                return current
            thread = threading.Thread(
                target=self._provision,
                args=(ctx, sid, force_rebuild),
                name=f"neve-provision-{sid}",
                daemon=True,
            )
            prov = Provisioning(thread)
            self._provisioning[sid] = prov
        thread.start()
        return prov

    def _provision(self, ctx: RequestContext, sid: int, force_rebuild: bool) -> None:
        prov = self.provisioning(sid)
        assert prov is not None
        try:
            ref, status, _ = self.ref(sid)
            if status == states.DELETING:
                return
            self.set_status(sid, states.BUILDING, "building the model environment")
            self.logs.event(ref.qn, "building the model environment (image)")
            image_id = self.runtime.build_image(ctx, ref, force_rebuild=force_rebuild)
            if not self.set_status(
                sid,
                states.STARTING,
                "starting instances",
                only_from={states.BUILDING},
                image_id=image_id,
            ):
                return  # dropped (DELETING) or failed meanwhile
            ref, _, _ = self.ref(sid)
            self.logs.event(ref.qn, f"image ready (#{image_id}); starting instances")
            with self.locks.hold(sid):
                with self.catalog.transaction() as s:
                    svc = s.get(m.Service, sid)
                    if svc is None or svc.status != states.STARTING:
                        return  # dropped while the image was built
                    target = initial_instances(svc.min_instances, svc.max_instances)
                self._set_target(sid, target)
                self.start_missing(sid, raise_on_error=True)
            self.wait_instances_ready(sid, self.start_timeout_s, all_instances=True)
            if self.set_status(sid, states.RUNNING, None, only_from={states.STARTING}):
                self.logs.event(ref.qn, "RUNNING: every instance is ready")
        except BaseException as exc:  # noqa: BLE001 (recorded and reported to the waiter)
            prov.error = exc
            self._fail_provisioning(sid, exc)
        finally:
            prov.done.set()

    def _fail_provisioning(self, sid: int, exc: BaseException) -> None:
        reason = exc.message if isinstance(exc, NeveError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, NeveError):
            log.exception("provisioning service #%s failed", sid)
        try:
            with self.locks.hold(sid):
                self.stop_all(sid)
                self.set_status(
                    sid,
                    states.FAILED,
                    reason,
                    only_from=set(states.SERVICE_STATUSES) - {states.DELETING},
                )
            status = self.status_of(sid)
            if status is not None:
                ref, _, _ = self.ref(sid)
                self.logs.event(ref.qn, f"FAILED: {reason}", level=logging.WARNING)
        except ObjectNotFoundError:
            pass

    def wait_provisioned(self, sid: int, timeout_s: float | None = None) -> None:
        """Wait for the provisioning thread; re-raise its error."""
        prov = self.provisioning(sid)
        if prov is None:
            return
        if not prov.done.wait(timeout_s):
            raise ServiceUnavailableError(
                f"service #{sid} is still being provisioned after {timeout_s:g} s"
            )
        if prov.error is not None:
            raise prov.error

    # -- instances --------------------------------------------------------------------------------
    def _set_target(self, sid: int, target: int) -> list[int]:
        """Make the instance rows 0..target-1 exist (new ones PENDING); return the new indexes."""
        with self.catalog.transaction() as s:
            svc = s.get(m.Service, sid)
            if svc is None:
                return []  # dropped meanwhile
            have = {i.instance_index for i in svc.instances}
            added = [i for i in range(target) if i not in have]
            for index in added:
                s.add(
                    m.ServiceInstance(
                        service_id=sid, instance_index=index, status=states.INSTANCE_PENDING
                    )
                )
            return added

    def start_missing(self, sid: int, *, raise_on_error: bool = False) -> None:
        """Launch every instance row that has no process (PENDING)."""
        with self.locks.hold(sid):
            _ref, _status, instances = self.ref(sid)
            for inst in instances:
                if inst.status == states.INSTANCE_PENDING:
                    self.start_instance(sid, inst.index, raise_on_error=raise_on_error)

    def start_instance(
        self, sid: int, index: int, *, restart: bool = False, raise_on_error: bool = True
    ) -> bool:
        """Launch instance ``index`` (its row must exist). False when it could not be placed."""
        with self.locks.hold(sid):
            ref, _status, instances = self.ref(sid)
            old = next((i for i in instances if i.index == index), None)
            if old is None:
                return False
            if old.pid is not None or old.backend_ref is not None:
                self.runtime.stop(ref, old)  # whatever is left of the previous process
            self.logs.mark_start(
                ref.qn, index, "restarting instance" if restart else "starting instance"
            )
            try:
                launched = self.runtime.launch(ref, index, self.logs.instance_log(ref.qn, index))
            except NeveError as exc:
                why = exc.message
                self.update_instance(
                    sid,
                    index,
                    status=states.INSTANCE_PENDING,
                    status_reason=why,
                    pid=None,
                    host=None,
                    port=None,
                    backend_ref=None,
                )
                self.logs.event(ref.qn, f"instance {index} cannot start: {why}", level=30)
                # In the instance's own log too: SYSTEM$GET_SERVICE_LOGS shows why it is down.
                self.logs.mark_start(ref.qn, index, f"cannot start: {why}")
                if raise_on_error:
                    raise
                return False
            values: dict[str, Any] = {
                "status": states.INSTANCE_STARTING,
                "status_reason": None,
                "host": launched.host,
                "port": launched.port,
                "pid": launched.pid,
                "node": launched.node,
                "backend_ref": launched.backend_ref,
                "started_on": now(),
            }
            if restart:
                values["restart_count"] = old.restart_count + 1
            self.update_instance(sid, index, **values)
            self.logs.event(
                ref.qn,
                f"instance {index} {'restarted' if restart else 'started'}: pid {launched.pid} "
                f"on {launched.host}:{launched.port} (node {launched.node})",
            )
            return True

    def stop_instance(self, ref: ServiceRef, inst: InstanceRef, *, remove: bool) -> None:
        self.runtime.stop(ref, inst)
        with self.catalog.transaction() as s:
            row = s.scalar(
                select(m.ServiceInstance).where(
                    m.ServiceInstance.service_id == ref.id,
                    m.ServiceInstance.instance_index == inst.index,
                )
            )
            if row is None:
                return
            if remove:
                s.delete(row)
            else:
                row.pid = row.host = row.port = row.backend_ref = None

    def stop_all(self, sid: int) -> None:
        """Stop every instance of the service (in parallel) and remove their rows."""
        with self.locks.hold(sid):
            ref, _status, instances = self.ref(sid)
            threads = [
                threading.Thread(
                    target=self.stop_instance, args=(ref, inst), kwargs={"remove": True}
                )
                for inst in instances
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

    def probe(self, sid: int) -> None:
        """Mark STARTING instances that answer ``/ready`` as READY (cheap; called by waiters)."""
        ref, _status, instances = self.ref(sid)
        for inst in instances:
            if inst.status == states.INSTANCE_STARTING and self.runtime.probe_ready(inst):
                self.update_instance(sid, inst.index, status=states.INSTANCE_READY)
                self.logs.event(ref.qn, f"instance {inst.index} is ready")

    def wait_instances_ready(self, sid: int, timeout_s: float, *, all_instances: bool) -> None:
        """Wait until every (or one) instance is READY; raise if one dies before it is ready."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.probe(sid)
            ref, status, instances = self.ref(sid)
            if status not in states.ACTIVE:
                raise InvalidStateError(f"service {ref.qn} is {status} while starting")
            ready = [i for i in instances if i.status == states.INSTANCE_READY]
            if instances and (len(ready) == len(instances) if all_instances else ready):
                return
            for inst in instances:
                if inst.status == states.INSTANCE_STARTING and not self.runtime.is_alive(ref, inst):
                    raise ServiceUnavailableError(
                        f"service {ref.qn}: instance {inst.index} exited before it was ready; "
                        f"end of its log:\n{self.log_tail(ref.qn, inst.index)}"
                    )
                if inst.status == states.INSTANCE_PENDING and inst.status_reason:
                    raise ResourceError(
                        f"service {ref.qn}: instance {inst.index} cannot start: "
                        f"{inst.status_reason}"
                    )
            if time.monotonic() >= deadline:
                raise ServiceUnavailableError(
                    f"service {ref.qn}: {len(ready)} of {len(instances)} instance(s) ready after "
                    f"{timeout_s:g} s; end of the log of instance "
                    f"{next((i.index for i in instances if i not in ready), 0)}:\n"
                    + self.log_tail(ref.qn, next((i.index for i in instances if i not in ready), 0))
                )
            time.sleep(0.1)

    def log_tail(self, qn: QualifiedName, index: int) -> str:
        return tail(self.logs.instance_log(qn, index), LOG_LINES_IN_ERRORS)

    # -- suspend / resume / scale -----------------------------------------------------------------
    def suspend(self, sid: int, reason: str) -> bool:
        with self.locks.hold(sid):
            if not self.set_status(
                sid,
                states.SUSPENDING,
                reason,
                only_from={states.RUNNING, states.STARTING, states.SUSPENDING},
            ):
                return False
            ref, _, _ = self.ref(sid)
            self.stop_all(sid)
            self.set_status(sid, states.SUSPENDED, reason, only_from={states.SUSPENDING})
            self.logs.event(ref.qn, f"SUSPENDED ({reason})")
            return True

    def resume(self, sid: int, reason: str, access_check: Callable[[int], str | None]) -> bool:
        """Start a suspended service's instances (does not wait for readiness)."""
        with self.locks.hold(sid):
            status = self.status_of(sid)
            if status is None or status[0] not in states.RESUMABLE:
                return False
            ref, _, _ = self.ref(sid)
            lost = access_check(sid)
            if lost is not None:
                self.set_status(sid, states.FAILED, lost)
                self.logs.event(ref.qn, f"FAILED: {lost}", level=logging.WARNING)
                raise ServiceUnavailableError(f"service {ref.qn} cannot resume: {lost}")
            self.set_status(
                sid, states.STARTING, reason, last_request_on=now()
            )  # a fresh idle clock: do not auto-suspend at once
            with self.catalog.transaction() as s:
                svc = s.get(m.Service, sid)
                if svc is None:
                    return False  # dropped meanwhile
                target = initial_instances(svc.min_instances, svc.max_instances)
            self._set_target(sid, target)
            self.logs.event(ref.qn, f"resuming ({reason}): starting {target} instance(s)")
            self.start_missing(sid)
            return True

    def scale_to(self, sid: int, target: int, reason: str) -> None:
        """Add (launch) or remove (stop, highest index first) instances to reach ``target``."""
        with self.locks.hold(sid):
            ref, status, instances = self.ref(sid)
            if status not in states.ACTIVE:
                return
            current = len(instances)
            if target > current:
                self.logs.event(ref.qn, f"scaling up {current} -> {target} ({reason})")
                self._set_target(sid, target)
                self.start_missing(sid)
            elif target < current:
                self.logs.event(ref.qn, f"scaling down {current} -> {target} ({reason})")
                for inst in sorted(instances, key=lambda i: -i.index)[: current - target]:
                    self.stop_instance(ref, inst, remove=True)
