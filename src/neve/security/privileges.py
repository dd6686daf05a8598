"""Which privileges exist on which kind of object, and which privilege implies which.

Names follow the reference platform. ``ALL`` in a GRANT expands to every privilege of the object
type (OWNERSHIP excepted); ownership is a column of the object, transferred with GRANT OWNERSHIP.
"""

from __future__ import annotations

from neve.errors import InvalidArgumentError

OWNERSHIP = "OWNERSHIP"
ALL = "ALL"

PRIVILEGES: dict[str, frozenset[str]] = {
    "ACCOUNT": frozenset(
        {
            "BIND SERVICE ENDPOINT",
            "CREATE COMPUTE POOL",
            "CREATE DATABASE",
            "CREATE INTEGRATION",
            "CREATE ROLE",
            "CREATE USER",
            "MANAGE GRANTS",
            "MONITOR",
        }
    ),
    "DATABASE": frozenset({"USAGE", "MONITOR", "CREATE SCHEMA"}),
    "SCHEMA": frozenset(
        {
            "USAGE",
            "MONITOR",
            "CREATE SERVICE",
            "CREATE MODEL",
            "CREATE IMAGE REPOSITORY",
            "CREATE NETWORK RULE",
            "CREATE FUNCTION",
            "CREATE TABLE",
        }
    ),
    "MODEL": frozenset({"USAGE"}),
    "COMPUTE POOL": frozenset({"USAGE", "OPERATE", "MONITOR", "MODIFY"}),
    "IMAGE REPOSITORY": frozenset({"READ", "WRITE", "SERVICE READ", "SERVICE WRITE"}),
    "NETWORK RULE": frozenset({"USAGE"}),
    "INTEGRATION": frozenset({"USAGE"}),
    "SERVICE": frozenset({"USAGE", "MONITOR", "OPERATE"}),
    "FUNCTION": frozenset({"USAGE"}),
    "ROLE": frozenset(),
    "USER": frozenset(),
}

# Holding the key privilege satisfies a check for each privilege in its value.
IMPLIES: dict[str, frozenset[str]] = {
    "OPERATE": frozenset({"MONITOR"}),
    "WRITE": frozenset({"READ"}),
    "SERVICE WRITE": frozenset({"SERVICE READ"}),
}

TYPE_ALIASES = {
    "EXTERNAL ACCESS INTEGRATION": "INTEGRATION",
    "POOL": "COMPUTE POOL",
    "REPOSITORY": "IMAGE REPOSITORY",
}


def normalize_type(object_type: str) -> str:
    text = " ".join(str(object_type).replace("_", " ").upper().split())
    text = TYPE_ALIASES.get(text, text)
    if text not in PRIVILEGES:
        raise InvalidArgumentError(
            f"unknown object type {object_type!r}; expected one of {', '.join(sorted(PRIVILEGES))}"
        )
    return text


def normalize_privilege(privilege: str) -> str:
    return " ".join(str(privilege).replace("_", " ").upper().split())


def privileges_for_grant(privilege: str, object_type: str) -> list[str]:
    """The stored privilege names a GRANT of ``privilege`` on ``object_type`` means."""
    priv = normalize_privilege(privilege)
    if priv in {ALL, "ALL PRIVILEGES"}:
        return sorted(PRIVILEGES[object_type])
    if priv not in PRIVILEGES[object_type]:
        valid = ", ".join(sorted(PRIVILEGES[object_type] | {OWNERSHIP, ALL})) or OWNERSHIP
        raise InvalidArgumentError(
            f"privilege {priv} does not apply to {object_type}; valid privileges: {valid}"
        )
    return [priv]


def satisfying(privilege: str) -> set[str]:
    """Stored privilege names any of which satisfies a check for ``privilege``."""
    return {privilege, ALL} | {p for p, implied in IMPLIES.items() if privilege in implied}
