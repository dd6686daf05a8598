"""``neve services``: create, list, inspect, suspend, resume, scale, read logs of, delete services.

    neve services create ml.registry.forecast --version v1 --name forecast_svc \\
        --pool cpu_pool --repo ml.registry.images --instances 2 --ingress
    neve services list [--database ml [--schema registry]] [--pool cpu_pool]
    neve services describe ml.registry.forecast_svc [--spec]   (--spec: the YAML specification)
    neve services create --spec copy.yaml --pool cpu_pool --name forecast_copy --instances 2
    neve services suspend|resume ml.registry.forecast_svc
    neve services scale ml.registry.forecast_svc --min 1 --max 3
    neve services logs ml.registry.forecast_svc [--instance 0] [--last 100] [--events]
    neve services logs MODEL_BUILD_1A2B3C4D          (a build job's log)
    neve services delete ml.registry.forecast_svc [--yes]

Names are ``db.schema.name``, or ``name`` with ``--database``/``--schema`` (or the session's
current ones). ``create`` shows the build and start as they happen (status, reason, ready
instances) until the service is RUNNING, or returns at once with ``--no-wait``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from neve.cli._common import (
    DatabaseOpt,
    SchemaOpt,
    fail,
    get_session,
    print_record,
    print_table,
)

app = typer.Typer(
    help="Create, list, inspect, scale, suspend, resume and delete services.",
    add_completion=False,
)
console = Console()

LIST_COLUMNS = ["service", "status", "instances", "compute_pool", "model", "ingress"]


class _Api:
    """The session's transport with its context header; names resolved like SQL names."""

    def __init__(self, session: Any, database: str | None, schema: str | None) -> None:
        from neve.client.warehouse import _context, _transport

        self.session = session
        self.transport = _transport(session)
        ctx = _context(session)
        self.database = database or ctx.get("database")
        self.schema = schema or ctx.get("schema")
        self.context = {**ctx, "database": self.database, "schema": self.schema}

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"X-Neve-Context": json.dumps({k: v for k, v in self.context.items() if v})}
        return self.transport.call(method, path, headers=headers, **kwargs)

    def qualify(self, name: str, kind: str = "service") -> Any:
        from neve.identifiers import qualify

        return qualify(name, database=self.database, schema=self.schema, kind=kind)

    def path(self, name: str) -> str:
        from neve.client.services import service_path

        return service_path(self.qualify(name))


def _describe(row: dict) -> None:
    record = {k: v for k, v in row.items() if k not in ("instances", "spec")}
    print_record(record, title=row.get("qualified_name"))
    if row.get("spec"):
        console.print("[bold]specification[/bold] (neve services describe --spec)")
        console.print(str(row["spec"]).rstrip(), markup=False, highlight=False)
    instances = row.get("instances") or []
    if instances:
        print_table(
            instances,
            ["instance_id", "status", "message", "restart_count", "start_time", "host", "port"],
            title="instances",
        )


class _ProgressView:
    """A live line for each change of status while a service is built and started."""

    def __init__(self) -> None:
        self.status = console.status("creating service ...", spinner="dots")
        self.last: str | None = None

    def __enter__(self) -> _ProgressView:
        self.status.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.status.__exit__(*exc)

    def __call__(self, row: dict) -> None:
        state = row.get("status")
        ready, target = row.get("current_instances"), row.get("target_instances")
        reason = row.get("status_reason") or ""
        text = f"{state}: {ready}/{target} instance(s) ready" if target else f"{state}"
        if reason and state != "RUNNING":
            text += f" - {reason.splitlines()[0][:120]}"
        if row.get("build_job") and state == "BUILDING":
            text += f" (build job {row['build_job']})"
        if text != self.last:
            console.print(f"[dim]{_now()}[/dim] {text}")
            self.last = text
        self.status.update(text)


def _now() -> str:
    from datetime import datetime

    return datetime.now().strftime("%H:%M:%S")


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", "-n", help="Service name.")],
    pool: Annotated[str, typer.Option("--pool", help="Compute pool of the instances.")],
    model: Annotated[
        str | None,
        typer.Argument(help="Model: db.schema.name or name (not with --spec)"),
    ] = None,
    version: Annotated[
        str | None, typer.Option("--version", "-v", help="Version name or alias.")
    ] = None,
    repo: Annotated[
        str | None, typer.Option("--repo", help="Image repository (db.schema.name).")
    ] = None,
    spec: Annotated[
        Path | None,
        typer.Option(
            "--spec",
            help="Create the service from this YAML specification (CREATE SERVICE ... FROM "
            "SPECIFICATION), e.g. a copy of `neve services describe --spec`.",
        ),
    ] = None,
    instances: Annotated[int, typer.Option("--instances", help="max_instances")] = 1,
    min_instances: Annotated[
        int | None, typer.Option("--min-instances", help="default: = --instances")
    ] = None,
    ingress: Annotated[bool, typer.Option("--ingress", help="Enable the HTTP ingress.")] = False,
    cpu: Annotated[str | None, typer.Option("--cpu", help="cpu_requests, e.g. 2 or 500m")] = None,
    memory: Annotated[
        str | None, typer.Option("--memory", help="memory_requests, e.g. 4Gi")
    ] = None,
    gpu: Annotated[str | None, typer.Option("--gpu", help="gpu_requests")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="num_workers")] = None,
    max_batch_rows: Annotated[int | None, typer.Option("--max-batch-rows")] = None,
    integration: Annotated[
        list[str] | None,
        typer.Option("--integration", help="External access integration for the build."),
    ] = None,
    force_rebuild: Annotated[bool, typer.Option("--force-rebuild")] = False,
    auto_suspend_secs: Annotated[int | None, typer.Option("--auto-suspend-secs")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return at once.")] = False,
    database: DatabaseOpt = None,
    schema: SchemaOpt = None,
) -> None:
    """Deploy a model version as a service (build the image, start the instances), or with
    --spec create a service from a specification (its published image, its settings)."""
    import neve
    from neve.errors import NeveError
    from neve.identifiers import split_name

    if spec is not None:
        if model or version or repo:
            raise typer.BadParameter("--spec takes no model, --version or --repo")
        _create_from_spec(
            ctx,
            spec,
            name=name,
            pool=pool,
            min_instances=min_instances if min_instances is not None else instances,
            max_instances=instances,
            auto_suspend_secs=auto_suspend_secs,
            database=database,
            schema=schema,
        )
        return
    if not model or not version or not repo:
        raise typer.BadParameter("a model, --version and --repo are required (or --spec FILE)")
    try:
        session = get_session(ctx)
        parts = split_name(model)
        db = parts[0] if len(parts) == 3 else database
        sch = parts[-2] if len(parts) >= 2 else schema
        reg = neve.Registry(session, database_name=db, schema_name=sch)
        mv = reg.get_model(parts[-1]).version(version)
        kwargs: dict[str, Any] = dict(
            service_name=name,
            service_compute_pool=pool,
            image_repo=repo,
            ingress_enabled=ingress,
            max_instances=instances,
            min_instances=min_instances,
            cpu_requests=cpu,
            memory_requests=memory,
            gpu_requests=gpu,
            num_workers=workers,
            max_batch_rows=max_batch_rows,
            build_external_access_integrations=list(integration or []),
            force_rebuild=force_rebuild,
            auto_suspend_secs=auto_suspend_secs,
        )
        if no_wait:
            handle = mv.create_service(**kwargs, block=False)
            console.print(f"service {handle} is {handle.row.get('status')}")
            return
        with _ProgressView() as view:
            handle = mv.create_service(**kwargs, block=True, progress=view)
        row = handle.describe()
    except NeveError as exc:
        raise fail(exc) from None
    console.print(f"[green]service {handle} is RUNNING[/green]")
    if row.get("inference_endpoint"):
        console.print(f"ingress host: {row['inference_endpoint']}")
    if row.get("ingress_url"):
        console.print(f"ingress url:  {row['ingress_url']}")


def _create_from_spec(
    ctx: typer.Context,
    path: Path,
    *,
    name: str,
    pool: str,
    min_instances: int,
    max_instances: int,
    auto_suspend_secs: int | None,
    database: str | None,
    schema: str | None,
) -> None:
    from neve.errors import NeveError

    try:
        text = path.read_text()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read --spec {path}: {exc.strerror}") from None
    try:
        session = get_session(ctx)
        api = _Api(session, database, schema)
        qualified = str(api.qualify(name))
        with console.status(f"creating service {qualified} from {path} ..."):
            row = session.create_service(
                qualified,
                compute_pool=pool,
                spec=text,
                min_instances=min_instances,
                max_instances=max_instances,
                auto_suspend_secs=auto_suspend_secs,
            )
    except NeveError as exc:
        raise fail(exc) from None
    console.print(f"[green]service {qualified} is {row.get('status')}[/green]")
    if row.get("ingress_url"):
        console.print(f"ingress url:  {row['ingress_url']}")


@app.command("list")
def list_services(
    ctx: typer.Context,
    database: DatabaseOpt = None,
    schema: SchemaOpt = None,
    pool: Annotated[str | None, typer.Option("--pool", help="Only this compute pool.")] = None,
    like: Annotated[str | None, typer.Option("--like", help="SQL LIKE pattern on names.")] = None,
) -> None:
    """SHOW SERVICES."""
    from neve.errors import NeveError

    params = {
        k: v
        for k, v in (
            ("database", database),
            ("schema", schema),
            ("in_compute_pool", pool),
            ("like", like),
        )
        if v
    }
    try:
        api = _Api(get_session(ctx), None, None)
        rows = api.call("GET", "/api/v1/services", params=params)
    except NeveError as exc:
        raise fail(exc) from None
    print_table(
        [
            {
                "service": f"{r['database_name']}.{r['schema_name']}.{r['name']}",
                "status": r["status"],
                "instances": f"{r['current_instances']}/{r['target_instances']} "
                f"(min {r['min_instances']}, max {r['max_instances']})",
                "compute_pool": r["compute_pool"],
                "model": f"{r['model_name']} {r['model_version']}",
                "ingress": r.get("inference_endpoint") or "",
            }
            for r in rows
        ],
        LIST_COLUMNS,
    )


@app.command("describe")
def describe(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="db.schema.name or name")],
    database: DatabaseOpt = None,
    schema: SchemaOpt = None,
    spec: Annotated[
        bool,
        typer.Option("--spec", help="Print only the YAML specification (to copy and change)."),
    ] = False,
) -> None:
    """DESCRIBE SERVICE: status, spec, endpoints and instances."""
    row = _service_call(ctx, "GET", service, database, schema)
    if spec:
        sys.stdout.write(str(row.get("spec") or ""))
        return
    _describe(row)


def _service_call(
    ctx: typer.Context,
    method: str,
    service: str,
    database: str | None,
    schema: str | None,
    suffix: str = "",
    **kwargs: Any,
) -> Any:
    """One REST call on the service's path (``suffix`` after it); a neve error ends the
    command with its message."""
    from neve.errors import NeveError

    try:
        api = _Api(get_session(ctx), database, schema)
        return api.call(method, api.path(service) + suffix, **kwargs)
    except NeveError as exc:
        raise fail(exc) from None


def _alter(
    ctx: typer.Context, service: str, database: str | None, schema: str | None, body: dict
) -> dict:
    """ALTER SERVICE: the service's row after the change."""
    return _service_call(ctx, "PATCH", service, database, schema, json=body)


@app.command("suspend")
def suspend(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument()],
    database: DatabaseOpt = None,
    schema: SchemaOpt = None,
) -> None:
    """ALTER SERVICE ... SUSPEND: stop every instance (the next call resumes it)."""
    row = _alter(ctx, service, database, schema, {"suspend": True})
    console.print(f"service {row.get('qualified_name')} is {row.get('status')}")


@app.command("resume")
def resume(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument()],
    database: DatabaseOpt = None,
    schema: SchemaOpt = None,
) -> None:
    """ALTER SERVICE ... RESUME: start the instances again."""
    row = _alter(ctx, service, database, schema, {"resume": True})
    console.print(f"service {row.get('qualified_name')} is {row.get('status')}")


@app.command("scale")
def scale(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument()],
    min_instances: Annotated[int | None, typer.Option("--min", help="MIN_INSTANCES")] = None,
    max_instances: Annotated[int | None, typer.Option("--max", help="MAX_INSTANCES")] = None,
    database: DatabaseOpt = None,
    schema: SchemaOpt = None,
) -> None:
    """ALTER SERVICE ... SET MIN_INSTANCES / MAX_INSTANCES (autoscales between them)."""
    if min_instances is None and max_instances is None:
        raise fail(ValueError("give --min and/or --max"))
    body = {
        k: v
        for k, v in (("min_instances", min_instances), ("max_instances", max_instances))
        if v is not None
    }
    row = _alter(ctx, service, database, schema, body)
    console.print(
        f"service {row.get('qualified_name')}: min {row.get('min_instances')}, "
        f"max {row.get('max_instances')}, {row.get('target_instances')} instance(s)"
    )


@app.command("logs")
def logs(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="Service, or a build job MODEL_BUILD_xxx")],
    instance: Annotated[int, typer.Option("--instance", "-i")] = 0,
    last: Annotated[int | None, typer.Option("--last", "-n", help="Last N lines.")] = None,
    events: Annotated[
        bool, typer.Option("--events", help="The supervisor's events instead.")
    ] = False,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines (Ctrl-C stops).")
    ] = False,
    database: DatabaseOpt = None,
    schema: SchemaOpt = None,
) -> None:
    """An instance's log (container model-inference), or a build job's log."""
    from urllib.parse import quote as url_quote

    from neve.errors import InvalidArgumentError, NeveError

    if follow and service.upper().startswith("MODEL_BUILD_"):
        raise fail(InvalidArgumentError("--follow follows a service's log or events, not a job"))
    try:
        api = _Api(get_session(ctx), database, schema)
        params: dict[str, Any] = {}
        follow_from = 0
        if last is not None:
            params["last"] = last
        if service.upper().startswith("MODEL_BUILD_"):
            body = api.call(
                "GET", f"/api/v1/build_jobs/{url_quote(service, safe='')}/logs", params=params
            )
        else:
            params["instance"] = instance
            params["container"] = "events" if events else "model-inference"
            if follow:
                if last is None:
                    params["last"] = 20
                # Where to follow from, taken before the tail: a line written between the two
                # reads is shown twice at worst, never lost.
                follow_from = api.call(
                    "GET", api.path(service) + "/logs", params={**params, "offset": "end"}
                )["offset"]
            body = api.call("GET", api.path(service) + "/logs", params=params)
    except NeveError as exc:
        raise fail(exc) from None
    # soft_wrap: log lines are printed as they are, never cut at the terminal width (pipes, grep)
    console.print(body.get("text", ""), end="", markup=False, highlight=False, soft_wrap=True)
    if follow:
        _follow(api, api.path(service) + "/logs", params, follow_from)


def _follow(
    api: _Api, path: str, params: dict[str, Any], offset: int, interval_s: float = 1.0
) -> None:
    """Print what the log gets after byte ``offset``, until interrupted."""
    import time

    from neve.errors import NeveError

    base = {k: v for k, v in params.items() if k != "last"}
    try:
        while True:
            time.sleep(interval_s)
            body = api.call("GET", path, params={**base, "offset": offset})
            offset = body["offset"]
            if body["text"]:
                sys.stdout.write(body["text"])
                sys.stdout.flush()
    except KeyboardInterrupt:
        return
    except NeveError as exc:
        raise fail(exc) from None


@app.command("metrics")
def metrics(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="db.schema.name or name")],
    database: DatabaseOpt = None,
    schema: SchemaOpt = None,
) -> None:
    """Prometheus metrics of every instance (labels service, instance), as one page."""
    page = _service_call(ctx, "GET", service, database, schema, "/metrics", raw=True)
    sys.stdout.write(page.decode())


@app.command("delete")
def delete(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument()],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    database: DatabaseOpt = None,
    schema: SchemaOpt = None,
) -> None:
    """DROP SERVICE: stop every instance and remove the service and its functions."""
    if not yes and not typer.confirm(f"drop service {service}?"):
        raise typer.Exit(code=1)
    _service_call(ctx, "DELETE", service, database, schema)
    console.print(f"service {service} dropped")
