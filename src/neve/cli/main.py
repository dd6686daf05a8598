"""The ``neve`` command. Each component contributes a typer sub-app (``neve.cli.<name>``).

    neve [--home DIR] [--url URL] [--role ROLE] [--user NAME] [--token TOKEN] COMMAND ...

``--home``/``NEVE_HOME`` picks the local account; ``--url``/``NEVE_URL`` a remote control plane,
with ``--user`` (password from ``NEVE_PASSWORD``, else asked for) or ``--token``/``NEVE_TOKEN``;
``--role``/``NEVE_ROLE`` the role to use. Sub-commands connect with
``neve.cli._common.get_session(ctx)``, or ``neve.connect()``, which reads the same variables.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated

import typer

from neve.cli import images, models, pools, server, services, sql, users
from neve.cli._common import CliOptions, NeveGroup, console, get_session, print_record

app = typer.Typer(
    name="neve",
    cls=NeveGroup,
    help="neve: a self-hosted model registry and model-serving platform.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold tokens and passwords
)

#: Sub-apps, each the ``app`` of ``neve/cli/<name>.py``, in help order.
SUBCOMMANDS = {
    "server": server.app,
    "models": models.app,
    "pools": pools.app,
    "images": images.app,
    "services": services.app,
    "sql": sql.app,
    "users": users.app,
}
for _name, _sub_app in SUBCOMMANDS.items():
    app.add_typer(_sub_app, name=_name)

# Global option -> the environment variable neve.connect() reads.
_ENV = {"home": "NEVE_HOME", "url": "NEVE_URL", "role": "NEVE_ROLE", "user": "NEVE_USER"}


@app.callback()
def main(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option("--home", envvar="NEVE_HOME", help="Account directory (default ~/.neve)."),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option("--url", envvar="NEVE_URL", help="A remote control plane's URL."),
    ] = None,
    role: Annotated[
        str | None, typer.Option("--role", envvar="NEVE_ROLE", help="Role to use.")
    ] = None,
    user: Annotated[
        str | None,
        typer.Option(
            "--user", envvar="NEVE_USER", help="User for --url (password: NEVE_PASSWORD)."
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="NEVE_TOKEN", help="Token for --url.", show_default=False),
    ] = None,
) -> None:
    opts = CliOptions(
        home=home.expanduser().resolve() if home else None,
        url=url,
        role=role,
        user=user,
        token=token,
    )
    ctx.obj = opts
    # Sub-commands that call neve.connect() themselves get the same account and server; the
    # variables are restored when the command ends (the CLI may run inside another process).
    values = {"home": str(opts.home) if opts.home else None, "url": url, "role": role}
    values["user"] = user
    saved = {var: os.environ.get(var) for var in [*_ENV.values(), "NEVE_TOKEN"]}
    for key, var in _ENV.items():
        value = values[key]
        if value is not None:
            os.environ[var] = value
    if token is not None:
        os.environ["NEVE_TOKEN"] = token
    ctx.call_on_close(lambda: _restore(saved))


def _restore(saved: dict[str, str | None]) -> None:
    for var, value in saved.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value


@app.command()
def whoami(ctx: typer.Context) -> None:
    """Connect and show who you are: user, role, current database and schema, server."""
    session = get_session(ctx)
    me = session.whoami()
    print_record(
        {
            "user": me.get("user"),
            "role": me.get("role"),
            "database": me.get("database"),
            "schema": me.get("schema"),
            "roles": ", ".join(me.get("roles") or []),
            "url": session.url,
        }
    )


@app.command()
def version() -> None:
    """Print neve's version."""
    import neve

    console.print(f"neve {neve.__version__}")


def run() -> None:
    """Console entry point (``neve``)."""
    with contextlib.suppress(KeyboardInterrupt):
        app()


if __name__ == "__main__":
    run()
