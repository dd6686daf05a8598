"""``neve pools``: create, list, inspect, alter, suspend, resume and drop compute pools.

neve pools create cpu_pool --family CPU_X64_S --min 1 --max 2
neve pools list [--like 'cpu%']
neve pools describe cpu_pool
neve pools set cpu_pool [--min N] [--max N] [--auto-resume/--no-auto-resume]
                        [--auto-suspend-secs S] [--comment TEXT]
neve pools suspend|resume cpu_pool
neve pools drop cpu_pool [--if-exists]
neve pools families
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

from neve.cli._common import fail, field_help, kind_body, print_record, print_table
from neve.kinds import COMPUTE_POOL as POOL

app = typer.Typer(
    help="Compute pools: where service instances run.", add_completion=False, no_args_is_help=True
)
console = Console()

LIST_COLUMNS = [
    "name",
    "state",
    "instance_family",
    "min_nodes",
    "max_nodes",
    "active_nodes",
    "idle_nodes",
    "num_services",
    "auto_resume",
    "owner",
    "comment",
]


def connect() -> Any:
    """The session's REST transport (it sends the session's role/database/schema)."""
    import neve
    from neve.client.warehouse import _transport

    return _transport(neve.connect())


def call(method: str, path: str, **kwargs: Any) -> Any:
    """One request to the control plane; a neve error ends the command with a red line."""
    from neve.errors import NeveError

    try:
        return connect().call(method, path, **kwargs)
    except NeveError as exc:
        raise fail(exc) from None


def path_name(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Pool name.")],
    family: Annotated[
        str, typer.Option("--family", "-f", help=field_help(POOL, "instance_family"))
    ],
    min_nodes: Annotated[
        int, typer.Option("--min", "--min-nodes", help=field_help(POOL, "min_nodes"))
    ] = POOL.default("min_nodes"),
    max_nodes: Annotated[
        int, typer.Option("--max", "--max-nodes", help=field_help(POOL, "max_nodes"))
    ] = POOL.default("max_nodes"),
    auto_resume: Annotated[bool, typer.Option(help=field_help(POOL, "auto_resume"))] = POOL.default(
        "auto_resume"
    ),
    auto_suspend_secs: Annotated[
        int, typer.Option(help=field_help(POOL, "auto_suspend_secs"))
    ] = POOL.default("auto_suspend_secs"),
    suspended: Annotated[
        bool,
        typer.Option(
            "--suspended", "--initially-suspended", help=field_help(POOL, "initially_suspended")
        ),
    ] = POOL.default("initially_suspended"),
    backend: Annotated[str, typer.Option(help=field_help(POOL, "backend"))] = POOL.default(
        "backend"
    ),
    address: Annotated[str | None, typer.Option(help=field_help(POOL, "address"))] = None,
    comment: Annotated[str | None, typer.Option(help=field_help(POOL, "comment"))] = None,
    if_not_exists: Annotated[bool, typer.Option(help="No error if it exists.")] = False,
) -> None:
    """CREATE COMPUTE POOL."""
    body = kind_body(
        POOL,
        "create",
        f"compute pool {name}",
        instance_family=family,
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        auto_resume=auto_resume,
        auto_suspend_secs=auto_suspend_secs,
        initially_suspended=suspended,
        backend=backend,
        address=address,
        comment=comment,
    )
    body.update(name=name, if_not_exists=if_not_exists)
    row = call("POST", "/api/v1/compute-pools", json=body)
    console.print(
        f"Compute pool [bold]{row['name']}[/bold] is {row['state']} "
        f"({row['instance_family']}, {row['min_nodes']}..{row['max_nodes']} nodes)."
    )


@app.command("list")
def list_pools(
    like: Annotated[str | None, typer.Option(help="SQL LIKE pattern on the name.")] = None,
) -> None:
    """SHOW COMPUTE POOLS."""
    print_table(
        call("GET", "/api/v1/compute-pools", params={"like": like} if like else None), LIST_COLUMNS
    )


@app.command("describe")
def describe(name: Annotated[str, typer.Argument(help="Pool name.")]) -> None:
    """DESCRIBE COMPUTE POOL, with each node's free resources."""
    row = call("GET", f"/api/v1/compute-pools/{path_name(name)}")
    print_record(row, skip=("nodes",))
    nodes = row.get("nodes") or []
    if nodes:
        print_table(nodes, ["name", "state", "free_cpu", "free_memory_gb", "free_gpu", "holders"],
                    title="nodes")  # fmt: skip


def _alter(name: str, body: dict[str, Any]) -> dict:
    return call("PATCH", f"/api/v1/compute-pools/{path_name(name)}", json=body)


@app.command("set")
def set_properties(
    name: Annotated[str, typer.Argument(help="Pool name.")],
    min_nodes: Annotated[
        int | None, typer.Option("--min", "--min-nodes", help=field_help(POOL, "min_nodes"))
    ] = None,
    max_nodes: Annotated[
        int | None, typer.Option("--max", "--max-nodes", help=field_help(POOL, "max_nodes"))
    ] = None,
    auto_resume: Annotated[bool | None, typer.Option(help=field_help(POOL, "auto_resume"))] = None,
    auto_suspend_secs: Annotated[
        int | None, typer.Option(help=field_help(POOL, "auto_suspend_secs"))
    ] = None,
    comment: Annotated[str | None, typer.Option(help=field_help(POOL, "comment"))] = None,
) -> None:
    """ALTER COMPUTE POOL ... SET."""
    body = kind_body(
        POOL,
        "alter",
        f"compute pool {name}",
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        auto_resume=auto_resume,
        auto_suspend_secs=auto_suspend_secs,
        comment=comment,
    )
    row = _alter(name, body)
    console.print(f"Compute pool {row['name']}: {row['min_nodes']}..{row['max_nodes']} nodes.")


@app.command("suspend")
def suspend(name: Annotated[str, typer.Argument(help="Pool name.")]) -> None:
    """ALTER COMPUTE POOL ... SUSPEND (its services are suspended first)."""
    console.print(f"Compute pool {_alter(name, {'suspend': True})['name']} is SUSPENDED.")


@app.command("resume")
def resume(name: Annotated[str, typer.Argument(help="Pool name.")]) -> None:
    """ALTER COMPUTE POOL ... RESUME."""
    row = _alter(name, {"resume": True})
    console.print(f"Compute pool {row['name']} is {row['state']}.")


@app.command("drop")
def drop(
    name: Annotated[str, typer.Argument(help="Pool name.")],
    if_exists: Annotated[bool, typer.Option(help="No error if it does not exist.")] = False,
) -> None:
    """DROP COMPUTE POOL (refused while services use it)."""
    params = {"if_exists": "true"} if if_exists else None
    result = call("DELETE", f"/api/v1/compute-pools/{path_name(name)}", params=params)
    console.print("Dropped." if result.get("dropped") else "Nothing to drop.")


@app.command("families")
def families() -> None:
    """The instance families and the size of one node of each."""
    print_table(
        call("GET", "/api/v1/instance-families"),
        ["name", "vcpu", "memory_gb", "gpu", "gpu_type", "description"],
    )
