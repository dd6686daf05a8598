"""The ``neve`` command. Each component contributes a typer sub-app from ``neve.cli.<name>``."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from neve.errors import NeveError

app = typer.Typer(
    name="neve",
    help="neve: a self-hosted model registry and model-serving platform.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
_err = Console(stderr=True)

# (module, command name) of every sub-app; a module not built into this version is skipped.
SUBCOMMANDS = [
    ("server", "server"),
    ("models", "models"),
    ("pools", "pools"),
    ("images", "images"),
    ("services", "services"),
    ("sql", "sql"),
    ("users", "users"),
]
_HERE = Path(__file__).parent
for _module, _name in SUBCOMMANDS:
    if (_HERE / f"{_module}.py").exists():
        app.add_typer(importlib.import_module(f"neve.cli.{_module}").app, name=_name)


@app.callback()
def main(
    home: Annotated[
        Path | None, typer.Option("--home", help="account directory (NEVE_HOME)")
    ] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="a remote control plane (NEVE_URL)")
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", help="token for --url (NEVE_TOKEN)")
    ] = None,
) -> None:
    # Sub-commands connect with neve.connect(), which reads these variables.
    if home is not None:
        os.environ["NEVE_HOME"] = str(home.expanduser().resolve())
    if url is not None:
        os.environ["NEVE_URL"] = url
    if token is not None:
        os.environ["NEVE_TOKEN"] = token


def run() -> None:
    """Console entry point: a NeveError prints one red line, not a traceback."""
    try:
        app()
    except NeveError as err:
        _err.print(f"[red]error:[/red] {err.message}")
        sys.exit(1)


if __name__ == "__main__":
    run()
