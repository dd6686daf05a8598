"""Services from a specification, from Python and the CLI: one ``CREATE SERVICE ... FROM
SPECIFICATION`` statement, so every check is the SQL statement's.

    spec = yaml.safe_load(session.describe_service("forecast_svc")["spec"])
    spec["spec"]["containers"][0]["env"]["NUM_WORKERS"] = "4"
    session.create_service("forecast_copy", compute_pool="cpu_pool", spec=spec,
                           min_instances=2, max_instances=2)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from neve.errors import InvalidArgumentError
from neve.identifiers import ident, quote, split_name
from neve.kinds import SERVICE


def _name(raw: str, kind: str) -> str:
    parts = split_name(raw)
    if not 1 <= len(parts) <= 3:
        raise InvalidArgumentError(f"invalid {kind} name {raw!r}")
    return ".".join(quote(ident(p, kind=f"{kind} name")) for p in parts)


def specification_text(spec: str | dict[str, Any]) -> str:
    """YAML text of a specification given as text or as a mapping."""
    if isinstance(spec, dict):
        return yaml.safe_dump(spec, sort_keys=False, default_flow_style=False)
    if isinstance(spec, str) and spec.strip():
        return spec
    raise InvalidArgumentError("spec must be YAML text or a mapping (the specification)")


def create_service_statement(
    name: str,
    *,
    compute_pool: str,
    spec: str | dict[str, Any],
    min_instances: int | None = None,
    max_instances: int | None = None,
    auto_resume: bool = True,
    auto_suspend_secs: int | None = None,
    external_access_integrations: Iterable[str] = (),
    comment: str | None = None,
    if_not_exists: bool = False,
) -> str:
    """The ``CREATE SERVICE ... FROM SPECIFICATION $$ ... $$`` statement for these arguments."""
    text = specification_text(spec)
    if "$$" in text:
        raise InvalidArgumentError(
            f"service {name}: the specification contains '$$', which ends the SQL string"
        )
    statement = (
        f"CREATE SERVICE {'IF NOT EXISTS ' if if_not_exists else ''}{_name(name, 'service')} "
        f"IN COMPUTE POOL {_name(compute_pool, 'compute pool')} "
        f"FROM SPECIFICATION $$\n{text.rstrip()}\n$$"
    )
    if isinstance(external_access_integrations, str):
        external_access_integrations = [external_access_integrations]
    props = SERVICE.checked(
        {
            "min_instances": min_instances,
            "max_instances": max_instances,
            "auto_suspend_secs": auto_suspend_secs,
            "auto_resume": auto_resume,
            "external_access_integrations": list(external_access_integrations or ()) or None,
            "comment": comment,
        },
        "create",
        f"service {name}",
    )
    return f"{statement} {SERVICE.render(props)}"
