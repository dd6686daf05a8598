"""A parsed management statement and the property tables its parser checks values against."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from neve import kinds


@dataclass
class Statement:
    kind: str  # e.g. "CREATE COMPUTE POOL", "SHOW SERVICES"
    name: str | None = None  # the object's name as written
    if_exists: bool = False
    if_not_exists: bool = False
    or_replace: bool = False
    props: dict[str, Any] = field(default_factory=dict)
    like: str | None = None
    args: dict[str, Any] = field(default_factory=dict)  # statement-specific parts


# Property tables (SQL name -> value type), read from the one declaration of each kind.
POOL_CREATE_PROPS = kinds.COMPUTE_POOL.sql_props("create")
POOL_ALTER_PROPS = kinds.COMPUTE_POOL.sql_props("alter")
COMMENT_PROPS = kinds.COMMENTED.sql_props("create")
NETWORK_RULE_PROPS = kinds.NETWORK_RULE.sql_props("create")
INTEGRATION_PROPS = kinds.EXTERNAL_ACCESS_INTEGRATION.sql_props("create")
SERVICE_CREATE_PROPS = kinds.SERVICE.sql_props("create")
SERVICE_ALTER_PROPS = kinds.SERVICE.sql_props("alter")
USER_PROPS = kinds.USER.sql_props("create")
MODEL_ALTER_PROPS = kinds.MODEL.sql_props("alter")
FUNCTION_PROPS = kinds.FUNCTION_OPTIONS.sql_props("create")
FUNCTION_CREATE_PROPS = kinds.SERVICE_FUNCTION.sql_props("create")
EXTERNAL_FUNCTION_PROPS = kinds.EXTERNAL_FUNCTION.sql_props("create")
API_INTEGRATION_PROPS = kinds.API_INTEGRATION.sql_props("create")
API_INTEGRATION_ALTER_PROPS = kinds.API_INTEGRATION.sql_props("alter")
PAT_PROPS = kinds.PROGRAMMATIC_ACCESS_TOKEN.sql_props("create")

#: Object types a GRANT/REVOKE/SHOW GRANTS ON may name (longest first when matching).
GRANT_OBJECT_TYPES = [
    ("EXTERNAL", "ACCESS", "INTEGRATION"),
    ("COMPUTE", "POOL"),
    ("IMAGE", "REPOSITORY"),
    ("NETWORK", "RULE"),
    ("INTEGRATION",),
    ("DATABASE",),
    ("SCHEMA",),
    ("MODEL",),
    ("SERVICE",),
    ("FUNCTION",),
    ("ROLE",),
    ("USER",),
]

SHOW_SCOPES = ("ACCOUNT", "DATABASE", "SCHEMA")
