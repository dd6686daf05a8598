"""Services: a logged model version running as N inference-server instances on a compute pool.

``ServiceManager`` is what the SQL engine, the REST routes and the client call; every method
takes the caller's ``RequestContext`` first and checks privileges with the security manager it
was given:

- create: ownership of the model, USAGE on the compute pool(s), READ on the image repository,
  CREATE SERVICE on the schema, USAGE on build integrations, BIND SERVICE ENDPOINT on the
  account for ingress;
- invoke / endpoints: USAGE on the service; status, containers, logs: MONITOR; suspend, resume,
  scale: OPERATE; comment and drop: ownership.

The work is split: ``spec`` validates arguments, ``lifecycle`` changes processes (build, start,
stop, suspend, resume, scale), ``supervisor`` keeps them healthy, ``invoke`` sends data,
``logs`` keeps per-instance logs, ``views`` renders rows. The manager itself is layered:
``core.ServiceCore`` (names, reads, ALTER, DROP, shared checks) <- ``creation.ServiceCreation``
(CREATE SERVICE for a model version and FROM SPECIFICATION) <- ``ServiceManager`` (logs, invoke
and ingress, supervision). Instances are detached processes: they
outlive the client and the daemon; ``recover()`` reattaches to them when the daemon restarts.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from neve.catalog import lookup
from neve.catalog import models as m
from neve.context import RequestContext, admin_context
from neve.dataplane.targets import (
    IngressTarget,
    service_method_entries,
    service_signatures,
)
from neve.errors import (
    InvalidArgumentError,
    ObjectNotFoundError,
    ServiceUnavailableError,
)
from neve.identifiers import QualifiedName
from neve.services import states
from neve.services.creation import ServiceCreation
from neve.services.logs import read_from, tail
from neve.services.spec import BUILD_CONTAINER_NAME, CONTAINER_NAME

if TYPE_CHECKING:
    import pyarrow as pa


log = logging.getLogger("neve.services")

#: How long ``invoke`` keeps the resolved instances of a service before asking the catalog again.
ADDRESS_TTL_S = 0.5


class ServiceManager(ServiceCreation):
    # -- logs -------------------------------------------------------------------------------------
    def get_service_logs(
        self,
        ctx: RequestContext,
        name: str,
        instance_id: int | str = 0,
        container_name: str = CONTAINER_NAME,
        last_n_lines: int | None = None,
    ) -> str:
        """An instance's log (``model-inference``), or a build job's log (``model-build``)."""
        if last_n_lines is not None and int(last_n_lines) < 0:
            raise InvalidArgumentError(f"last_n_lines must be >= 0, got {last_n_lines}")
        container = str(container_name).strip().lower()
        if container == BUILD_CONTAINER_NAME or str(name).upper().startswith("MODEL_BUILD_"):
            return self._job_logs(ctx, name, container, last_n_lines)
        qn, path, known = self._log_file(ctx, name, instance_id, container)
        if container == CONTAINER_NAME and not path.exists():
            index = int(instance_id)
            if index not in known:
                listed = ", ".join(map(str, known)) or "none running"
                raise InvalidArgumentError(
                    f"service {qn} has no instance {index} (instances: {listed})"
                )
        return tail(path, last_n_lines)

    def follow_service_log(
        self,
        ctx: RequestContext,
        name: str,
        instance_id: int = 0,
        container_name: str = CONTAINER_NAME,
        offset: int = 0,
    ) -> dict[str, Any]:
        """What an instance's log (or ``events``) got since byte ``offset``: ``{"text",
        "offset"}``, the offset to ask from next time (``neve services logs --follow``).
        Offset -1: nothing, and the current end to follow from."""
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < -1:
            raise InvalidArgumentError(f"offset must be an integer >= -1, got {offset!r}")
        container = str(container_name).strip().lower()
        _, path, _ = self._log_file(ctx, name, instance_id, container)
        text, next_offset = read_from(path, offset)
        return {"text": text, "offset": next_offset}

    # -- invoke and ingress -----------------------------------------------------------------------
    def invoke(
        self,
        ctx: RequestContext,
        name: str | QualifiedName,
        method: str,
        rows: list[list],
        *,
        timeout_s: float = 300,
    ) -> list[dict]:
        """FLAT rows ``[[idx, a, b, ...], ...]`` -> one output dict per row, in order (a table
        function's: the rows it answers, see :meth:`invoke_rows`)."""
        return [
            out for _index, out in self.invoke_rows(ctx, name, method, rows, timeout_s=timeout_s)
        ]

    def invoke_rows(
        self,
        ctx: RequestContext,
        name: str | QualifiedName,
        method: str,
        rows: list[list],
        *,
        timeout_s: float = 300,
    ) -> list[list]:
        """FLAT rows -> ``[[idx, {output: value}], ...]``: a function's row for row, with the
        input's indexes; a table function's (partitioned method) all rows as one partition,
        one instance call, its answer's rows numbered from 0 (as an instance answers them)."""
        target = self._target(ctx, name, method)
        outputs = self.invoker.invoke(rows=rows, timeout_s=timeout_s, **target)
        if target["partitioned"]:
            return [[index, out] for index, out in enumerate(outputs)]
        return [[row[0], out] for row, out in zip(rows, outputs, strict=True)]

    def invoke_arrow(
        self,
        ctx: RequestContext,
        name: str | QualifiedName,
        method: str,
        table: pa.Table,
        *,
        timeout_s: float = 300,
        params: dict[str, Any] | None = None,
        partition_column: str | None = None,
        retries: int | None = None,
    ) -> pa.Table:
        """A table of one column per method input -> a table of its outputs, row for row.

        The columnar twin of :meth:`invoke` (Arrow IPC on the wire); SQL service functions
        call it. ``params``: the method's parameters; ``retries``: attempts after a failure to
        reach an instance (None: until ``timeout_s``). A table function (partitioned method)
        is called once per partition of ``partition_column`` (``ServiceInvoker.invoke_arrow``),
        or without it once for all rows (one partition, as ``mv.run`` in-process); its answer
        is its own rows.
        """
        target = self._target(ctx, name, method)
        if partition_column and not target["partitioned"]:
            raise InvalidArgumentError(
                f"function {target['route']!r} of service {target['label']} is not "
                "partitioned: partition_column applies to methods marked @neve.partitioned_api"
            )
        return self.invoker.invoke_arrow(
            table=table,
            timeout_s=timeout_s,
            params=params,
            partition_column=partition_column,
            retries=retries,
            **target,
        )

    def _target(
        self, ctx: RequestContext, name: str | QualifiedName, method: str
    ) -> dict[str, Any]:
        """Where an invoke goes, after the USAGE check: label, route, endpoints, chunk rows,
        whether the method is partitioned (a table function)."""
        with self.catalog.transaction() as s:
            svc = self._service(s, ctx, name)
            self.security.require(s, ctx, "USAGE", svc)
            qn = lookup.qualified(s, svc.schema_id, svc.name)
            route = _route(method, service_signatures(s, svc), qn)
            sid = svc.id
            chunk = (svc.spec or {}).get("max_batch_rows")
            partitioned = _is_table_function(s, svc, route)
        self.touch(sid)

        def endpoints(refresh: bool, remaining: float) -> list[tuple[str, int]]:
            return self._ready_addresses(ctx, sid, refresh=refresh, timeout_s=remaining)

        return {
            "label": str(qn),
            "route": route,
            "endpoints": endpoints,
            "chunk_rows": chunk,
            "partitioned": partitioned,
        }

    def route(
        self, ctx: RequestContext, name: str | QualifiedName, method: str, *, timeout_s: float
    ) -> dict[str, Any]:
        """What a data-plane caller needs (USAGE checked; a suspended service is woken):
        ``label``, ``route``, ready ``instances`` and whether it has an ``ingress`` endpoint."""
        target = self._target(ctx, name, method)
        with self.catalog.transaction() as s:
            ingress = bool(self._service(s, ctx, name).ingress_enabled)
        return {
            "label": target["label"],
            "route": target["route"],
            "instances": [list(a) for a in target["endpoints"](False, timeout_s)],
            "ingress": ingress,
        }

    def _ready_addresses(
        self, ctx: RequestContext, sid: int, *, refresh: bool, timeout_s: float
    ) -> list[tuple[str, int]]:
        cached = self._addresses.get(sid)
        if cached is not None and not refresh and time.monotonic() - cached[0] < ADDRESS_TTL_S:
            return cached[1]
        target = self._targets.target_by_id(sid)
        if not target.ready:
            target = self.ensure_running(ctx, sid, min(timeout_s, self.resume_timeout_s))
        self._addresses[sid] = (time.monotonic(), list(target.instances))
        return list(target.instances)

    def ingress_target(
        self, ctx: RequestContext, *, host: str | None = None, name: str | None = None
    ) -> IngressTarget:
        return self._targets.ingress_target(ctx, host=host, name=name)

    def ensure_running(
        self, ctx: RequestContext, service_id: int, timeout_s: float
    ) -> IngressTarget:
        """Resume a suspended service and wait (bounded) until an instance is ready."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.lifecycle.status_of(service_id)
            if status is None:
                raise ObjectNotFoundError(f"service #{service_id} no longer exists")
            if status[0] in states.RESUMABLE:
                self._check_auto_resume(service_id)
                self.supervisor.start()
                self.lifecycle.resume(service_id, "resumed by a call", self.access_lost)
            with self.lifecycle.locks.try_hold(service_id) as got:
                if got:
                    self.lifecycle.probe(service_id)
                    self._promote(service_id)
            target = self._targets.target_by_id(service_id)
            if target.ready:
                return target
            if target.status in (states.FAILED, states.DELETING):
                raise ServiceUnavailableError(
                    f"service {target.qualified_name} is {target.status}"
                    + (f": {target.status_reason}" if target.status_reason else "")
                )
            if time.monotonic() >= deadline:
                raise ServiceUnavailableError(
                    f"service {target.qualified_name} is not ready after {timeout_s:g} s "
                    f"(status {target.status}"
                    + (f": {target.status_reason}" if target.status_reason else "")
                    + ")"
                )
            time.sleep(0.1)

    def _check_auto_resume(self, sid: int) -> None:
        """A service created with AUTO_RESUME = FALSE is resumed only by ALTER SERVICE."""
        with self.catalog.transaction() as s:
            svc = s.get(m.Service, sid)
            if svc is None or (svc.spec or {}).get("auto_resume", True):
                return
            qn = lookup.qualified(s, svc.schema_id, svc.name)
        raise ServiceUnavailableError(
            f"service {qn} is suspended and was created with AUTO_RESUME = FALSE; resume it "
            f"with ALTER SERVICE {qn} RESUME"
        )

    def _promote(self, sid: int) -> None:
        """A resumed (STARTING) service is RUNNING once one instance is ready."""
        prov = self.lifecycle.provisioning(sid)
        if prov is not None and not prov.done.is_set():
            return  # a new service: RUNNING only once all its instances are ready
        with self.catalog.transaction() as s:
            svc = s.get(m.Service, sid)
            if svc is None or svc.status != states.STARTING:
                return
            if any(i.status == states.INSTANCE_READY for i in svc.instances):
                svc.status, svc.status_reason = states.RUNNING, None

    def touch(self, service_id: int) -> None:
        """Remember the time of the last request (for auto-suspend); throttled."""
        self._targets.touch(service_id)

    # -- supervision ------------------------------------------------------------------------------
    def reconcile(self) -> None:
        """One supervisor pass (the daemon may call this periodically; a thread also runs it)."""
        self.supervisor.reconcile()

    def start_supervisor(self) -> bool:
        return self.supervisor.start()

    def recover(self) -> None:
        """At daemon start: reattach to live instances, restart the rest, resume interrupted work."""
        if not self.supervisor.lock.acquire():
            log.warning("another process supervises the services of this account")
            return
        ctx = admin_context()
        with self.catalog.transaction() as s:
            services = [(svc.id, svc.status) for svc in s.scalars(select(m.Service))]
        for sid, status in services:
            try:
                self._recover_service(ctx, sid, status)
            except Exception:
                log.exception("recovering service #%s failed", sid)
        self.supervisor.start()

    def _recover_service(self, ctx: RequestContext, sid: int, status: str) -> None:
        lc = self.lifecycle
        if status == states.DELETING:
            self._drop_by_id(sid, reason="finishing a drop interrupted by a restart")
            return
        if status in (states.PENDING, states.BUILDING):
            lc.provision(ctx, sid, force_rebuild=False)
            return
        if status == states.SUSPENDING:
            lc.suspend(sid, "suspend interrupted by a restart")
            return
        if status not in states.ACTIVE:
            return
        ref, _status, instances = lc.ref(sid)
        for inst in instances:
            alive = inst.pid is not None and self.runtime.is_alive(ref, inst)
            if alive and self.runtime.probe_ready(inst):
                lc.update_instance(sid, inst.index, status=states.INSTANCE_READY)
                self.logs.event(ref.qn, f"reattached to instance {inst.index} (pid {inst.pid})")
            elif alive:
                lc.update_instance(sid, inst.index, status=states.INSTANCE_STARTING)
            elif inst.status != states.INSTANCE_PENDING:
                lc.update_instance(
                    sid,
                    inst.index,
                    status=states.INSTANCE_FAILED,
                    status_reason="not running after a control-plane restart",
                    pid=None,
                )
                self.logs.event(ref.qn, f"instance {inst.index} was gone at recovery; restarting")
        if status == states.STARTING and not instances:
            lc.provision(ctx, sid, force_rebuild=False)

    def close(self) -> None:
        """Stop supervising (instances keep running: services are long-lived)."""
        self._closing = True
        self.supervisor.stop()
        self.invoker.close()
        self.runtime.close()


def _route(method: str, methods: dict[str, Any], qn: QualifiedName) -> str:
    """The server route of ``method`` (case-insensitive, ``-`` for ``_``), or a clear error."""
    wanted = str(method).strip().lower().replace("-", "_")
    for name in methods:
        if name.lower() == wanted:
            return name.lower()
    raise ObjectNotFoundError(
        f"service {qn} has no method {method!r}; methods: {', '.join(sorted(methods)) or 'none'}"
    )


def _is_table_function(s: Session, svc: m.Service, route: str) -> bool:
    """Whether the method served at ``route`` is partitioned (its manifest entry says
    TABLE_FUNCTION): the model version's entry, or the one a specification service kept."""
    for method, entry in service_method_entries(s, svc).items():
        if method.lower() == route:
            return isinstance(entry, dict) and entry.get("function_type") == "TABLE_FUNCTION"
    return False
