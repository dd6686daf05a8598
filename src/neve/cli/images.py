"""``neve images``: image repositories, model image builds and their jobs, network access.

    neve images create-repo ml.registry.images
    neve images repos [--database ml] [--schema ml.registry]
    neve images list ml.registry.images            (SHOW IMAGES IN IMAGE REPOSITORY)
    neve images drop-repo ml.registry.images
    neve images build ml.registry.forecast --version v1 --repo ml.registry.images \\
        [--integration pypi_access] [--force] [--gpu] [--timeout 1800] [--no-wait] [--verbose]
    neve images jobs | job MODEL_BUILD_X | logs MODEL_BUILD_X [--last 50] | cancel MODEL_BUILD_X
    neve images rules create pypi_rule --value pypi.org:443 --value files.pythonhosted.org:443
    neve images rules list | drop NAME
    neve images integrations create pypi_access --rule pypi_rule [--disabled]
    neve images integrations list | drop NAME

``build`` follows the job: each build step as it starts and ends, with its duration, then
the image's digest and size (``--verbose`` also prints uv's output).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from neve.cli._common import print_record, print_table
from neve.cli.pools import call, console, path_name

app = typer.Typer(
    help="Image repositories, model image builds, network rules and integrations.",
    add_completion=False,
    no_args_is_help=True,
)
rules_app = typer.Typer(help="Network rules (hosts a build may reach).", no_args_is_help=True)
integrations_app = typer.Typer(
    help="External access integrations (bundles of network rules).", no_args_is_help=True
)
app.add_typer(rules_app, name="rules")
app.add_typer(integrations_app, name="integrations")

FINAL = ("DONE", "SKIPPED", "FAILED", "CANCELLED")
STATUS_STYLE = {"DONE": "green", "SKIPPED": "green", "FAILED": "red", "CANCELLED": "yellow"}


# -- repositories ---------------------------------------------------------------------------------
@app.command("create-repo")
def create_repo(
    name: Annotated[str, typer.Argument(help="db.schema.name")],
    if_not_exists: Annotated[bool, typer.Option(help="No error if it exists.")] = False,
    comment: Annotated[str | None, typer.Option(help="Comment.")] = None,
) -> None:
    """CREATE IMAGE REPOSITORY."""
    row = call(
        "POST",
        "/api/v1/image-repositories",
        json={"name": name, "if_not_exists": if_not_exists, "comment": comment},
    )
    console.print(f"Image repository {row['database_name']}.{row['schema_name']}.{row['name']}: "
                  f"{row['repository_url']}")  # fmt: skip


@app.command("repos")
def repos(
    database: Annotated[str | None, typer.Option(help="IN DATABASE.")] = None,
    schema: Annotated[str | None, typer.Option(help="IN SCHEMA (db.schema).")] = None,
    like: Annotated[str | None, typer.Option(help="LIKE pattern.")] = None,
) -> None:
    """SHOW IMAGE REPOSITORIES."""
    params = {k: v for k, v in {"database": database, "schema": schema, "like": like}.items() if v}
    rows = call("GET", "/api/v1/image-repositories", params=params or None)
    print_table(rows, ["name", "database_name", "schema_name", "images", "size_bytes", "repository_url",
                 "owner", "comment"])  # fmt: skip


@app.command("drop-repo")
def drop_repo(
    name: Annotated[str, typer.Argument(help="db.schema.name")],
    if_exists: Annotated[bool, typer.Option(help="No error if it does not exist.")] = False,
) -> None:
    """DROP IMAGE REPOSITORY (refused while services use its images)."""
    params = {"if_exists": "true"} if if_exists else None
    result = call("DELETE", f"/api/v1/image-repositories/{path_name(name)}", params=params)
    console.print("Dropped." if result.get("dropped") else "Nothing to drop.")


@app.command("list")
def list_images(repo: Annotated[str, typer.Argument(help="db.schema.repository")]) -> None:
    """SHOW IMAGES IN IMAGE REPOSITORY: status, size, model and inputs of each image."""
    rows = call("GET", f"/api/v1/image-repositories/{path_name(repo)}/images")
    for row in rows:
        row["requirements"] = ", ".join((row.get("inputs") or {}).get("requirements") or [])
        row["size"] = _size(row.get("size_bytes"))
    print_table(rows, ["image_name", "status", "model", "version", "size", "build_seconds",
                 "requirements", "created_on"])  # fmt: skip


def _size(n: Any) -> str:
    if not n:
        return "0"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# -- builds ---------------------------------------------------------------------------------------
@app.command("build")
def build(
    model: Annotated[str, typer.Argument(help="Model: db.schema.model or model.")],
    repo: Annotated[str, typer.Option("--repo", "-r", help="Image repository.")],
    version: Annotated[str | None, typer.Option("--version", "-v", help="Version (default: the model's default).")] = None,
    integration: Annotated[list[str] | None, typer.Option("--integration", "-i", help="External access integration the build may use (repeatable).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if the image exists.")] = False,
    gpu: Annotated[bool, typer.Option("--gpu", help="Build the GPU flavour.")] = False,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Build time limit in seconds.")] = None,
    pool: Annotated[str | None, typer.Option("--pool", help="Compute pool to account the build to.")] = None,
    wait: Annotated[bool, typer.Option(help="Follow the build until it ends.")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", help="Print every log line.")] = False,
) -> None:  # fmt: skip
    """Build (or reuse) the image of a model version, showing its progress."""
    body = {
        "model": model,
        "version": version,
        "repo": repo,
        "external_access_integrations": integration or [],
        "force_rebuild": force,
        "gpu": gpu,
        "timeout_s": timeout,
        "pool": pool,
    }
    job = call(
        "POST", "/api/v1/image-builds", json={k: v for k, v in body.items() if v is not None}
    )
    console.print(f"Build job [bold]{job['name']}[/bold] ({job['status']})")
    if wait and job["status"] not in FINAL:
        job = follow(job["name"], verbose=verbose)
    _summary(job)
    if job["status"] in ("FAILED", "CANCELLED"):
        raise typer.Exit(1)


def follow(name: str, *, verbose: bool = False, poll_s: float = 0.5) -> dict:
    """Print the job's steps as its log grows, with a spinner naming the current step."""
    printed = 0
    job: dict = {"status": "PENDING"}
    with console.status(f"{name}: starting") as status:
        while True:
            job = call("GET", f"/api/v1/jobs/{path_name(name)}")
            lines = call("GET", f"/api/v1/jobs/{path_name(name)}/logs")["text"].splitlines()
            for line in lines[printed:]:
                text = line.split("] ", 1)[-1] if "] " in line else line
                if text.startswith("==> "):
                    status.update(f"{name}: {text[4:]}")
                if verbose or text.startswith(("==>", "<==", "FAILED", "CANCELLED", "image ready")):
                    console.print(_style_line(text))
            printed = len(lines)
            if job["status"] in FINAL:
                return job
            time.sleep(poll_s)


def _style_line(text: str) -> str:
    from rich.markup import escape

    safe = escape(text)
    if text.startswith("<==") and "FAILED" in text or text.startswith("FAILED"):
        return f"[red]{safe}[/red]"
    if text.startswith("<=="):
        return f"[green]{safe}[/green]"
    if text.startswith("==>"):
        return f"[bold]{safe}[/bold]"
    return safe


def _summary(job: dict) -> None:
    style = STATUS_STYLE.get(job["status"], "white")
    console.print(f"[{style}]{job['status']}[/{style}]: {job.get('status_reason') or ''}")
    if job.get("image_status") == "READY":
        console.print(
            f"image sha256:{job['image_digest'][:12]} at {job['image_path']} "
            f"({_size(job.get('size_bytes'))} over a {_size(job.get('base_size_bytes'))} base)"
            if job.get("base_size_bytes")
            else f"image sha256:{job['image_digest'][:12]} at {job['image_path']}"
        )
    if job["status"] == "FAILED":
        console.print(f"full log: neve images logs {job['name']}")


@app.command("jobs")
def jobs(like: Annotated[str | None, typer.Option(help="LIKE pattern.")] = None) -> None:
    """Build jobs you can see."""
    rows = call("GET", "/api/v1/jobs", params={"like": like} if like else None)
    print_table(rows, ["name", "status", "model", "version", "repository", "duration_s", "created_on",
                 "status_reason"])  # fmt: skip


@app.command("job")
def job(name: Annotated[str, typer.Argument(help="MODEL_BUILD_...")]) -> None:
    """One build job: status, reason, timings, image."""
    print_record(call("GET", f"/api/v1/jobs/{path_name(name)}"))


@app.command("logs")
def logs(
    name: Annotated[str, typer.Argument(help="MODEL_BUILD_...")],
    last: Annotated[int | None, typer.Option("--last", help="Only the last N lines.")] = None,
) -> None:
    """A build job's log."""
    params = {"last_n": last} if last else None
    console.print(call("GET", f"/api/v1/jobs/{path_name(name)}/logs", params=params)["text"],
                  end="", markup=False, highlight=False)  # fmt: skip


@app.command("cancel")
def cancel(name: Annotated[str, typer.Argument(help="MODEL_BUILD_...")]) -> None:
    """Stop a running build."""
    _summary(call("POST", f"/api/v1/jobs/{path_name(name)}/cancel"))


# -- network rules and integrations ---------------------------------------------------------------
@rules_app.command("create")
def create_rule(
    name: Annotated[str, typer.Argument(help="db.schema.name or name")],
    value: Annotated[list[str], typer.Option("--value", help="host[:port] (repeatable).")],
    comment: Annotated[str | None, typer.Option(help="Comment.")] = None,
) -> None:
    """CREATE NETWORK RULE ... MODE = EGRESS TYPE = HOST_PORT VALUE_LIST = (...)."""
    row = call("POST", "/api/v1/network-rules",
               json={"name": name, "value_list": value, "comment": comment})  # fmt: skip
    console.print(f"Network rule {row['name']}: {', '.join(row['value_list'])}")


@rules_app.command("list")
def list_rules() -> None:
    """SHOW NETWORK RULES."""
    print_table(call("GET", "/api/v1/network-rules"),
          ["name", "database_name", "schema_name", "mode", "type", "value_list", "owner"])  # fmt: skip


@rules_app.command("drop")
def drop_rule(name: Annotated[str, typer.Argument(help="Rule name.")]) -> None:
    """DROP NETWORK RULE."""
    call("DELETE", f"/api/v1/network-rules/{path_name(name)}")
    console.print("Dropped.")


@integrations_app.command("create")
def create_integration(
    name: Annotated[str, typer.Argument(help="Integration name.")],
    rule: Annotated[list[str], typer.Option("--rule", help="Network rule (repeatable).")],
    disabled: Annotated[bool, typer.Option("--disabled", help="ENABLED = FALSE.")] = False,
    comment: Annotated[str | None, typer.Option(help="Comment.")] = None,
) -> None:
    """CREATE EXTERNAL ACCESS INTEGRATION."""
    row = call("POST", "/api/v1/integrations", json={
        "name": name, "allowed_network_rules": rule, "enabled": not disabled, "comment": comment,
    })  # fmt: skip
    console.print(f"Integration {row['name']}: {', '.join(row['allowed_network_rules'])}")


@integrations_app.command("list")
def list_integrations() -> None:
    """SHOW EXTERNAL ACCESS INTEGRATIONS."""
    print_table(call("GET", "/api/v1/integrations"),
          ["name", "enabled", "allowed_network_rules", "owner", "comment"])  # fmt: skip


@integrations_app.command("drop")
def drop_integration(name: Annotated[str, typer.Argument(help="Integration name.")]) -> None:
    """DROP EXTERNAL ACCESS INTEGRATION."""
    call("DELETE", f"/api/v1/integrations/{path_name(name)}")
    console.print("Dropped.")
