"""API integrations: CREATE / ALTER / SHOW / DESCRIBE / DROP API INTEGRATION, and the checks an external function's URL passes against one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from neve.catalog import lookup
from neve.catalog import models as m
from neve.context import RequestContext
from neve.errors import (
    InvalidArgumentError,
    InvalidStateError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermissionDeniedError,
)
from neve.identifiers import ident
from neve.security import sealed
from neve.security.objects import ACCOUNT
from neve.sql import functions as fns

if TYPE_CHECKING:
    from neve.sql.managers import Managers

from neve.sql.external.urls import check_url, matches

#: ``functions.kind`` of an external function
KIND_EXTERNAL = fns.KIND_EXTERNAL


#: ``integrations.integration_type`` values
API = "API"


EXTERNAL_ACCESS = "EXTERNAL_ACCESS"


#: API_PROVIDER values: the remote speaks neve's ingress protocol (Bearer token, data format)
PROVIDERS = ("NEVE",)


#: What an API integration's secret is shown as
HIDDEN = "********"


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


def check_allowed(integ: m.ExternalAccessIntegration, url: str, label: str) -> None:
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


def usable_integration(
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
