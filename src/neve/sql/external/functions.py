"""External functions: CREATE EXTERNAL FUNCTION, binding one for a query, its DESCRIBE details."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from neve.catalog import lookup
from neve.catalog import models as m
from neve.context import RequestContext
from neve.errors import (
    InvalidArgumentError,
    ObjectExistsError,
)
from neve.identifiers import ident, qualify
from neve.models.signature import FeatureSpec, ModelSignature
from neve.security import sealed
from neve.sql import functions as fns

if TYPE_CHECKING:
    from neve.sql.managers import Managers

from neve.sql.external.integrations import KIND_EXTERNAL, check_allowed, usable_integration
from neve.sql.external.urls import check_url

#: Declared SQL type -> the signature type its values travel as.
SCALAR_TYPES = {
    **dict.fromkeys(("NUMBER", "DECIMAL", "NUMERIC"), "DOUBLE"),
    **dict.fromkeys(("FLOAT", "FLOAT4", "FLOAT8", "DOUBLE", "REAL"), "DOUBLE"),
    **dict.fromkeys(("INT", "INTEGER", "BIGINT", "SMALLINT", "TINYINT"), "INT64"),
    **dict.fromkeys(("VARCHAR", "STRING", "TEXT", "CHAR"), "STRING"),
    "BOOLEAN": "BOOL",
    **dict.fromkeys(("TIMESTAMP", "TIMESTAMP_NTZ"), "TIMESTAMP_NTZ"),
}


#: Return types answered as JSON text.
JSON_RETURNS = ("OBJECT", "VARIANT", "ARRAY")


#: The signature's one output: the column the caller's answer table carries.
RESULT = "RESULT"


def _travel_type(sql_type: str, what: str, *, returns: bool) -> str:
    kind = sql_type.upper()
    if kind in SCALAR_TYPES:
        return SCALAR_TYPES[kind]
    if returns and kind in JSON_RETURNS:
        return "STRING"
    allowed = ", ".join(sorted({*SCALAR_TYPES, *(JSON_RETURNS if returns else ())}))
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
        integ = usable_integration(s, account, ctx, integration, label)
        check_allowed(integ, url, label)
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
    integ = usable_integration(s, account, None, str(details.get("api_integration")), label)
    check_allowed(integ, url, label)
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
