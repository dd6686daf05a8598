"""API integrations and external functions: SQL that scores rows through another installation.

An *API integration* (account level, in the integrations' namespace, privilege USAGE) names the
URLs external functions may call and the key they send::

    CREATE [OR REPLACE] API INTEGRATION [IF NOT EXISTS] shared_api
      API_PROVIDER = neve
      API_ALLOWED_PREFIXES = ('https://other-host:8443/svc/')
      [API_BLOCKED_PREFIXES = ('https://other-host:8443/svc/ML.PRIVATE.')]
      API_KEY = '<a token of the remote installation>'
      ENABLED = TRUE [COMMENT = '...']

The key is sealed with the account's key (``neve.security.sealed``) and never shown: SHOW and
DESCRIBE say only whether one is set. An *external function* (``functions.kind = EXTERNAL``,
owned by the role that created it) calls one URL inside those prefixes::

    CREATE [OR REPLACE] EXTERNAL FUNCTION [IF NOT EXISTS] f(a NUMBER, b NUMBER) RETURNS FLOAT
      API_INTEGRATION = shared_api [MAX_BATCH_ROWS = n ...] [COMMENT = '...']
      AS 'https://other-host:8443/svc/ML.REG.FORECAST_SVC/predict'

Creating one needs CREATE FUNCTION on the schema and USAGE on the integration, which must be
enabled and allow the URL; calling one needs USAGE on the function (its owner has it). A query
sends the function's rows in batches of ``MAX_BATCH_ROWS`` (the same vectorized UDF and batch
options as a service function, :mod:`neve.sql.udf`), each as the external-function data format
``{"data": [[row_index, a, b], ...]}`` with the key as ``Authorization: Bearer``, and reads
``{"data": [[row_index, result], ...]}`` back: the format a neve ingress endpoint speaks (a
result that is an object of one output is taken as that output's value).

Argument and return types: NUMBER/DECIMAL/FLOAT/DOUBLE travel as JSON numbers (DOUBLE in the
query), INT/INTEGER/BIGINT as integers (BIGINT), VARCHAR as strings, BOOLEAN, TIMESTAMP as ISO
text; RETURNS OBJECT / VARIANT / ARRAY gives the answered value as JSON text (VARCHAR).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import orjson
import pyarrow as pa
from sqlalchemy import select
from sqlalchemy.orm import Session

from neve.catalog import lookup
from neve.catalog import models as m
from neve.context import RequestContext
from neve.errors import (
    InvalidArgumentError,
    InvalidStateError,
    ModelExecutionError,
    NeveError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermissionDeniedError,
    ServiceUnavailableError,
)
from neve.identifiers import ident, qualify
from neve.models.signature import FeatureSpec, ModelSignature
from neve.security import sealed
from neve.security.objects import ACCOUNT
from neve.sql import functions as fns

if TYPE_CHECKING:
    from neve.sql.managers import Managers

#: ``functions.kind`` of an external function
KIND_EXTERNAL = fns.KIND_EXTERNAL
#: ``integrations.integration_type`` values
API = "API"
EXTERNAL_ACCESS = "EXTERNAL_ACCESS"
#: API_PROVIDER values: the remote speaks neve's ingress protocol (Bearer token, data format)
PROVIDERS = ("NEVE",)
#: What an API integration's secret is shown as
HIDDEN = "********"

#: Declared SQL type -> the signature type its values travel as.
_SCALAR_TYPES = {
    **dict.fromkeys(("NUMBER", "DECIMAL", "NUMERIC"), "DOUBLE"),
    **dict.fromkeys(("FLOAT", "FLOAT4", "FLOAT8", "DOUBLE", "REAL"), "DOUBLE"),
    **dict.fromkeys(("INT", "INTEGER", "BIGINT", "SMALLINT", "TINYINT"), "INT64"),
    **dict.fromkeys(("VARCHAR", "STRING", "TEXT", "CHAR"), "STRING"),
    "BOOLEAN": "BOOL",
    **dict.fromkeys(("TIMESTAMP", "TIMESTAMP_NTZ"), "TIMESTAMP_NTZ"),
}
#: Return types answered as JSON text.
_JSON_RETURNS = ("OBJECT", "VARIANT", "ARRAY")
#: The signature's one output: the column the caller's answer table carries.
RESULT = "RESULT"
#: Answers retried (with the batch's retries and deadline): the remote is busy or restarting.
_RETRY_STATUS = frozenset({429, 502, 503, 504})
_SVC_PATH = re.compile(r"^/svc/([^/]+)/")


# -- URLs ------------------------------------------------------------------------------------------


def check_url(url: Any, what: str) -> str:
    """An http(s) URL with a host and a plain path (no user info, fragment or dot segments)."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidArgumentError(f"{what}: expected an http:// or https:// URL, got {url!r}")
    text = url.strip()
    if any(ch.isspace() or ord(ch) < 32 or ch == "\\" for ch in text):
        raise InvalidArgumentError(f"{what}: {text!r} contains blanks, control characters or '\\'")
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InvalidArgumentError(
            f"{what}: {text!r} is not an http:// or https:// URL with a host"
        )
    if parts.username is not None or parts.password is not None:
        raise InvalidArgumentError(
            f"{what}: {text!r} carries a user name or password; put the secret in API_KEY"
        )
    if parts.fragment:
        raise InvalidArgumentError(f"{what}: {text!r} has a fragment (#...)")
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise InvalidArgumentError(f"{what}: {text!r} has an invalid port") from None
    lowered = parts.path.lower()
    if "%2e" in lowered or "%2f" in lowered or "%5c" in lowered:
        raise InvalidArgumentError(f"{what}: {text!r} has an encoded '.', '/' or '\\' in its path")
    if any(seg in (".", "..") for seg in parts.path.split("/")):
        raise InvalidArgumentError(f"{what}: {text!r} has '.' or '..' path segments")
    return text


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


def matches(url: str, prefix: str) -> bool:
    """``url`` lies under ``prefix``: the same scheme, host and port, and its path starts with
    the prefix's path (compared parsed, so ``http://h:80`` never admits ``http://h:8000``)."""
    if _origin(url) != _origin(prefix):
        return False
    return urlsplit(url).path.startswith(urlsplit(prefix).path)


def remote_service(url: str) -> str | None:
    """The service a neve ingress URL names (``.../svc/<service>/<method>``), if it does."""
    found = _SVC_PATH.match(urlsplit(url).path)
    return found.group(1) if found else None


# -- API integrations ------------------------------------------------------------------------------


def _prefixes(value: Any, what: str, *, required: bool) -> list[str]:
    if value is None:
        value = []
    if isinstance(value, str):
        value = [value]
    items = [check_url(v, what) for v in value]
    if required and not items:
        raise InvalidArgumentError(f"{what} is empty: name at least one URL prefix")
    return items


def _api_integration(s: Session, name: str) -> m.ExternalAccessIntegration:
    integ = lookup.account_level(s, m.ExternalAccessIntegration, name, "API integration")
    if integ.integration_type != API:
        raise InvalidArgumentError(
            f"integration {name} is an external access integration, not an API integration "
            "(API integrations are made with CREATE API INTEGRATION)"
        )
    return integ


def api_integration_row(integ: m.ExternalAccessIntegration) -> dict:
    """A SHOW API INTEGRATIONS row (the reference's columns; never the key)."""
    return {
        "name": integ.name,
        "type": "EXTERNAL_API",
        "category": "API",
        "enabled": bool(integ.enabled),
        "comment": integ.comment,
        "created_on": integ.created_on,
        "owner": integ.owner_role,
    }


class ApiIntegrations:
    """CREATE / ALTER / SHOW / DESCRIBE / DROP API INTEGRATION for one account."""

    def __init__(self, account: Managers) -> None:
        self.account = account

    @property
    def security(self) -> Any:
        return self.account.security

    def create(
        self,
        ctx: RequestContext,
        name: str,
        *,
        api_provider: Any = None,
        api_allowed_prefixes: Any = None,
        api_blocked_prefixes: Any = None,
        api_key: str | None = None,
        enabled: bool = True,
        comment: str | None = None,
        or_replace: bool = False,
        if_not_exists: bool = False,
    ) -> dict:
        integ_name = ident(name, kind="integration name")
        what = f"API integration {integ_name}"
        if or_replace and if_not_exists:
            raise InvalidArgumentError("use either OR REPLACE or IF NOT EXISTS, not both")
        provider = str(api_provider or "").upper()
        if provider not in PROVIDERS:
            raise InvalidArgumentError(
                f"{what}: API_PROVIDER = {api_provider or '(missing)'} is not supported; use "
                "API_PROVIDER = neve (an endpoint speaking neve's ingress protocol and the "
                "external-function data format)"
            )
        allowed = _prefixes(api_allowed_prefixes, f"{what}: API_ALLOWED_PREFIXES", required=True)
        blocked = _prefixes(api_blocked_prefixes, f"{what}: API_BLOCKED_PREFIXES", required=False)
        if not isinstance(enabled, bool):
            raise InvalidArgumentError(f"{what}: ENABLED must be TRUE or FALSE")
        if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
            raise InvalidArgumentError(f"{what}: API_KEY must be a non-empty string")
        home = self.account.settings.home
        with self.account.catalog.transaction() as s:
            self.security.require(s, ctx, "CREATE INTEGRATION", ACCOUNT)
            existing = s.scalar(
                select(m.ExternalAccessIntegration).where(
                    m.ExternalAccessIntegration.name == integ_name
                )
            )
            if existing is not None:
                if if_not_exists:
                    return api_integration_row(existing)
                if not or_replace:
                    raise ObjectExistsError(
                        f"integration {integ_name} already exists; use CREATE OR REPLACE API "
                        "INTEGRATION or DROP it first"
                    )
                if existing.integration_type != API:
                    raise ObjectExistsError(
                        f"integration {integ_name} already exists and is an external access "
                        "integration; OR REPLACE replaces only an API integration: choose "
                        "another name"
                    )
                self.security.require_owner(s, ctx, existing)
                self.security.on_drop(s, existing)  # a replaced object keeps no grants
                s.delete(existing)
                s.flush()
            integ = m.ExternalAccessIntegration(
                name=integ_name,
                integration_type=API,
                allowed_network_rules=[],
                details={
                    "api_provider": provider,
                    "api_allowed_prefixes": allowed,
                    "api_blocked_prefixes": blocked,
                },
                secret=sealed.seal(home, api_key) if api_key else None,
                enabled=enabled,
                owner_role=self.security.owner_role_for_create(ctx),
                comment=comment,
            )
            s.add(integ)
            s.flush()
            return api_integration_row(integ)

    def alter(self, ctx: RequestContext, name: str, *, if_exists: bool, **props: Any) -> bool:
        """ALTER API INTEGRATION i SET ENABLED / API_KEY / API_ALLOWED_PREFIXES /
        API_BLOCKED_PREFIXES / COMMENT (the owner only)."""
        integ_name = ident(name, kind="integration name")
        what = f"API integration {integ_name}"
        with self.account.catalog.transaction() as s:
            try:
                integ = _api_integration(s, integ_name)
            except ObjectNotFoundError:
                if if_exists:
                    return False
                raise
            self.security.require_owner(s, ctx, integ)
            details = dict(integ.details or {})
            if "enabled" in props:
                if not isinstance(props["enabled"], bool):
                    raise InvalidArgumentError(f"{what}: ENABLED must be TRUE or FALSE")
                integ.enabled = props["enabled"]
            if "api_allowed_prefixes" in props:
                details["api_allowed_prefixes"] = _prefixes(
                    props["api_allowed_prefixes"], f"{what}: API_ALLOWED_PREFIXES", required=True
                )
            if "api_blocked_prefixes" in props:
                details["api_blocked_prefixes"] = _prefixes(
                    props["api_blocked_prefixes"], f"{what}: API_BLOCKED_PREFIXES", required=False
                )
            if "api_key" in props:
                key = props["api_key"]
                if not isinstance(key, str) or not key.strip():
                    raise InvalidArgumentError(f"{what}: API_KEY must be a non-empty string")
                integ.secret = sealed.seal(self.account.settings.home, key)
            if "comment" in props:
                integ.comment = props["comment"]
            integ.details = details
        return True

    def show(self, ctx: RequestContext) -> list[dict]:
        with self.account.catalog.transaction() as s:
            return [
                api_integration_row(i)
                for i in s.scalars(
                    select(m.ExternalAccessIntegration)
                    .where(m.ExternalAccessIntegration.integration_type == API)
                    .order_by(m.ExternalAccessIntegration.name)
                )
                if self.security.has_privilege(s, ctx, "USAGE", i)
            ]

    def describe(self, ctx: RequestContext, name: str) -> list[dict]:
        """DESCRIBE API INTEGRATION: property rows (the key only as set or not)."""
        integ_name = ident(name, kind="integration name")
        with self.account.catalog.transaction() as s:
            integ = _api_integration(s, integ_name)
            if not self.security.has_privilege(s, ctx, "USAGE", integ):
                raise PermissionDeniedError(
                    f"insufficient privileges: role {ctx.role} needs USAGE on INTEGRATION "
                    f"{integ_name}"
                )
            details = integ.details or {}
            rows = [
                ("ENABLED", "Boolean", str(bool(integ.enabled)).lower()),
                ("API_PROVIDER", "String", details.get("api_provider")),
                ("API_ALLOWED_PREFIXES", "List", ",".join(details.get("api_allowed_prefixes", []))),
                ("API_BLOCKED_PREFIXES", "List", ",".join(details.get("api_blocked_prefixes", []))),
                ("API_KEY", "String", HIDDEN if integ.secret else ""),
                ("COMMENT", "String", integ.comment or ""),
            ]
        return [
            {"property": k, "property_type": t, "property_value": v, "property_default": ""}
            for k, t, v in rows
        ]

    def drop(self, ctx: RequestContext, name: str, *, if_exists: bool) -> bool:
        """DROP API INTEGRATION (the owner). Its external functions stay and fail when called,
        naming the missing integration, until it is created again."""
        integ_name = ident(name, kind="integration name")
        with self.account.catalog.transaction() as s:
            try:
                integ = _api_integration(s, integ_name)
            except ObjectNotFoundError:
                if if_exists:
                    return False
                raise
            self.security.require_owner(s, ctx, integ)
            self.security.on_drop(s, integ)
            s.delete(integ)
        return True


def _check_allowed(integ: m.ExternalAccessIntegration, url: str, label: str) -> None:
    details = integ.details or {}
    allowed = list(details.get("api_allowed_prefixes") or [])
    if not any(matches(url, prefix) for prefix in allowed):
        raise PermissionDeniedError(
            f"external function {label}: URL {url} is outside the API_ALLOWED_PREFIXES of API "
            f"integration {integ.name} ({', '.join(allowed) or 'none'})"
        )
    blocked = [p for p in details.get("api_blocked_prefixes") or [] if matches(url, p)]
    if blocked:
        raise PermissionDeniedError(
            f"external function {label}: URL {url} is in the API_BLOCKED_PREFIXES of API "
            f"integration {integ.name} ({', '.join(blocked)})"
        )


def _usable_integration(
    s: Session, account: Managers, ctx: RequestContext | None, name: str, label: str
) -> m.ExternalAccessIntegration:
    """The function's integration: an enabled API integration (and USAGE on it for ``ctx``)."""
    try:
        integ = _api_integration(s, name)
    except ObjectNotFoundError:
        raise ObjectNotFoundError(
            f"external function {label}: API integration {name} does not exist or not authorized"
        ) from None
    if ctx is not None:
        account.security.require(s, ctx, "USAGE", integ)
    if not integ.enabled:
        raise InvalidStateError(
            f"external function {label}: API integration {name} is disabled (ENABLED = FALSE); "
            f"its owner can enable it with ALTER API INTEGRATION {name} SET ENABLED = TRUE"
        )
    return integ


# -- external functions ----------------------------------------------------------------------------


def _travel_type(sql_type: str, what: str, *, returns: bool) -> str:
    kind = sql_type.upper()
    if kind in _SCALAR_TYPES:
        return _SCALAR_TYPES[kind]
    if returns and kind in _JSON_RETURNS:
        return "STRING"
    allowed = ", ".join(sorted({*_SCALAR_TYPES, *(_JSON_RETURNS if returns else ())}))
    raise InvalidArgumentError(
        f"{what} has type {sql_type}, which cannot travel in the external-function JSON format; "
        f"use one of {allowed}"
    )


def create_external_function(
    account: Managers,
    ctx: RequestContext,
    name: str,
    *,
    args: list[tuple[str, str]],
    returns: str,
    url: str,
    props: dict[str, Any],
    or_replace: bool = False,
    if_not_exists: bool = False,
) -> str:
    """CREATE EXTERNAL FUNCTION: the status message (``... successfully created.``)."""
    qn = qualify(name, database=ctx.database, schema=ctx.schema, kind="function")
    label = str(qn)
    if or_replace and if_not_exists:
        raise InvalidArgumentError("use either OR REPLACE or IF NOT EXISTS, not both")
    props = dict(props)
    integration = ident(str(props.pop("API_INTEGRATION")), kind="integration name")
    comment = props.pop("COMMENT", None)
    options = fns.validate_options(props, function=label)
    inputs: list[FeatureSpec] = []
    for arg_name, sql_type in args:
        arg = ident(arg_name, kind="argument name")
        if any(f.name == arg for f in inputs):
            raise InvalidArgumentError(
                f"external function {label}: argument {arg} is declared twice"
            )
        kind = _travel_type(sql_type, f"external function {label}: argument {arg}", returns=False)
        inputs.append(FeatureSpec(name=arg, type=kind))
    if not inputs:
        raise InvalidArgumentError(
            f"external function {label} declares no argument; it needs at least one (each row "
            "sent is [row_index, arguments...])"
        )
    out = _travel_type(returns, f"external function {label}: RETURNS", returns=True)
    signature = ModelSignature(inputs=inputs, outputs=[FeatureSpec(name=RESULT, type=out)])
    url = check_url(url, f"external function {label}: AS")
    security = account.security
    with account.catalog.transaction() as s:
        sch = lookup.schema(s, qn.database, qn.schema)
        security.require(s, ctx, "CREATE FUNCTION", sch)
        existing = s.scalar(
            select(m.Function).where(m.Function.schema_id == sch.id, m.Function.name == qn.name)
        )
        if existing is not None and if_not_exists:
            return f"Function {qn.name} already exists, statement succeeded."
        integ = _usable_integration(s, account, ctx, integration, label)
        _check_allowed(integ, url, label)
        details = {
            "api_integration": integ.name,
            "url": url,
            "returns": returns.upper(),
            "comment": comment,
        }
        if existing is not None:
            if existing.kind != KIND_EXTERNAL:
                raise ObjectExistsError(
                    f"function {label} already exists and calls a service; OR REPLACE replaces "
                    "only an external function: choose another name or DROP FUNCTION first"
                )
            if not or_replace:
                raise ObjectExistsError(
                    f"function {label} already exists; use CREATE OR REPLACE EXTERNAL FUNCTION "
                    "or DROP FUNCTION first"
                )
            security.require_owner(s, ctx, existing)
            existing.signature, existing.options = signature.to_dict(), options
            existing.details = details
            return f"Function {qn.name} successfully created."
        s.add(
            m.Function(
                schema_id=sch.id,
                name=qn.name,
                kind=KIND_EXTERNAL,
                service_id=None,
                method="",
                signature=signature.to_dict(),
                options=options,
                details=details,
                owner_role=security.owner_role_for_create(ctx),
            )
        )
    return f"Function {qn.name} successfully created."


@dataclass(frozen=True)
class ExternalTarget:
    """Where one external function of a query sends its batches (the key only in memory)."""

    function: str
    url: str
    integration: str
    returns: str
    key: str | None


def bind(
    s: Session, account: Managers, ctx: RequestContext, fn: m.Function, label: str
) -> ExternalTarget:
    """A query's call of external function ``fn``: USAGE on it, its integration still enabled
    and still allowing its URL; nothing is sent yet."""
    account.security.require(s, ctx, "USAGE", fn)
    details = fn.details or {}
    url = str(details.get("url") or "")
    integ = _usable_integration(s, account, None, str(details.get("api_integration")), label)
    _check_allowed(integ, url, label)
    key = (
        sealed.unseal(account.settings.home, integ.secret, what=f"API integration {integ.name}")
        if integ.secret
        else None
    )
    return ExternalTarget(
        function=label,
        url=url,
        integration=integ.name,
        returns=str(details.get("returns") or ""),
        key=key,
    )


def function_details(fn: m.Function) -> dict[str, Any]:
    """SHOW/DESCRIBE FUNCTIONS columns of an external function (never its integration's key)."""
    details = fn.details or {}
    return {
        "api_integration": details.get("api_integration"),
        "url": details.get("url"),
        "comment": details.get("comment"),
    }


# -- calling ---------------------------------------------------------------------------------------

_ARROW = {
    "DOUBLE": pa.float64(),
    "INT64": pa.int64(),
    "STRING": pa.string(),
    "BOOL": pa.bool_(),
    "TIMESTAMP_NTZ": pa.timestamp("us"),
}


class ExternalCaller:
    """Sends external functions' batches over HTTP (one connection pool per SQL engine)."""

    def __init__(self) -> None:
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()

    @property
    def http(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                self._http = httpx.Client(
                    limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
                    follow_redirects=False,  # a redirect could leave the allowed prefixes
                )
            return self._http

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    def call(
        self, target: ExternalTarget, table: pa.Table, *, timeout_s: float, retries: int | None
    ) -> pa.Table:
        """One batch: ``table``'s rows out, a one-column table (``RESULT``) of answers back."""
        columns = [c.to_pylist() for c in table.columns]
        n = table.num_rows
        body = orjson.dumps(
            {"data": [[i, *values] for i, values in enumerate(zip(*columns, strict=True))]}
            if columns
            else {"data": [[i] for i in range(n)]},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        headers = {"content-type": "application/json", "accept": "application/json"}
        if target.key:
            headers["authorization"] = f"Bearer {target.key}"
        payload = self._post(target, body, headers, timeout_s, 3 if retries is None else retries)
        return pa.table({RESULT: self._results(target, payload, n)})

    def _post(
        self,
        target: ExternalTarget,
        body: bytes,
        headers: dict[str, str],
        timeout_s: float,
        retries: int,
    ) -> Any:
        deadline = time.monotonic() + timeout_s
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            failure: NeveError
            pause = min(2.0, 0.1 * 2**attempt)
            try:
                resp = self.http.post(
                    target.url, content=body, headers=headers, timeout=max(0.1, remaining)
                )
            except httpx.TimeoutException:
                failure = ServiceUnavailableError(
                    f"external function {target.function}: {target.url} did not answer within "
                    f"{timeout_s:g} s (BATCH_TIMEOUT_SECS)",
                    code="REMOTE_TIMEOUT",
                )
            except httpx.TransportError as exc:
                failure = ServiceUnavailableError(
                    f"external function {target.function}: cannot connect to {target.url} "
                    f"({type(exc).__name__}: {exc}); is the remote installation running and the "
                    "URL right?",
                    code="REMOTE_UNREACHABLE",
                )
            else:
                if resp.status_code == 200:
                    try:
                        return orjson.loads(resp.content)
                    except orjson.JSONDecodeError:
                        raise ModelExecutionError(
                            f"external function {target.function}: {target.url} answered HTTP "
                            f"200 with a body that is not JSON: {resp.text[:200]!r}"
                        ) from None
                failure = self._refusal(target, resp)
                if resp.status_code not in _RETRY_STATUS:
                    raise failure
                after = resp.headers.get("retry-after", "")
                if after.replace(".", "", 1).isdigit():
                    pause = min(5.0, float(after))
            attempt += 1
            if attempt > retries or time.monotonic() + pause >= deadline:
                raise failure
            time.sleep(pause)

    @staticmethod
    def _refusal(target: ExternalTarget, resp: httpx.Response) -> NeveError:
        """The error a non-200 answer means, naming the function, the URL and the remote's own
        message (a neve ingress answers ``{"code", "message"}``)."""
        try:
            answer = orjson.loads(resp.content)
            message = str(answer.get("message") or answer) if isinstance(answer, dict) else ""
        except orjson.JSONDecodeError:
            message = ""
        message = (message or resp.text or resp.reason_phrase)[:500]
        service = remote_service(target.url)
        where = f"{target.url}" + (f" (remote service {service})" if service else "")
        status = resp.status_code
        if status in (401, 403):
            return PermissionDeniedError(
                f"external function {target.function}: the remote {where} refused the key of "
                f"API integration {target.integration} (HTTP {status}: {message}); ask the "
                "remote installation for a valid token and set it with ALTER API INTEGRATION "
                f"{target.integration} SET API_KEY = '...'",
                code="REMOTE_REFUSED_KEY",
            )
        text = (
            f"external function {target.function}: the remote {where} answered HTTP {status}: "
            f"{message}"
        )
        if status in _RETRY_STATUS:
            return ServiceUnavailableError(text, code="REMOTE_UNAVAILABLE")
        if status >= 500:
            return ModelExecutionError(text, code="REMOTE_ERROR")
        return InvalidArgumentError(text, code="REMOTE_REJECTED")

    @staticmethod
    def _results(target: ExternalTarget, payload: Any, n: int) -> pa.Array:
        """The answers in row order, checked: one per row sent, matched by row index."""
        label = f"external function {target.function}: {target.url}"
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise ModelExecutionError(
                f"{label} answered without a 'data' list (the external-function format is "
                '{"data": [[row_index, value], ...]})'
            )
        if len(data) != n:
            raise ModelExecutionError(f"{label} answered {len(data)} rows for a batch of {n}")
        values: list[Any] = [None] * n
        seen = [False] * n
        for row in data:
            if (
                not isinstance(row, list)
                or len(row) != 2
                or not isinstance(row[0], int)
                or isinstance(row[0], bool)
                or not 0 <= row[0] < n
                or seen[row[0]]
            ):
                raise ModelExecutionError(
                    f"{label} answered a row that is not [row_index, value] for a distinct row "
                    f"index from 0 to {n - 1}: {str(row)[:200]}"
                )
            seen[row[0]] = True
            values[row[0]] = row[1]
        if target.returns in _JSON_RETURNS:
            return pa.array(
                [None if v is None else orjson.dumps(v).decode() for v in values], pa.string()
            )
        for i, v in enumerate(values):
            if isinstance(v, dict):  # a neve endpoint answers {"<output>": value}
                if len(v) != 1:
                    raise ModelExecutionError(
                        f"{label} answered an object of {len(v)} values ({', '.join(map(str, v))})"
                        f" for a {target.returns} result; declare RETURNS OBJECT"
                    )
                values[i] = next(iter(v.values()))
        typ = _ARROW[_SCALAR_TYPES.get(target.returns, "STRING")]
        try:
            if pa.types.is_timestamp(typ):
                return pa.array(values, pa.string()).cast(typ)
            return pa.array(values, typ)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            sample = next((v for v in values if v is not None), None)
            raise ModelExecutionError(
                f"{label} answered {str(sample)[:100]!r}, which is not a {target.returns}"
            ) from None
