"""``neve server start|stop|restart|status|logs``: the account's control plane daemon.

You rarely need these: ``neve.connect()`` and every other ``neve`` command start the control
plane in the background when none runs. Stopping it leaves services running; the next start
reattaches to them.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from neve.cli._common import console, options, print_record
from neve.control import daemon
from neve.dataplane.proxies import ingress_info

app = typer.Typer(
    help="Start, stop and inspect the account's control plane daemon.",
    no_args_is_help=True,
    add_completion=False,
)

TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds to wait for it to answer.")]


@app.command()
def start(
    ctx: typer.Context,
    foreground: Annotated[
        bool, typer.Option("--foreground", help="Run in this process (logs to the terminal too).")
    ] = False,
    host: Annotated[
        str | None, typer.Option("--host", help="Address to listen on (default 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default: a free one).")] = None,
    timeout: TimeoutOpt = daemon.DEFAULT_START_TIMEOUT_S,
) -> None:
    """Start the control plane in the background (nothing to do when it runs already)."""
    home = options(ctx).resolved_home
    if foreground:
        from neve.control.serve import serve

        raise typer.Exit(serve(home, host=host, port=port))
    already = daemon.running(home)
    if already is not None:
        console.print(f"already running: pid {already['pid']} at {already['url']} ({home})")
        return
    with console.status(f"starting the neve control plane for {home}"):
        info = daemon.ensure_running(home, timeout_s=timeout, host=host, port=port)
    console.print(f"[green]started[/green]: pid {info['pid']} at {info['url']} ({home})")


@app.command()
def stop(
    ctx: typer.Context,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait before SIGKILL.")
    ] = daemon.DEFAULT_STOP_TIMEOUT_S,
) -> None:
    """Stop the control plane. Services keep running; the next start reattaches to them."""
    home = options(ctx).resolved_home
    info = daemon.read_info(home)
    if daemon.stop(home, timeout_s=timeout):
        pid = info["pid"] if info else "?"
        console.print(f"stopped the control plane (pid {pid}) of {home}")
    else:
        console.print(f"no control plane runs for {home}")


@app.command()
def restart(ctx: typer.Context, timeout: TimeoutOpt = daemon.DEFAULT_START_TIMEOUT_S) -> None:
    """Stop the control plane if it runs, then start it."""
    home = options(ctx).resolved_home
    daemon.stop(home)
    with console.status(f"starting the neve control plane for {home}"):
        info = daemon.ensure_running(home, timeout_s=timeout)
    console.print(f"[green]started[/green]: pid {info['pid']} at {info['url']} ({home})")


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print it as JSON.")] = False,
) -> None:
    """Whether the control plane runs, where, and since when (exit status 1 when it does not)."""
    info = daemon.status(options(ctx).resolved_home)
    ingress = ingress_info(options(ctx).resolved_home) or {}
    info.update(ingress_url=ingress.get("url"), ingress_grpc=ingress.get("grpc_address"))
    if as_json:
        typer.echo(json.dumps(info))
    elif info["running"]:
        print_record(
            {
                "state": "running",
                **{k: info.get(k) for k in ("pid", "url", "version", "started_on", "uptime_s")},
                "ingress": info.get("ingress_url") or info.get("url"),
                "ingress gRPC": info.get("ingress_grpc") or "-",
                "home": info["home"],
                "log": info["log"],
            }
        )
    elif info.get("pid"):
        console.print(
            f"[yellow]not responding[/yellow]: pid {info['pid']} holds {info['home']} but does "
            f"not answer at {info.get('url')}; see {info['log']} or `neve server stop`"
        )
    else:
        console.print(f"[yellow]not running[/yellow] ({info['home']})")
    if not info["running"]:
        raise typer.Exit(1)


@app.command()
def logs(
    ctx: typer.Context,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many lines.")] = 50,
) -> None:
    """The end of the control plane's log."""
    typer.echo(daemon.log_tail(options(ctx).resolved_home, lines))
