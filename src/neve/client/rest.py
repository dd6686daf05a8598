"""What the client registry classes share: the REST client, name segments, frames and checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote as url_quote

import pandas as pd

from neve.errors import (
    InvalidArgumentError,
    NeveError,
)
from neve.identifiers import quote

if TYPE_CHECKING:
    pass


ARTIFACT_SHA_HEADER = "X-Neve-Artifact-Sha256"


UPLOAD_SHA_HEADER = "X-Neve-Upload-Sha256"


def rebuild_error(exc: NeveError, message: str) -> NeveError:
    """The same error class with a message that names the object (keeps ``code``)."""
    err = exc.__class__.__new__(exc.__class__)
    NeveError.__init__(err, message, code=exc.code)
    return err


def segment(name: str) -> str:
    """A normalized identifier as one URL path segment (quoted when case matters)."""
    return url_quote(quote(name), safe="")


def frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if "created_on" in df.columns:
        df["created_on"] = pd.to_datetime(df["created_on"], utc=True, format="ISO8601")
    return df


class RestClient:
    """The session's transport plus the context header every registry call carries."""

    def __init__(self, session: Any) -> None:
        self.session = session
        transport = getattr(session, "_transport", None) or getattr(session, "transport", None)
        if transport is None:
            raise TypeError(f"{type(session).__name__} is not a neve session (no transport)")
        self.transport = transport

    def headers(self) -> dict[str, str]:
        """The session's current role/database/schema as the ``X-Neve-Context`` header."""
        context = getattr(self.session, "context", None)
        if callable(context):
            ctx = dict(context())
        else:
            role = getattr(self.session, "current_role", None)
            ctx = {"role": role} if role else {}
        return {"X-Neve-Context": json.dumps(ctx)} if ctx else {}

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {**self.headers(), **(kwargs.pop("headers", None) or {})}
        return self.transport.call(method, path, headers=headers, **kwargs)

    def cache_root(self) -> Path:
        home = getattr(self.session, "account_home", None)
        if home is None:
            from neve.config import default_home

            home = default_home()
        return Path(home) / "cache" / "models"


def default_context(session: Any, database: str, schema: str) -> None:
    """A session with no current database (or none in this one's schema) works in the
    registry's schema from now on, so the unqualified names of the user's path
    (``SELECT forecast_svc_predict(a, b) FROM features``) resolve; an explicit USE is kept. The
    schema need not exist yet: the first log_model creates it."""
    if not hasattr(session, "current_database"):
        return
    if session.current_database is None:
        session.current_database, session.current_schema = database, schema
    elif session.current_database == database and session.current_schema is None:
        session.current_schema = schema


def current_setting(session: Any, what: str) -> str | None:
    value = getattr(session, f"current_{what}", None)
    return value() if callable(value) else value


def as_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise InvalidArgumentError(f"{what} must be a list of strings, got {value!r}")
    return list(value)


def jsonable(value: Any, label: str) -> Any:
    import orjson

    try:
        return orjson.loads(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise InvalidArgumentError(
            f"{label}: metrics, options and tags must be JSON-serializable: {exc}"
        ) from None
