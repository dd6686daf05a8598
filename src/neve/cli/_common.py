"""What every ``neve`` sub-command shares: the global options, the session, tables, errors.

In a command::

    from neve.cli._common import get_session, print_rows

    @app.command()
    def show(ctx: typer.Context) -> None:
        result = get_session(ctx).sql("SHOW COMPUTE POOLS")
        print_rows(result.columns, result.rows)

``get_session(ctx)`` connects once per command line with the global options (``--home``,
``--url``, ``--role``, ``--user``, ``--token``) and closes the session when the command ends.
A ``NeveError`` escaping a command prints ``error: <message>`` in red and exits 1 (no
traceback): ``NeveGroup``, the root command's class, catches it.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from neve.errors import NeveError
from neve.kinds import ObjectKind, Stage

if TYPE_CHECKING:
    from neve.client.session import Session

console = Console()
err_console = Console(stderr=True)

#: ``--database``/``--schema`` of commands that name an object ``name`` rather than ``db.schema.name``.
DatabaseOpt = Annotated[str | None, typer.Option("--database", "-d", help="Database name.")]
SchemaOpt = Annotated[str | None, typer.Option("--schema", "-s", help="Schema name.")]


@dataclass
class CliOptions:
    """The global options of one ``neve`` command line (``ctx.find_root().obj``)."""

    home: Path | None = None
    url: str | None = None
    role: str | None = None
    user: str | None = None
    token: str | None = None
    session: Session | None = None

    @property
    def resolved_home(self) -> Path:
        from neve.config import default_home

        return self.home.expanduser().resolve() if self.home else default_home()


def options(ctx: typer.Context) -> CliOptions:
    """The global options (defaults when the command runs outside the ``neve`` root)."""
    root = ctx.find_root()
    if not isinstance(root.obj, CliOptions):
        root.obj = CliOptions()
    return root.obj


def get_session(ctx: typer.Context) -> Session:
    """A session for this command line, connected with the global options (made once)."""
    import neve

    opts = options(ctx)
    if opts.session is not None:
        return opts.session
    password = os.environ.get("NEVE_PASSWORD")
    if opts.user and not password and not opts.token and sys.stdin.isatty():
        password = typer.prompt(f"password for {opts.user}", hide_input=True)
    opts.session = neve.connect(
        opts.home,
        url=opts.url,
        user=opts.user,
        password=password,
        token=opts.token,
        role=opts.role,
    )
    ctx.find_root().call_on_close(_closer(opts))
    return opts.session


def _closer(opts: CliOptions):  # noqa: ANN202
    def close() -> None:
        if opts.session is not None:
            opts.session.close()
            opts.session = None

    return close


def cell(value: Any, *, null: str = "") -> str:
    """A value as table-cell markup: lists of scalars joined, other structures as JSON,
    timestamps to the second, and always escaped (a comment holding ``[/x]`` is text, not
    markup)."""
    if value is None:
        return null
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        text = ", ".join(str(v) for v in value)
    elif isinstance(value, list | dict):
        text = json.dumps(value, default=str)
    else:
        if hasattr(value, "isoformat"):  # a pandas/datetime timestamp
            value = value.isoformat()
        text = str(value)
        if len(text) >= 19 and text[4] == "-" and text[10] in "T " and text[13] == ":":
            text = text[:10] + " " + text[11:19]
    return escape(text)


def _print(
    columns: list[str], rows: list[list[Any]], *, title: str | None, null: str, count: bool
) -> None:
    table = Table(title=escape(title) if title else None, header_style="bold")
    for i, col in enumerate(columns):
        table.add_column(escape(str(col)), overflow="fold", no_wrap=i == 0)
    for row in rows:
        table.add_row(*(cell(v, null=null) for v in row))
    console.print(table)
    if count:
        console.print(f"[dim]{len(rows)} row{'' if len(rows) == 1 else 's'}[/dim]")


def print_rows(
    columns: list[str],
    rows: list[list[Any]] | list[tuple],
    *,
    title: str | None = None,
    max_rows: int | None = None,
) -> None:
    """Print a SQL result as a table (NULL shown as such), then the row count."""
    shown = [list(r) for r in (rows if max_rows is None else rows[:max_rows])]
    _print(columns, shown, title=title, null="[dim]NULL[/dim]", count=False)
    more = f" (showing {len(shown)})" if len(shown) < len(rows) else ""
    console.print(f"[dim]{len(rows)} row{'' if len(rows) == 1 else 's'}{more}[/dim]")


def print_table(
    rows: list[dict],
    columns: list[str] | None = None,
    *,
    title: str | None = None,
    hide_absent: bool = False,
    count: bool = True,
) -> None:
    """Print objects (dicts) as a table of ``columns`` (default: the first row's keys), then
    the row count. ``hide_absent`` drops columns that no row has."""
    columns = list(columns or (list(rows[0]) if rows else []))
    if hide_absent:
        columns = [c for c in columns if any(c in r for r in rows)] or columns
    _print(columns, [[r.get(c) for c in columns] for r in rows], title=title, null="", count=count)


def print_record(
    record: dict[str, Any], *, title: str | None = None, skip: tuple[str, ...] = ()
) -> None:
    """Print one object as a two-column table of its properties."""
    table = Table(title=escape(title) if title else None, show_header=False)
    table.add_column("property", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in record.items():
        if key not in skip:
            table.add_row(escape(str(key)), cell(value))
    console.print(table)


def print_error(exc: BaseException) -> None:
    message = getattr(exc, "message", None) or str(exc)
    err_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)


def fail(exc: BaseException) -> typer.Exit:
    """Print ``exc`` as an error line; ``raise fail(exc)`` ends the command with status 1."""
    print_error(exc)
    return typer.Exit(code=1)


class NeveGroup(TyperGroup):
    """The root command: a ``NeveError`` from any sub-command is one red line and status 1."""

    def invoke(self, ctx: Any) -> Any:  # typer's (vendored) click Context
        try:
            return super().invoke(ctx)
        except NeveError as exc:
            raise fail(exc) from None


def field_help(kind: ObjectKind, name: str) -> str:
    """An option's help, read from the kind's declaration (its SQL property and meaning)."""
    field = kind.field(name)
    return f"{field.sql}: {field.help}" if field.help else field.sql


def kind_body(kind: ObjectKind, stage: Stage, owner: str, **values: Any) -> dict[str, Any]:
    """The REST body of the options given (None: not given), checked against the kind."""
    given = {k: v for k, v in values.items() if v is not None}
    try:
        return kind.checked(given, stage, owner)
    except NeveError as exc:
        raise fail(exc) from None
