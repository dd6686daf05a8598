"""``neve sql "STATEMENT"`` prints the result as a table; ``neve sql`` opens an interactive shell.

The shell reads statements ending in ``;`` (across lines), keeps the role/database/schema that
USE statements set, and prints each result. ``\\q``, ``exit`` or Ctrl-D leave it.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from neve.cli._common import DatabaseOpt, get_session, print_error, print_rows

app = typer.Typer(help="Run SQL statements against the neve account.", add_completion=False)
console = Console()


class SqlShell:
    """Sends statements to the control plane, carrying the context between them."""

    def __init__(self, session: Any) -> None:
        from neve.client.warehouse import _context, _transport

        self.session = session
        self.transport = _transport(session)
        self.context: dict[str, Any] = _context(session)

    def use(self, *, database: str | None = None, schema: str | None = None) -> None:
        """USE DATABASE / USE SCHEMA (``schema`` or ``db.schema``) before the first statement."""
        from neve.identifiers import ident, quote, split_name

        if database:
            self.run(f"USE DATABASE {quote(ident(database, kind='database name'))}")
        if schema:
            parts = [quote(ident(part, kind="schema name")) for part in split_name(schema)]
            self.run(f"USE SCHEMA {'.'.join(parts)}")

    def run(self, text: str) -> dict:
        body = self.transport.call(
            "POST", "/api/v1/sql", json={"sql": text, "context": self.context}
        )
        ctx = body.get("context") or {}
        self.context = {k: v for k, v in ctx.items() if v}
        return body


def render(body: dict, *, max_rows: int | None = None) -> None:
    print_rows(body.get("columns") or [], body.get("rows") or [], max_rows=max_rows)


def statement_complete(buffer: str) -> bool:
    """True when ``buffer`` ends with a top-level ``;`` (not inside a string or comment)."""
    from sqlglot.tokens import TokenType

    from neve.errors import SqlSyntaxError
    from neve.sql.lexer import tokenize

    try:
        tokens = tokenize(buffer)
    except SqlSyntaxError:
        return False  # e.g. an unterminated string: keep reading
    return bool(tokens) and tokens[-1].token_type == TokenType.SEMICOLON


def interactive(shell: SqlShell, *, max_rows: int | None) -> None:
    from neve.errors import NeveError

    console.print("neve SQL shell: end statements with ';', \\q to quit")
    buffer = ""
    while True:
        ctx = shell.context
        where = ".".join(x for x in (ctx.get("database"), ctx.get("schema")) if x) or "-"
        prompt = f"{ctx.get('role', '?')}@{where}> " if not buffer else "... "
        try:
            line = input(prompt)
        except EOFError:
            console.print()
            return
        except KeyboardInterrupt:
            console.print()
            buffer = ""
            continue
        if not buffer and line.strip() in ("\\q", "exit", "quit"):
            return
        buffer += line + "\n"
        if not statement_complete(buffer):
            continue
        text, buffer = buffer, ""
        try:
            render(shell.run(text), max_rows=max_rows)
        except NeveError as exc:
            print_error(exc)


@app.callback(invoke_without_command=True)
def sql(
    ctx: typer.Context,
    statement: Annotated[
        str | None, typer.Argument(help="SQL to run; omit it for an interactive shell")
    ] = None,
    max_rows: Annotated[int | None, typer.Option(help="print at most this many rows")] = None,
    database: DatabaseOpt = None,
    schema: Annotated[
        str | None,
        typer.Option("--schema", "-s", help="Current schema (schema or db.schema)."),
    ] = None,
) -> None:
    """Run SQL (``neve sql "SHOW SERVICES"``), or open a shell with no argument.

    ``--database``/``--schema`` set where unqualified names resolve (as USE DATABASE / USE
    SCHEMA would at the start; both must exist)."""
    from neve.errors import NeveError

    try:
        shell = SqlShell(get_session(ctx))
        shell.use(database=database, schema=schema)
    except NeveError as exc:
        print_error(exc)
        raise typer.Exit(1) from None
    if statement is None or statement == "-":
        if statement == "-" or not sys.stdin.isatty():
            statement = sys.stdin.read()
        else:
            interactive(shell, max_rows=max_rows)
            return
    try:
        render(shell.run(statement), max_rows=max_rows)
    except NeveError as exc:
        print_error(exc)
        raise typer.Exit(1) from None
