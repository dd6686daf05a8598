"""``neve.connect()`` and the ``Session``: the user's handle on an account.

On the embedded default (no ``url``), ``connect`` attaches to the control plane serving the
account directory (``NEVE_HOME``, default ``~/.neve``) or starts one in the background, and
logs in as the local admin with the token file only the account's owner can read. With ``url``
it logs in to a remote control plane with a password, a token, or a key-pair JWT.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pandas as pd

from neve.client.transport import Transport
from neve.config import default_home
from neve.errors import AuthenticationError, InvalidArgumentError


class Row(tuple):
    """A result row: a tuple whose values can also be read by column name (case-insensitive)."""

    _fields: tuple[str, ...] = ()

    def __new__(cls, values: Sequence[Any], fields: Sequence[str]) -> Row:
        row = super().__new__(cls, values)
        row._fields = tuple(fields)
        return row

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            for i, name in enumerate(self._fields):
                if name == key or name.upper() == key.upper():
                    return tuple.__getitem__(self, i)
            raise KeyError(f"no column {key!r}; columns: {list(self._fields)}")
        return tuple.__getitem__(self, key)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def as_dict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self, strict=True))

    def __repr__(self) -> str:
        return (
            "Row(" + ", ".join(f"{k}={v!r}" for k, v in zip(self._fields, self, strict=True)) + ")"
        )


class SqlResult:
    """The result of ``session.sql(text)``; nothing runs until ``collect()``/``to_pandas()``."""

    def __init__(self, session: Session, text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise InvalidArgumentError("sql text must be a non-empty string")
        self._session = session
        self._text = text
        self._result: dict | None = None

    def _run(self) -> dict:
        if self._result is None:
            self._result = self._session._transport.call(
                "POST", "/api/v1/sql", json={"sql": self._text, "context": self._session.context()}
            )
            ctx = self._result.get("context") or {}
            self._session._apply_context(ctx)
        return self._result

    @property
    def columns(self) -> list[str]:
        return list(self._run()["columns"])

    def collect(self) -> list[Row]:
        res = self._run()
        cols = res["columns"]
        return [Row(r, cols) for r in res["rows"]]

    def to_pandas(self) -> pd.DataFrame:
        res = self._run()
        return pd.DataFrame(res["rows"], columns=res["columns"])

    def __iter__(self) -> Iterator[Row]:
        return iter(self.collect())


class Session:
    """A connection to one neve account, with a current role, database and schema."""

    def __init__(
        self,
        transport: Transport,
        *,
        url: str,
        account_home: Path | None,
        role: str | None = None,
        database: str | None = None,
        schema: str | None = None,
    ) -> None:
        self._transport = transport
        self.url = url
        self.account_home = account_home
        self.current_role = role
        self.current_database = database
        self.current_schema = schema
        self._refresh_headers()

    # -- context ------------------------------------------------------------------------------
    def context(self) -> dict[str, str]:
        return {
            k: v
            for k, v in (
                ("role", self.current_role),
                ("database", self.current_database),
                ("schema", self.current_schema),
            )
            if v
        }

    def _refresh_headers(self) -> None:
        self._transport._client.headers["X-Neve-Context"] = orjson.dumps(self.context()).decode()

    def _apply_context(self, ctx: dict[str, Any]) -> None:
        self.current_role = ctx.get("role") or self.current_role
        self.current_database = ctx.get("database", self.current_database)
        self.current_schema = ctx.get("schema", self.current_schema)
        self._refresh_headers()

    def use_role(self, role: str) -> None:
        self.sql(f"USE ROLE {role}").collect()

    def use_database(self, database: str) -> None:
        self.sql(f"USE DATABASE {database}").collect()

    def use_schema(self, schema: str) -> None:
        self.sql(f"USE SCHEMA {schema}").collect()

    # -- SQL and the warehouse ------------------------------------------------------------------
    def sql(self, text: str) -> SqlResult:
        """A SQL statement (query or management statement); run it with ``.collect()``."""
        return SqlResult(self, text)

    def write_pandas(self, df: pd.DataFrame, table_name: str, **kwargs: Any) -> Any:
        from neve.client import warehouse

        return warehouse.write_pandas(self, df, table_name, **kwargs)

    def create_dataframe(self, df: pd.DataFrame, **kwargs: Any) -> Any:
        from neve.client import warehouse

        return warehouse.create_dataframe(self, df, **kwargs)

    def table(self, name: str) -> Any:
        from neve.client import warehouse

        return warehouse.table(self, name)

    # -- objects --------------------------------------------------------------------------------
    def create_compute_pool(
        self,
        name: str,
        *,
        instance_family: str,
        min_nodes: int = 1,
        max_nodes: int = 1,
        auto_resume: bool = True,
        if_not_exists: bool = False,
        comment: str | None = None,
    ) -> list[Row]:
        """``CREATE COMPUTE POOL`` from Python (same statement, same checks)."""
        if not isinstance(min_nodes, int) or not isinstance(max_nodes, int):
            raise InvalidArgumentError("min_nodes and max_nodes must be integers")
        text = (
            f"CREATE COMPUTE POOL {'IF NOT EXISTS ' if if_not_exists else ''}{name} "
            f"MIN_NODES = {min_nodes} MAX_NODES = {max_nodes} "
            f"INSTANCE_FAMILY = '{instance_family}' AUTO_RESUME = {str(bool(auto_resume)).upper()}"
        )
        if comment:
            text += " COMMENT = '" + comment.replace("'", "''") + "'"
        return self.sql(text).collect()

    def create_token(
        self, name: str, *, days_to_expiry: int | None = None, role: str | None = None
    ) -> str:
        """A programmatic access token for the current user (for HTTP calls to the ingress)."""
        body: dict[str, Any] = {"name": name}
        if days_to_expiry is not None:
            body["days_to_expiry"] = days_to_expiry
        if role is not None:
            body["role"] = role
        return self._transport.call("POST", "/api/v1/tokens", json=body)["token"]

    @property
    def token(self) -> str:
        """This session's own bearer token."""
        return self._transport.token

    # -- lifecycle --------------------------------------------------------------------------------
    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Session(url={self.url!r}, role={self.current_role!r}, database={self.current_database!r}, schema={self.current_schema!r})"


def connect(
    home: str | Path | None = None,
    *,
    url: str | None = None,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    private_key: str | bytes | None = None,
    account: str = "local",
    role: str | None = None,
    database: str | None = None,
    schema: str | None = None,
    timeout_s: float = 60.0,
) -> Session:
    """Connect to a neve account.

    - ``neve.connect()``: the embedded default. Uses the account in ``home`` (``NEVE_HOME`` or
      ``~/.neve``), starting its control plane in the background when none runs, as local admin.
    - ``neve.connect(url=..., user=..., password=...)`` or ``token=...``: a remote control plane
      (``NEVE_URL`` / ``NEVE_TOKEN`` in the environment do the same).
      ``private_key`` (PEM text) signs a key-pair JWT for ``user`` in ``account``.
    """
    import os

    url = url or os.environ.get("NEVE_URL") or None
    token = token or (os.environ.get("NEVE_TOKEN") if url else None) or None
    account_home: Path | None = None
    if url is None:
        from neve.control import daemon

        account_home = Path(home).expanduser().resolve() if home else default_home()
        info = daemon.ensure_running(account_home, timeout_s=timeout_s)
        url = info["url"]
        if token is None and user is None:
            token = (account_home / daemon.TOKEN_FILE).read_text().strip()
    assert url is not None
    url = url.rstrip("/")
    if token is None:
        token = _login(
            url, user=user, password=password, private_key=private_key, account=account, role=role
        )
    session = Session(
        Transport(url, token),
        url=url,
        account_home=account_home,
        role=role,
        database=database,
        schema=schema,
    )
    who = session._transport.call("GET", "/api/v1/session")
    session.current_role = role or who.get("role")
    session._refresh_headers()
    return session


def _login(
    url: str,
    *,
    user: str | None,
    password: str | None,
    private_key: str | bytes | None,
    account: str,
    role: str | None,
) -> str:
    if not user:
        raise InvalidArgumentError(
            "connect(url=...) needs user= with password= or private_key=, or token="
        )
    if private_key is not None:
        from neve.security.keypair import make_jwt

        pem = private_key.decode() if isinstance(private_key, bytes) else private_key
        return make_jwt(pem, account=account, user=user)
    if password is None:
        raise InvalidArgumentError(
            f"connect: no password, token or private_key given for user {user}"
        )
    try:
        resp = httpx.post(
            f"{url}/api/v1/login",
            json={"user": user, "password": password, **({"role": role} if role else {})},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        raise AuthenticationError(f"cannot reach {url} to log in: {exc}") from exc
    if resp.status_code != 200:
        try:
            msg = resp.json().get("message", resp.text)
        except ValueError:
            msg = resp.text
        raise AuthenticationError(f"login as {user} failed: {msg}")
    return resp.json()["token"]
