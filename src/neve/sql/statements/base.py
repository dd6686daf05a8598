"""The statement dispatch table and the helpers every statement module uses."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from neve.context import RequestContext
from neve.errors import NotSupportedError
from neve.identifiers import ident
from neve.like import filter_like
from neve.sql.parser import Statement
from neve.sql.result import SqlResult
from neve.sql.statements.columns import SHOW_COLUMNS

if TYPE_CHECKING:
    from neve.sql.managers import EngineParts

Handler = Callable[["EngineParts", RequestContext, Statement], "SqlResult"]
_HANDLERS: dict[str, Handler] = {}


def handles(*kinds: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for kind in kinds:
            _HANDLERS[kind] = fn
        return fn

    return register


def run_statement(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    handler = _HANDLERS.get(st.kind)
    if handler is None:
        raise NotSupportedError(f"{st.kind} is not supported")
    return handler(engine, ctx, st)


def _result(kind: str, rows: list[dict], like: str | None = None) -> SqlResult:

    key = "image_name" if kind == "SHOW IMAGES" else "name"
    rows = filter_like(list(rows), like, key)
    return SqlResult.from_dicts(rows, SHOW_COLUMNS.get(kind) if not rows else None)


def _status(message: str, **changes: Any) -> SqlResult:

    return SqlResult.status(message, **changes)


def _created(what: str, row: dict, started: datetime, **changes: Any) -> SqlResult:
    """The status of CREATE [IF NOT EXISTS]: whether the object is new or was there already
    (then nothing changed, its properties included)."""
    created_on = row.get("created_on")
    if isinstance(created_on, datetime):
        if created_on.tzinfo is None:
            created_on = created_on.replace(tzinfo=UTC)
        if created_on < started:
            return _status(f"{what} already exists, statement succeeded.", **changes)
    return _status(f"{what} successfully created.", **changes)


def _executed(**changes: Any) -> SqlResult:
    """The status of a statement that has no message of its own."""
    return _status("Statement executed successfully.", **changes)


def _dropped(name: str, kind: str) -> SqlResult:
    """DROP's status: the object's name, normalized as an identifier of ``kind``."""
    return _status(f"{ident(name, kind=kind)} successfully dropped.")


def _one(row: dict | list[dict]) -> SqlResult:

    if isinstance(row, dict):
        row = [row]
    return SqlResult.from_dicts(row)


def _lower_props(props: dict[str, Any]) -> dict[str, Any]:
    return {k.lower(): v for k, v in props.items()}


def _scope_kwargs(st: Statement, *, account: bool = False) -> dict[str, Any]:
    """Manager keywords of ``IN DATABASE d | IN SCHEMA s | IN COMPUTE POOL p | IN ACCOUNT``.

    ``IN ACCOUNT`` means "no scope" for managers without an ``in_account`` flag.
    """
    scope = st.args.get("scope")
    if scope == "DATABASE":
        return {"in_database": st.args["scope_name"]}
    if scope == "SCHEMA":
        return {"in_schema": st.args["scope_name"]}
    if scope == "COMPUTE POOL":
        return {"in_compute_pool": st.args["scope_name"]}
    if scope == "ACCOUNT" and account:
        return {"in_account": True}
    return {}


def _no_replace(st: Statement) -> None:
    if st.or_replace:
        raise NotSupportedError(
            f"CREATE OR REPLACE is not supported for {st.kind.removeprefix('CREATE ').lower()}s: "
            "DROP it first, or use IF NOT EXISTS"
        )
