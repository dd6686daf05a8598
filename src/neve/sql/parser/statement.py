"""A parsed management statement and the property tables its parser checks values against."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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


# Property tables: name -> kind of value. "word" accepts a bare word or a string.
INT, BOOL, STR, WORD, NAMES, STRS = "int", "bool", "str", "word", "names", "strs"
NUM = "num"

POOL_CREATE_PROPS = {
    "MIN_NODES": INT,
    "MAX_NODES": INT,
    "INSTANCE_FAMILY": WORD,
    "AUTO_RESUME": BOOL,
    "AUTO_SUSPEND_SECS": INT,
    "INITIALLY_SUSPENDED": BOOL,
    "BACKEND": WORD,
    "ADDRESS": STR,
    "COMMENT": STR,
}
POOL_ALTER_PROPS = {
    "MIN_NODES": INT,
    "MAX_NODES": INT,
    "AUTO_RESUME": BOOL,
    "AUTO_SUSPEND_SECS": INT,
    "COMMENT": STR,
}
COMMENT_PROPS = {"COMMENT": STR}
NETWORK_RULE_PROPS = {"MODE": WORD, "TYPE": WORD, "VALUE_LIST": STRS, "COMMENT": STR}
INTEGRATION_PROPS = {"ALLOWED_NETWORK_RULES": NAMES, "ENABLED": BOOL, "COMMENT": STR}
SERVICE_ALTER_PROPS = {
    "MIN_INSTANCES": INT,
    "MAX_INSTANCES": INT,
    "COMMENT": STR,
    "AUTO_SUSPEND_SECS": INT,
}
SERVICE_CREATE_PROPS = {
    "MIN_INSTANCES": INT,
    "MAX_INSTANCES": INT,
    "AUTO_RESUME": BOOL,
    "AUTO_SUSPEND_SECS": INT,
    "EXTERNAL_ACCESS_INTEGRATIONS": NAMES,
    "COMMENT": STR,
}
USER_PROPS = {
    "PASSWORD": STR,
    "RSA_PUBLIC_KEY": STR,
    "DEFAULT_ROLE": WORD,
    "COMMENT": STR,
    "DISABLED": BOOL,
}
MODEL_ALTER_PROPS = {"DEFAULT_VERSION": WORD, "COMMENT": STR}
FUNCTION_PROPS = {
    "MAX_BATCH_ROWS": INT,
    "MAX_BATCH_RETRIES": INT,
    "ON_BATCH_FAILURE": WORD,
    "BATCH_TIMEOUT_SECS": NUM,
}

FUNCTION_CREATE_PROPS = {"SERVICE": WORD, "ENDPOINT": WORD, **FUNCTION_PROPS}
EXTERNAL_FUNCTION_PROPS = {"API_INTEGRATION": WORD, "COMMENT": STR, **FUNCTION_PROPS}
API_INTEGRATION_PROPS = {
    "API_PROVIDER": WORD,
    "API_ALLOWED_PREFIXES": STRS,
    "API_BLOCKED_PREFIXES": STRS,
    "API_KEY": STR,
    "ENABLED": BOOL,
    "COMMENT": STR,
}
API_INTEGRATION_ALTER_PROPS = {
    k: v for k, v in API_INTEGRATION_PROPS.items() if k != "API_PROVIDER"
}
#: ALTER USER [u] ADD PROGRAMMATIC ACCESS TOKEN t ...: SERVICES scopes it to those services
PAT_PROPS = {"ROLE_RESTRICTION": WORD, "DAYS_TO_EXPIRY": INT, "SERVICES": NAMES, "COMMENT": STR}

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
