"""One module per console page; each exposes blocking ``(viewer) -> Response`` functions that
call the account's managers with the viewer's ``RequestContext``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from neve.console import render
from neve.context import RequestContext
from neve.errors import NeveError
from neve.identifiers import QualifiedName, ident

if TYPE_CHECKING:
    from neve.control.account import Account


@dataclass
class Viewer:
    """Who is looking, and what they asked: a page's only input."""

    request: Request
    account: Account
    ctx: RequestContext
    csrf: str
    form: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> dict[str, Any]:
        return dict(self.request.path_params)

    @property
    def query(self) -> dict[str, str]:
        return dict(self.request.query_params)

    def page(self, template: str, http_status: int = 200, **values: Any) -> Response:
        return render.page(
            template, http_status, viewer=self, ctx=self.ctx, csrf=self.csrf, **values
        )


def qualified(path: dict[str, Any], kind: str) -> QualifiedName:
    return QualifiedName(
        ident(path["db"], kind="database name"),
        ident(path["schema"], kind="schema name"),
        ident(path["name"], kind=f"{kind} name"),
    )


def attempt(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, str | None]:
    """``(fn(...), None)``, or ``(None, message)`` when neve refuses (e.g. a privilege the
    role lacks): a page shows what it may and says what it may not."""
    try:
        return fn(*args, **kwargs), None
    except NeveError as err:
        return None, err.message
