"""Each object kind is declared once (``neve.kinds``); every surface reads that declaration.

These checks fail when a field is added to one surface only: the SQL parser's property
tables, the REST routes' body fields, the client's keywords, the managers' keywords and the
CLI's defaults must all agree with the kind.
"""

from __future__ import annotations

import inspect

import pytest
import typer

from neve import kinds
from neve.cli import pools as pools_cli
from neve.client.service_specs import create_service_statement
from neve.client.session import Session
from neve.compute.manager import ComputeManager
from neve.control.routes import compute as compute_routes
from neve.control.routes import services as services_routes
from neve.environments.egress import EgressObjects
from neve.errors import InvalidArgumentError, SqlSyntaxError
from neve.security.directory import Directory
from neve.services.creation import ServiceCreation
from neve.sql.parser import parse_management


def _keywords(fn) -> dict[str, object]:
    return {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if name not in ("self", "ctx", "name")
    }


SAMPLES = {
    kinds.INT: 3,
    kinds.NUM: 2.5,
    kinds.BOOL: True,
    kinds.STR: "it's a value",
    kinds.WORD: "CPU_X64_S",
    kinds.NAMES: ["db.sch.one", "two"],
    kinds.STRS: ["a.example.com", "b.example.com:443"],
}
STATEMENTS = {
    ("create", "COMPUTE POOL"): "CREATE COMPUTE POOL p {}",
    ("alter", "COMPUTE POOL"): "ALTER COMPUTE POOL p SET {}",
    ("create", "NETWORK RULE"): "CREATE NETWORK RULE r {}",
    ("create", "EXTERNAL ACCESS INTEGRATION"): "CREATE EXTERNAL ACCESS INTEGRATION i {}",
    ("create", "API INTEGRATION"): "CREATE API INTEGRATION i {}",
    ("alter", "API INTEGRATION"): "ALTER API INTEGRATION i SET {}",
    ("create", "USER"): "CREATE USER u {}",
    ("alter", "USER"): "ALTER USER u SET {}",
    ("alter", "MODEL"): "ALTER MODEL m SET {}",
    ("alter", "SERVICE"): "ALTER SERVICE s SET {}",
    ("create", "SERVICE FUNCTION"): "CREATE FUNCTION f(x FLOAT) RETURNS FLOAT {} AS '/predict'",
    ("create", "EXTERNAL FUNCTION"): "CREATE EXTERNAL FUNCTION f(x FLOAT) RETURNS FLOAT {} AS 'u'",
}


def _sample(field: kinds.Field):
    value = SAMPLES[field.type]
    if field.type == kinds.NAMES:
        return [v.upper() for v in value]  # unquoted names come back upper-cased
    return value


@pytest.mark.parametrize(("stage", "kind_name"), sorted(STATEMENTS))
def test_what_the_client_renders_the_parser_reads_back(stage, kind_name) -> None:
    kind = next(k for k in kinds.ALL if k.name == kind_name)
    values = {f.name: _sample(f) for f in kind.stage_fields(stage)}
    text = STATEMENTS[(stage, kind_name)].format(kind.render(values, stage))
    statement = parse_management(text)
    assert statement is not None
    expected = {f.sql: values[f.name] for f in kind.stage_fields(stage)}
    assert statement.props == expected


def test_the_parser_names_the_declared_properties_of_a_misspelt_one() -> None:
    with pytest.raises(SqlSyntaxError) as err:
        parse_management("CREATE COMPUTE POOL p MIN_NODE = 1")
    valid = ", ".join(sorted(kinds.COMPUTE_POOL.sql_props("create")))
    assert f"unknown property MIN_NODE for CREATE COMPUTE POOL; valid: {valid}" in str(err.value)


def test_rest_bodies_take_the_declared_fields() -> None:
    pool = kinds.COMPUTE_POOL
    assert compute_routes.CREATE_FIELDS - {"name", "if_not_exists"} == pool.body_fields("create")
    assert compute_routes.ALTER_FIELDS - {"suspend", "resume", "stop_all", "if_exists"} == (
        pool.body_fields("alter")
    )
    assert services_routes.CREATE_FIELDS - {"block"} == kinds.MODEL_SERVICE.body_fields("create")
    assert services_routes.ALTER_FIELDS - {"suspend", "resume"} == kinds.SERVICE.body_fields(
        "alter"
    )


@pytest.mark.parametrize(
    ("fn", "kind", "stage", "unset"),
    [
        (Session.create_compute_pool, kinds.COMPUTE_POOL, "create", (None,)),
        (ComputeManager.create_pool, kinds.COMPUTE_POOL, "create", ()),
        (ComputeManager.alter_pool, kinds.COMPUTE_POOL, "alter", (None,)),
        (create_service_statement, kinds.SERVICE, "create", (None,)),
        (ServiceCreation.create_service_from_specification, kinds.SERVICE, "create", (None,)),
        (ServiceCreation.create_service, kinds.MODEL_SERVICE, "create", (None,)),
        (EgressObjects.create_network_rule, kinds.NETWORK_RULE, "create", (None,)),
        (
            EgressObjects.create_external_access_integration,
            kinds.EXTERNAL_ACCESS_INTEGRATION,
            "create",
            (None,),
        ),
        (Directory.create_user, kinds.USER, "create", ()),
    ],
    ids=lambda v: getattr(v, "__qualname__", None) or getattr(v, "name", None) or str(v),
)
def test_python_keywords_and_defaults_follow_the_declaration(fn, kind, stage, unset) -> None:
    """Every declared field is a keyword; its default is the declared one (or 'not set')."""
    keywords = _keywords(fn)
    for field in kind.stage_fields(stage):
        assert field.name in keywords, f"{fn.__qualname__} lacks {field.name}"
        default = keywords[field.name]
        if default is inspect.Parameter.empty or default in unset:
            continue
        declared = field.default
        if isinstance(declared, tuple) and isinstance(default, tuple | list | type(None)):
            assert not default, f"{fn.__qualname__}: {field.name} = {default!r}"
            continue
        assert default == declared, f"{fn.__qualname__}: {field.name} = {default!r} != {declared!r}"


def test_cli_defaults_and_help_come_from_the_declaration() -> None:
    command = typer.main.get_command(pools_cli.app).commands["create"]  # type: ignore[attr-defined]
    options = {p.name: p for p in command.params}
    pool = kinds.COMPUTE_POOL
    for field, option in (
        ("min_nodes", "min_nodes"),
        ("max_nodes", "max_nodes"),
        ("auto_resume", "auto_resume"),
        ("auto_suspend_secs", "auto_suspend_secs"),
        ("initially_suspended", "suspended"),
        ("backend", "backend"),
    ):
        assert options[option].default == pool.default(field), field
        assert options[option].help.startswith(pool.field(field).sql), field


def test_wrong_python_types_are_refused_naming_the_object_and_field() -> None:
    with pytest.raises(InvalidArgumentError, match=r"compute pool p: max_nodes must be an integer"):
        kinds.COMPUTE_POOL.checked({"max_nodes": "2"}, "create", "compute pool p")
    with pytest.raises(InvalidArgumentError, match=r"unknown field\(s\) backend; valid: "):
        kinds.COMPUTE_POOL.checked({"backend": "ray"}, "alter", "compute pool p")
    with pytest.raises(InvalidArgumentError, match="external_access_integrations must be a list"):
        kinds.SERVICE.checked({"external_access_integrations": 3}, "create", "service s")
