"""The reconcile loop: keep every active service's instances alive, scaled and (when idle) asleep.

One pass (``Supervisor.reconcile``) looks at each service that should have processes and:

- probes every instance: a process that is gone, or that stopped answering ``/ready`` for
  ``UNHEALTHY_PROBES`` passes, is marked FAILED and restarted after a backoff
  (0.5 s, 1 s, 2 s ... up to 30 s; reset once it is ready again) and the event is logged;
  an instance that fails ``CRASH_LOOP_LIMIT`` times in a row without becoming ready fails the
  service with the end of its log;
- before any restart, checks that the service's owner still may use the model: if not, the
  service FAILS with that reason (it kept running until then, as on the reference platform);
- when ``min_instances < max_instances``, scales on queue depth (``/metrics``): up by one when
  the average queued rows per ready instance stay above ``SCALE_UP_QUEUE_ROWS`` for two passes,
  down by one when the queues stayed empty for ``SCALE_DOWN_IDLE_S`` (account settings
  ``service_scale_up_queue_rows`` / ``service_scale_down_idle_secs``);
- suspends a service that got no request for ``auto_suspend_secs``.

Only one process supervises an account at a time: the loop holds an exclusive ``flock`` on
``<home>/run/services-supervisor.lock`` (the control-plane daemon, normally). Another process's
``reconcile()`` returns without acting while the lock is held elsewhere.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import select

from neve.catalog import models as m
from neve.config import ServiceSettings
from neve.errors import NeveError
from neve.services import states
from neve.services.instances import InstanceRef, ServiceRef

if TYPE_CHECKING:
    from neve.catalog import Catalog
    from neve.config import Settings
    from neve.services.instances import InstanceRuntime
    from neve.services.lifecycle import Lifecycle
    from neve.services.logs import ServiceLogs

log = logging.getLogger("neve.services")

UNHEALTHY_PROBES = 3
CRASH_LOOP_LIMIT = 5
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
SCALE_UP_QUEUE_ROWS: float = ServiceSettings.model_fields["scale_up_queue_rows"].default
SCALE_DOWN_IDLE_S: float = ServiceSettings.model_fields["scale_down_idle_secs"].default
#: A STARTING instance that is alive but not ready after this long is restarted.
STARTING_TIMEOUT_S = 600.0


def backoff_s(consecutive_failures: int) -> float:
    """Delay before the n-th consecutive restart (n >= 1)."""
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** max(0, consecutive_failures - 1))


def autoscale_decision(
    *,
    current: int,
    ready: int,
    min_instances: int,
    max_instances: int,
    queued_rows: float,
    busy_passes: int,
    idle_for_s: float,
    scale_up_queue_rows: float = SCALE_UP_QUEUE_ROWS,
    scale_down_idle_s: float = SCALE_DOWN_IDLE_S,
) -> int:
    """The instance count the queues ask for (``current`` when nothing should change)."""
    if min_instances >= max_instances:
        return current
    if current < min_instances:
        return min_instances
    if current > max_instances:
        return max_instances
    if ready and queued_rows / ready > scale_up_queue_rows and busy_passes >= 2:
        return min(max_instances, current + 1)
    if queued_rows == 0 and idle_for_s >= scale_down_idle_s and current > max(min_instances, 1):
        return current - 1
    return current


@dataclass
class InstanceHealth:
    failed_probes: int = 0
    consecutive_failures: int = 0
    restart_at: float | None = None


@dataclass
class ScaleState:
    busy_passes: int = 0
    idle_since: float = field(default_factory=time.monotonic)


class SupervisorLock:
    """An exclusive, non-blocking ``flock``: one supervising process per account."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None


class SupervisedServices(Protocol):
    """What the supervisor uses of the services manager that owns it."""

    catalog: Catalog
    settings: Settings
    lifecycle: Lifecycle
    runtime: InstanceRuntime
    logs: ServiceLogs

    @property
    def closing(self) -> bool: ...

    def access_lost(self, sid: int) -> str | None: ...

    def fail_service(self, sid: int, reason: str) -> None: ...


class Supervisor:
    def __init__(self, manager: SupervisedServices) -> None:
        self.manager = manager
        self.catalog = manager.catalog
        self.settings = manager.settings
        self.lifecycle = manager.lifecycle
        self.runtime = manager.runtime
        self.logs = manager.logs
        self.interval_s = self.settings.service.supervisor_interval_secs
        self.scale_up_queue_rows = self.settings.service.scale_up_queue_rows
        self.scale_down_idle_s = self.settings.service.scale_down_idle_secs
        self.lock = SupervisorLock(self.settings.home / "run" / "services-supervisor.lock")
        self._pass_lock = threading.Lock()
        self._health: dict[tuple[int, int], InstanceHealth] = {}
        self._scale: dict[int, ScaleState] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- background thread ------------------------------------------------------------------------
    def start(self) -> bool:
        """Run ``reconcile`` every ``interval_s`` in a daemon thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return True
        if not self.lock.acquire():
            return False
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, name="neve-services-supervisor", daemon=True
        )
        self._thread.start()
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self.lock.release()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.reconcile()
            except Exception:  # one bad pass must not end supervision
                log.exception("services supervisor pass failed")

    # -- one pass ---------------------------------------------------------------------------------
    def reconcile(self) -> None:
        if not self.lock.acquire():
            return  # another process supervises this account
        if not self._pass_lock.acquire(blocking=False):
            return  # a pass is already running (the daemon's timer and our thread)
        try:
            with self.catalog.transaction() as s:
                ids = list(
                    s.scalars(
                        select(m.Service.id).where(
                            m.Service.status.in_([*states.ACTIVE, states.SUSPENDING])
                        )
                    )
                )
            for sid in ids:
                if self.manager.closing:
                    return
                prov = self.lifecycle.provisioning(sid)
                if prov is not None and not prov.done.is_set():
                    continue  # the provisioning thread owns it for now
                try:
                    self._reconcile_service(sid)
                except NeveError as exc:
                    log.warning("service #%s: %s", sid, exc.message)
                except Exception:
                    log.exception("reconciling service #%s failed", sid)
        finally:
            self._pass_lock.release()

    def _reconcile_service(self, sid: int) -> None:
        with self.lifecycle.locks.try_hold(sid) as got:
            if not got:
                return  # someone is changing it right now; next pass
            status = self.lifecycle.status_of(sid)
            if status is None:
                return
            if status[0] == states.SUSPENDING:  # a suspend interrupted by a restart
                self.lifecycle.suspend(sid, status[1] or "suspended")
                return
            ref, _status, instances = self.lifecycle.ref(sid)
            if self._auto_suspend(sid, ref):
                return
            for inst in instances:
                if not self._check_instance(ref, inst):
                    return  # the service failed
            self._autoscale(sid, ref)
            self._update_service_status(sid)

    # -- health -----------------------------------------------------------------------------------
    def _check_instance(self, ref: ServiceRef, inst: InstanceRef) -> bool:
        key = (ref.id, inst.index)
        health = self._health.setdefault(key, InstanceHealth())
        lc = self.lifecycle
        if inst.status in (states.INSTANCE_STARTING, states.INSTANCE_READY):
            if not self.runtime.is_alive(ref, inst):
                self._mark_failed(ref, inst, health, "the process exited")
                return True
            if self.runtime.probe_ready(inst):
                health.failed_probes = 0
                if inst.status != states.INSTANCE_READY:
                    lc.update_instance(ref.id, inst.index, status=states.INSTANCE_READY)
                    self.logs.event(ref.qn, f"instance {inst.index} is ready")
                health.consecutive_failures = 0
                return True
            if inst.status == states.INSTANCE_READY:
                health.failed_probes += 1
                if health.failed_probes >= UNHEALTHY_PROBES:
                    self._mark_failed(
                        ref, inst, health, f"/ready failed {health.failed_probes} probes in a row"
                    )
            else:
                started = self._started_on(ref.id, inst.index)
                if (
                    started is not None
                    and (datetime.now(UTC) - started).total_seconds() > STARTING_TIMEOUT_S
                ):
                    self._mark_failed(ref, inst, health, "not ready in time after starting")
            return True
        if inst.status == states.INSTANCE_FAILED:
            if health.restart_at is None:
                health.consecutive_failures += 1
                health.restart_at = time.monotonic() + backoff_s(health.consecutive_failures)
            if time.monotonic() < health.restart_at:
                return True
            if health.consecutive_failures > CRASH_LOOP_LIMIT:
                reason = (
                    f"instance {inst.index} failed {health.consecutive_failures} times in a row "
                    f"without becoming ready; end of its log:\n" + lc.log_tail(ref.qn, inst.index)
                )
                self.manager.fail_service(ref.id, reason)
                return False
            lost = self.manager.access_lost(ref.id)
            if lost is not None:
                self.manager.fail_service(ref.id, lost)
                return False
            health.restart_at = None
            lc.start_instance(ref.id, inst.index, restart=True, raise_on_error=False)
            return True
        if inst.status == states.INSTANCE_PENDING:
            # Not placed yet (the pool was full): try again, not more often than the backoff.
            if health.restart_at is not None and time.monotonic() < health.restart_at:
                return True
            if not lc.start_instance(ref.id, inst.index, raise_on_error=False):
                health.consecutive_failures += 1
                health.restart_at = time.monotonic() + backoff_s(health.consecutive_failures)
            else:
                health.restart_at = None
        return True

    def _mark_failed(
        self, ref: ServiceRef, inst: InstanceRef, health: InstanceHealth, why: str
    ) -> None:
        self.runtime.stop(ref, inst)  # leave nothing half-alive (workers of a dead supervisor)
        self.lifecycle.update_instance(
            ref.id, inst.index, status=states.INSTANCE_FAILED, status_reason=why, pid=None
        )
        health.failed_probes = 0
        health.consecutive_failures += 1
        delay = backoff_s(health.consecutive_failures)
        health.restart_at = time.monotonic() + delay
        self.logs.event(
            ref.qn,
            f"instance {inst.index} failed ({why}); restart {inst.restart_count + 1} in {delay:g} s",
            level=logging.WARNING,
        )

    def _started_on(self, sid: int, index: int) -> datetime | None:
        with self.catalog.transaction() as s:
            return s.scalar(
                select(m.ServiceInstance.started_on).where(
                    m.ServiceInstance.service_id == sid,
                    m.ServiceInstance.instance_index == index,
                )
            )

    def _update_service_status(self, sid: int) -> None:
        """STARTING (resumed) -> RUNNING once an instance is ready; reasons for no ready one."""
        _ref, status, instances = self.lifecycle.ref(sid)
        ready = sum(1 for i in instances if i.status == states.INSTANCE_READY)
        if status == states.STARTING and ready:
            self.lifecycle.set_status(sid, states.RUNNING, None, only_from={states.STARTING})
        elif status == states.RUNNING:
            reason = None if ready else "no instance is ready: restarting"
            with self.catalog.transaction() as s:
                svc = s.get(m.Service, sid)
                if svc is not None and svc.status_reason != reason:
                    svc.status_reason = reason

    # -- auto-suspend and autoscaling -------------------------------------------------------------
    def _auto_suspend(self, sid: int, ref: ServiceRef) -> bool:
        with self.catalog.transaction() as s:
            svc = s.get(m.Service, sid)
            if svc is None or not svc.auto_suspend_secs or svc.status != states.RUNNING:
                return False
            last = max(
                t for t in (svc.last_request_on, svc.updated_on, svc.created_on) if t is not None
            )
            idle = (datetime.now(UTC) - last).total_seconds()
            limit = svc.auto_suspend_secs
        if idle < limit:
            return False
        return self.lifecycle.suspend(sid, f"auto-suspended after {idle:.0f} s without requests")

    def _autoscale(self, sid: int, ref: ServiceRef) -> None:
        with self.catalog.transaction() as s:
            svc = s.get(m.Service, sid)
            if svc is None:
                return
            lo, hi = svc.min_instances, svc.max_instances
            instances = [InstanceRef.of(i) for i in svc.instances]
        if lo >= hi:  # fixed size: keep exactly max_instances (after an ALTER, say)
            if len(instances) != hi:
                self.lifecycle.scale_to(sid, hi, f"MIN_INSTANCES = MAX_INSTANCES = {hi}")
            return
        ready = [i for i in instances if i.status == states.INSTANCE_READY]
        state = self._scale.setdefault(sid, ScaleState())
        now = time.monotonic()
        if len(ready) < len(instances):
            # Instances are (re)starting: decide once they serve, and measure idleness from then
            # (an instance that is still loading must not be scaled away for an empty queue).
            state.busy_passes = 0
            state.idle_since = now
            return
        queued = 0.0
        for inst in ready:
            rows = self.runtime.queue_rows(inst)
            queued += rows or 0.0
        if ready and queued / len(ready) > self.scale_up_queue_rows:
            state.busy_passes += 1
        else:
            state.busy_passes = 0
        if queued > 0:
            state.idle_since = now
        want = autoscale_decision(
            current=len(instances),
            ready=len(ready),
            min_instances=lo,
            max_instances=hi,
            queued_rows=queued,
            busy_passes=state.busy_passes,
            idle_for_s=now - state.idle_since,
            scale_up_queue_rows=self.scale_up_queue_rows,
            scale_down_idle_s=self.scale_down_idle_s,
        )
        if want != len(instances):
            state.busy_passes = 0
            state.idle_since = now
            self.lifecycle.scale_to(
                sid, want, f"queue depth {queued:g} rows over {len(ready)} ready instance(s)"
            )

    def forget(self, sid: int) -> None:
        self._scale.pop(sid, None)
        for key in [k for k in self._health if k[0] == sid]:
            self._health.pop(key, None)
