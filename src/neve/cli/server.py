"""``neve server start|stop|status``: the account's control plane daemon."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from neve.config import default_home
from neve.control import daemon

app = typer.Typer(
    help="Start, stop and inspect the control plane of an account.", no_args_is_help=True
)
console = Console()

HomeOpt = Annotated[Path | None, typer.Option("--home", help="account directory (NEVE_HOME)")]


def _home(home: Path | None) -> Path:
    return (home or default_home()).expanduser().resolve()


@app.command()
def start(home: HomeOpt = None, timeout: float = 60.0) -> None:
    """Start the control plane in the background (no-op when it already runs)."""
    h = _home(home)
    with console.status(f"starting the neve control plane for {h}"):
        info = daemon.ensure_running(h, timeout_s=timeout)
    console.print(f"[green]running[/green] pid {info['pid']} at {info['url']} (account {h})")


@app.command()
def stop(home: HomeOpt = None) -> None:
    """Stop the control plane. Running services keep running; it reattaches on restart."""
    h = _home(home)
    if daemon.stop(h):
        console.print(f"stopped the control plane for {h}")
    else:
        console.print(f"no control plane runs for {h}")


@app.command()
def status(home: HomeOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Whether the control plane runs, and where."""
    info = daemon.status(_home(home))
    if as_json:
        typer.echo(json.dumps(info))
    elif info["running"]:
        console.print(
            f"[green]running[/green] pid {info['pid']} at {info['url']} since {info['started_on']}"
        )
    else:
        console.print(f"[yellow]not running[/yellow] (account {info['home']})")
        raise typer.Exit(1)
