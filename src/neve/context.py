"""Who is asking, and where: passed as the first argument to every manager operation."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class RequestContext:
    user: str
    role: str
    database: str | None = None
    schema: str | None = None
    request_id: str | None = None
    #: Warehouse settings the user SET earlier in the request (name, value): see neve.sql.limits
    settings: tuple[tuple[str, str], ...] = ()
    #: A token scoped to services authenticated this call: the ids of the only services whose
    #: ingress endpoints it may reach (None: an unscoped credential). Only the ingress accepts
    #: such a token; every other entry point refuses it.
    service_scope: tuple[int, ...] | None = None

    def with_(self, **changes) -> RequestContext:
        return replace(self, **changes)


ADMIN_USER = "ADMIN"
ACCOUNTADMIN = "ACCOUNTADMIN"
SYSADMIN = "SYSADMIN"
PUBLIC = "PUBLIC"


def admin_context(database: str | None = None, schema: str | None = None) -> RequestContext:
    return RequestContext(user=ADMIN_USER, role=ACCOUNTADMIN, database=database, schema=schema)
