"""``neve.connect()`` and the ``Session``: the user's handle on an account.

On the embedded default (no ``url``), ``connect`` attaches to the control plane serving the
account directory (``home``, else ``NEVE_HOME``, else ``~/.neve``) or starts one in the
background, and logs in as the local admin with the token file only the account's owner can
read. If that daemon goes away (stopped, killed, machine rebooted), the session's next call
starts or finds the new one and carries on. With ``url`` it logs in to a (remote) control plane
with a password, a token, or a key-pair JWT.

Every request carries the session's context as ``X-Neve-Role``, ``X-Neve-Database`` and
``X-Neve-Schema``, so the server-side ``RequestContext`` is the session's; ``use_role`` /
``use_database`` / ``use_schema`` (or the SQL ``USE`` statements) change it, checked by the
server.

``session.sql(text)`` runs the statement(s) at once and returns a ``SqlResult``: ``.collect()``
gives ``Row`` objects (tuples whose values can also be read by column name), ``.to_pandas()`` a
DataFrame.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from neve.client.results import Row, SqlResult
from neve.client.transport import Transport
from neve.errors import (
    AuthenticationError,
    InvalidArgumentError,
    NeveError,
    ServiceUnavailableError,
)
from neve.identifiers import ident, quote, split_name
from neve.kinds import COMPUTE_POOL

if TYPE_CHECKING:
    import pandas as pd

ROLE_HEADER = "X-Neve-Role"
DATABASE_HEADER = "X-Neve-Database"
SCHEMA_HEADER = "X-Neve-Schema"


# -- transport --------------------------------------------------------------------------------------


class SessionTransport(Transport):
    """A ``Transport`` that sends the session's context headers, and can follow a restarted
    control plane (``reconnect`` returns the current ``(url, token)``)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        context_headers: Callable[[], dict[str, str]],
        reconnect: Callable[[], tuple[str, str]] | None = None,
        timeout: float = 600.0,
    ) -> None:
        super().__init__(base_url, token, timeout=timeout)
        self._context_headers = context_headers
        self._reconnect = reconnect
        if reconnect is not None:
            # The local daemon may be restarted between two calls. Without pooled connections
            # a call to a daemon that is gone fails to *connect* (nothing was sent, so it is
            # safe to send again to the new one); a pooled connection would fail mid-request,
            # where a retry could apply a change twice. On loopback a connection costs ~0.1 ms.
            self._client.close()
            self._client = httpx.Client(
                base_url=self.base_url,
                headers={"Authorization": f"Bearer {token}"},
                timeout=httpx.Timeout(timeout, connect=10.0),
                limits=httpx.Limits(max_keepalive_connections=0),
                trust_env=False,  # loopback: never through a proxy
                # with TLS configured the local daemon's certificate names the public host,
                # not 127.0.0.1; locally the token file's permissions are what protect access
                verify=False,
            )

    def retarget(self, base_url: str, token: str) -> None:
        """Point this transport at another URL and token (a restarted daemon)."""
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._client.base_url = httpx.URL(self.base_url)
        self._client.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, *, headers: dict | None = None, **kwargs: Any) -> Any:
        merged = {**self._context_headers(), **(headers or {})}
        try:
            return super().call(method, path, headers=merged, **kwargs)
        except ServiceUnavailableError as exc:
            cause = exc.__cause__
            if (
                self._reconnect is None
                or not isinstance(cause, httpx.TransportError)
                or isinstance(cause, httpx.TimeoutException)
            ):
                raise
            if not isinstance(cause, httpx.ConnectError):
                # The connection broke after the request was sent: the daemon died during it
                # (or a proxy cut it). Only a request that changes nothing may be sent again.
                if self._server_answers():
                    raise
                self.retarget(*self._reconnect())
                if method.upper() not in ("GET", "HEAD", "OPTIONS"):
                    raise ServiceUnavailableError(
                        f"the control plane stopped while handling {method} {path}; a new one "
                        f"runs at {self.base_url}, but the request may or may not have been "
                        "applied: check, then repeat it"
                    ) from exc
            else:  # the request never reached a server (nothing ran): safe to send again
                self.retarget(*self._reconnect())
        except AuthenticationError:
            if self._reconnect is None:
                raise
            url, token = self._reconnect()
            if (url.rstrip("/"), token) == (self.base_url, self.token):
                raise  # the credentials are current: the server means it
            self.retarget(url, token)
        return super().call(method, path, headers=merged, **kwargs)

    def _server_answers(self) -> bool:
        try:
            return self._client.get("/api/v1/health", timeout=5.0).status_code == 200
        except httpx.HTTPError:
            return False


# -- the session ------------------------------------------------------------------------------------


class Session:
    """A connection to one neve account, with a current role, database and schema.

    Build it with ``neve.connect()``. Other modules add thin methods here (a call to the REST
    API or a SQL statement each); ``_transport.call(method, path, json=...)`` sends a request
    with this session's credentials and context.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        url: str,
        account_home: Path | None = None,
        user: str | None = None,
        role: str | None = None,
        database: str | None = None,
        schema: str | None = None,
        logout_on_close: bool = False,
    ) -> None:
        self._transport = transport
        self.url = url.rstrip("/")
        self.account_home = account_home
        self.current_user = user
        self.current_role = role
        self.current_database = database
        self.current_schema = schema
        self._logout_on_close = logout_on_close
        self._closed = False

    # -- context ----------------------------------------------------------------------------------
    def context(self) -> dict[str, str]:
        """The current role, database and schema (those that are set)."""
        current = (
            ("role", self.current_role),
            ("database", self.current_database),
            ("schema", self.current_schema),
        )
        return {k: v for k, v in current if v}

    def context_headers(self) -> dict[str, str]:
        """The headers that make the server-side context this session's."""
        headers = {}
        for header, value in (
            (ROLE_HEADER, self.current_role),
            (DATABASE_HEADER, self.current_database),
            (SCHEMA_HEADER, self.current_schema),
        ):
            if value:
                headers[header] = quote(value)  # names are normalized: quote keeps their case
        return headers

    def _apply_context(self, ctx: dict[str, Any]) -> None:
        """Adopt the context the server reports (after USE statements)."""
        if ctx.get("role"):
            self.current_role = ctx["role"]
        if "database" in ctx:
            self.current_database = ctx["database"]
        if "schema" in ctx:
            self.current_schema = ctx["schema"]

    def use_role(self, role: str) -> None:
        """USE ROLE: only a role granted to the user (the server checks)."""
        self.sql(f"USE ROLE {quote(ident(role, kind='role name'))}")

    def use_database(self, database: str) -> None:
        """USE DATABASE (it must exist); the current schema becomes its PUBLIC schema if any."""
        self.sql(f"USE DATABASE {quote(ident(database, kind='database name'))}")

    def use_schema(self, schema: str) -> None:
        """USE SCHEMA ``schema`` or ``database.schema`` (it must exist)."""
        parts = split_name(schema)
        if not 1 <= len(parts) <= 2:
            raise InvalidArgumentError(f"invalid schema name {schema!r}: use schema or db.schema")
        names = [
            ident(p, kind="schema name" if i == len(parts) - 1 else "database name")
            for i, p in enumerate(parts)
        ]
        self.sql("USE SCHEMA " + ".".join(quote(n) for n in names))

    def whoami(self) -> dict[str, Any]:
        """The server's view of this session: user, role, database, schema, usable roles."""
        return self._transport.call("GET", "/api/v1/session")

    # -- SQL and the warehouse --------------------------------------------------------------------
    def sql(self, text: str) -> SqlResult:
        """Run SQL (a query, a management statement, or several separated by ``;``) now.

        The result holds what the last statement returned; USE statements change this
        session's role, database or schema.
        """
        if not isinstance(text, str) or not text.strip():
            raise InvalidArgumentError("SQL text must be a non-empty string")
        body = self._transport.call("POST", "/api/v1/sql", json={"sql": text})
        if isinstance(body.get("context"), dict):
            self._apply_context(body["context"])
        return SqlResult(body, text)

    def write_pandas(
        self,
        df: pd.DataFrame,
        table_name: str,
        *,
        database: str | None = None,
        schema: str | None = None,
        auto_create_table: bool = True,
        overwrite: bool = False,
    ) -> Any:
        """Append ``df`` to a warehouse table (created from its columns when missing)."""
        from neve.client import warehouse

        if (database or schema) and len(split_name(table_name)) > 1:
            raise InvalidArgumentError(
                f"table name {table_name!r} is qualified already; do not also pass "
                "database= or schema="
            )
        if database and not schema:
            schema = self.current_schema
            if not schema:
                raise InvalidArgumentError(
                    f"write_pandas({table_name!r}, database={database!r}) needs schema= too "
                    "(no current schema)"
                )
        name = ".".join(p for p in (database, schema, table_name) if p)
        return warehouse.write_pandas(
            self, df, name, auto_create_table=auto_create_table, overwrite=overwrite
        )

    def create_dataframe(self, df: pd.DataFrame, **kwargs: Any) -> Any:
        """Upload ``df`` as a new warehouse table (``table_name=`` to name it)."""
        from neve.client import warehouse

        return warehouse.create_dataframe(self, df, **kwargs)

    def table(self, name: str) -> Any:
        """A warehouse table: ``to_pandas()``, ``collect()``, ``count()``, ``drop()``."""
        from neve.client import warehouse

        return warehouse.table(self, name)

    # -- objects ----------------------------------------------------------------------------------
    def create_compute_pool(
        self,
        name: str,
        *,
        instance_family: str,
        min_nodes: int = 1,
        max_nodes: int = 1,
        auto_resume: bool = True,
        auto_suspend_secs: int | None = None,
        initially_suspended: bool = False,
        if_not_exists: bool = False,
        comment: str | None = None,
        backend: str | None = None,
        address: str | None = None,
    ) -> list[Row]:
        """``CREATE COMPUTE POOL`` from Python (same statement, same checks).

        ``auto_suspend_secs``: suspend the pool once idle that long (0: never);
        ``initially_suspended``: create it without starting nodes. ``backend="ray"`` with
        ``address="ray://head:10001"`` (or ``"auto"``) backs the pool with a Ray cluster; the
        default is the local backend (processes on this machine).
        """
        props = COMPUTE_POOL.checked(
            {
                "min_nodes": min_nodes,
                "max_nodes": max_nodes,
                "instance_family": instance_family,
                "auto_resume": auto_resume,
                "auto_suspend_secs": auto_suspend_secs,
                "initially_suspended": initially_suspended or None,
                "backend": backend,
                "address": address,
                "comment": comment,
            },
            "create",
            f"compute pool {name}",
        )
        text = (
            f"CREATE COMPUTE POOL {'IF NOT EXISTS ' if if_not_exists else ''}"
            f"{quote(ident(name, kind='compute pool name'))} {COMPUTE_POOL.render(props)}"
        )
        return self.sql(text).collect()

    def describe_service(self, name: str) -> dict[str, Any]:
        """``DESCRIBE SERVICE``: one row as a dict; ``spec`` is its YAML specification."""
        from neve.client.service_specs import _name

        result = self.sql(f"DESCRIBE SERVICE {_name(name, 'service')}")
        row = result.first()
        if row is None:
            raise NeveError(f"DESCRIBE SERVICE {name} returned no row")
        return row.as_dict()

    def create_service(
        self,
        name: str,
        *,
        compute_pool: str,
        spec: str | dict[str, Any],
        min_instances: int | None = None,
        max_instances: int | None = None,
        auto_resume: bool = True,
        auto_suspend_secs: int | None = None,
        external_access_integrations: list[str] | tuple[str, ...] = (),
        comment: str | None = None,
        if_not_exists: bool = False,
    ) -> dict[str, Any]:
        """``CREATE SERVICE name IN COMPUTE POOL p FROM SPECIFICATION``: a service from a YAML
        specification (text, or a mapping such as a copied ``describe_service(...)["spec"]``);
        returns its DESCRIBE row once it runs."""
        from neve.client.service_specs import create_service_statement

        self.sql(
            create_service_statement(
                name,
                compute_pool=compute_pool,
                spec=spec,
                min_instances=min_instances,
                max_instances=max_instances,
                auto_resume=auto_resume,
                auto_suspend_secs=auto_suspend_secs,
                external_access_integrations=external_access_integrations,
                comment=comment,
                if_not_exists=if_not_exists,
            )
        )
        return self.describe_service(name)

    def create_token(
        self,
        name: str,
        *,
        days_to_expiry: int | None = None,
        role: str | None = None,
        services: list[str] | None = None,
    ) -> str:
        """A programmatic access token for the current user (e.g. for calls to the ingress).

        ``services`` scopes it to those services' ingress endpoints: it can call them and do
        nothing else (the token to hand to another installation's API integration)."""
        body: dict[str, Any] = {"name": name}
        if days_to_expiry is not None:
            body["days_to_expiry"] = days_to_expiry
        if role is not None:
            body["role"] = role
        if services is not None:
            body["services"] = list(services)
        return self._transport.call("POST", "/api/v1/tokens", json=body)["token"]

    def ingress(self) -> dict[str, Any]:
        """Where the account's ingress proxies listen: ``{"url", "grpc_address", "nodes"}``:
        the HTTP base of ``/svc/<service>/...`` and the ``host:port`` of V2 gRPC on this
        machine (None when absent), and the proxies on Ray nodes (``pool``, ``node``, ``url``,
        ``grpc_address`` each), any of which serves every service."""
        return self._transport.call("GET", "/api/v1/ingress")

    @property
    def token(self) -> str:
        """This session's own bearer token."""
        return self._transport.token

    # -- lifecycle --------------------------------------------------------------------------------
    def close(self) -> None:
        """End the session (a password login's token is revoked; the control plane keeps running)."""
        if self._closed:
            return
        self._closed = True
        if self._logout_on_close:
            with contextlib.suppress(NeveError):
                self._transport.call("POST", "/api/v1/logout")
        self._transport.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Session(url={self.url!r}, user={self.current_user!r}, role={self.current_role!r}, "
            f"database={self.current_database!r}, schema={self.current_schema!r})"
        )


# -- connect ----------------------------------------------------------------------------------------


def connect(
    home: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    private_key: str | bytes | None = None,
    account: str | None = None,
    role: str | None = None,
    database: str | None = None,
    schema: str | None = None,
    timeout_s: float | None = None,
) -> Session:
    """Connect to a neve account and return a ``Session``.

    - ``neve.connect()`` / ``neve.connect(home)``: the embedded default. The account in
      ``home`` (else ``NEVE_HOME``, else ``~/.neve``); its control plane is started in the
      background when none runs (``timeout_s`` bounds the wait, default 120 s). Logs in as the
      local admin, or as ``user`` with ``password``.
    - ``neve.connect(url=..., user=..., password=...)``, ``token=...`` (a session token, a
      programmatic access token or a key-pair JWT), or ``user=..., private_key=PEM`` (signs a
      key-pair JWT for ``account``, by default the server's): a control plane at ``url``.
      ``NEVE_URL``, ``NEVE_TOKEN``, ``NEVE_USER`` and ``NEVE_PASSWORD`` supply these when the
      arguments are not given.
    - ``role``, ``database``, ``schema``: the session's initial context (``NEVE_ROLE`` too);
      the role must be granted to the user.
    """
    from neve.control import daemon

    env = os.environ
    url = url or env.get("NEVE_URL") or None
    role = role or env.get("NEVE_ROLE") or None
    if url is not None:  # credentials from the environment only go to an explicit server
        token = token or env.get("NEVE_TOKEN") or None
        user = user or env.get("NEVE_USER") or None
        password = password or env.get("NEVE_PASSWORD") or None
    wait_s = daemon.DEFAULT_START_TIMEOUT_S if timeout_s is None else float(timeout_s)
    database = ident(database, kind="database name") if database else None
    schema = ident(schema, kind="schema name") if schema else None
    account_home: Path | None = None
    logout_on_close = False

    if url is None:
        from neve.config import load_settings

        account_home = load_settings(home).home

        def endpoint() -> tuple[str, str]:
            info = daemon.ensure_running(account_home, timeout_s=wait_s)
            base = str(info["url"]).rstrip("/")
            if user is None and token is None:
                return base, daemon.read_token(account_home)
            return base, token or _login(base, user, password, private_key, account, role)

        base_url, credential = endpoint()
        reconnect: Callable[[], tuple[str, str]] | None = endpoint
        logout_on_close = user is not None and token is None and private_key is None
    else:
        base_url = url.rstrip("/")
        if token is not None:
            credential = token
        else:
            credential = _login(base_url, user, password, private_key, account, role)
            logout_on_close = private_key is None
        reconnect = None

    session: Session | None = None
    transport = SessionTransport(
        base_url,
        credential,
        context_headers=lambda: session.context_headers() if session is not None else {},
        reconnect=reconnect,
    )
    session = Session(
        transport,
        url=base_url,
        account_home=account_home,
        role=ident(role, kind="role name") if role else None,
        database=database,
        schema=schema,
        logout_on_close=logout_on_close,
    )
    try:
        who = session.whoami()  # checks the credentials and the role now, not at first use
    except BaseException:
        session.close()
        raise
    session.current_user = who.get("user")
    session._apply_context({"role": who.get("role")})
    return session


def _login(
    url: str,
    user: str | None,
    password: str | None,
    private_key: str | bytes | None,
    account: str | None,
    role: str | None,
) -> str:
    """A bearer credential for ``user``: a key-pair JWT, or a session token from a password."""
    if not user:
        raise InvalidArgumentError(
            f"connecting to {url} needs user= with password= or private_key=, or token= "
            "(or NEVE_USER / NEVE_PASSWORD / NEVE_TOKEN)"
        )
    if private_key is not None:
        from neve.security.keypair import make_jwt

        pem = private_key.decode() if isinstance(private_key, bytes) else private_key
        return make_jwt(pem, account=account or _server_account(url), user=user)
    if password is None:
        raise InvalidArgumentError(f"no password, token or private_key given for user {user}")
    body: dict[str, Any] = {"user": user, "password": password}
    if role:
        body["role"] = role
    try:
        resp = httpx.post(f"{url}/api/v1/login", json=body, timeout=30.0)
    except httpx.HTTPError as exc:
        raise ServiceUnavailableError(f"cannot reach the control plane at {url}: {exc}") from exc
    try:
        answer = resp.json()
    except ValueError:
        answer = {"message": resp.text[:500]}
    if resp.status_code != 200:
        from neve.errors import error_from_dict

        if not isinstance(answer, dict):
            answer = {"message": str(answer)}
        answer.setdefault("type", "AuthenticationError" if resp.status_code == 401 else None)
        raise error_from_dict(answer)
    return str(answer["token"])


def _server_account(url: str) -> str:
    """The account name the server at ``url`` expects in key-pair JWTs (from its health)."""
    try:
        return str(httpx.get(f"{url}/api/v1/health", timeout=10.0).json()["account"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise ServiceUnavailableError(
            f"cannot read the account name of the control plane at {url}; pass account=: {exc}"
        ) from exc
