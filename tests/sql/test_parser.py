"""The management-statement parser: every statement's parse result, and syntax errors."""

from __future__ import annotations

import pytest

from neve.errors import InvalidArgumentError, SqlSyntaxError
from neve.sql.lexer import rewrite_bang_calls, split_statements
from neve.sql.parser import parse_management


def p(text: str):
    st = parse_management(text)
    assert st is not None, text
    return st


def test_compute_pool_statements() -> None:
    st = p(
        "CREATE COMPUTE POOL IF NOT EXISTS cpu_pool MIN_NODES = 1 MAX_NODES=2 "
        "INSTANCE_FAMILY='CPU_X64_S' AUTO_RESUME = TRUE AUTO_SUSPEND_SECS = 600 COMMENT = 'c'"
    )
    assert (st.kind, st.name, st.if_not_exists) == ("CREATE COMPUTE POOL", "cpu_pool", True)
    assert st.props == {
        "MIN_NODES": 1,
        "MAX_NODES": 2,
        "INSTANCE_FAMILY": "CPU_X64_S",
        "AUTO_RESUME": True,
        "AUTO_SUSPEND_SECS": 600,
        "COMMENT": "c",
    }
    assert p("create compute pool p instance_family = CPU_X64_M").props == {
        "INSTANCE_FAMILY": "CPU_X64_M"
    }
    st = p("DROP COMPUTE POOL IF EXISTS p")
    assert (st.kind, st.name, st.if_exists) == ("DROP COMPUTE POOL", "p", True)
    assert p("ALTER COMPUTE POOL p SUSPEND").args == {"action": "SUSPEND"}
    assert p("ALTER COMPUTE POOL p RESUME").args == {"action": "RESUME"}
    assert p("ALTER COMPUTE POOL p STOP ALL").args == {"action": "STOP ALL"}
    st = p("ALTER COMPUTE POOL p SET MAX_NODES = 3, MIN_NODES = 2")
    assert st.props == {"MAX_NODES": 3, "MIN_NODES": 2}
    assert p("SHOW COMPUTE POOLS LIKE 'cpu%'").like == "cpu%"
    assert p("DESC COMPUTE POOL p").kind == "DESCRIBE COMPUTE POOL"
    assert p("DESCRIBE COMPUTE POOL p").name == "p"


def test_repository_rule_integration_statements() -> None:
    st = p("CREATE IMAGE REPOSITORY IF NOT EXISTS ml.registry.images")
    assert (st.kind, st.name, st.if_not_exists) == (
        "CREATE IMAGE REPOSITORY",
        "ml.registry.images",
        True,
    )
    assert p("DROP IMAGE REPOSITORY r").kind == "DROP IMAGE REPOSITORY"
    st = p("SHOW IMAGES IN IMAGE REPOSITORY ml.registry.images")
    assert (st.kind, st.name) == ("SHOW IMAGES", "ml.registry.images")
    st = p("SHOW IMAGE REPOSITORIES IN SCHEMA ml.registry")
    assert st.args == {"scope": "SCHEMA", "scope_name": "ml.registry"}
    st = p(
        "CREATE NETWORK RULE pypi_rule MODE = 'EGRESS' TYPE = 'HOST_PORT' "
        "VALUE_LIST = ('pypi.org:443', 'files.pythonhosted.org:443')"
    )
    assert st.props == {
        "MODE": "EGRESS",
        "TYPE": "HOST_PORT",
        "VALUE_LIST": ["pypi.org:443", "files.pythonhosted.org:443"],
    }
    assert p("DROP NETWORK RULE IF EXISTS pypi_rule").if_exists
    st = p(
        "CREATE EXTERNAL ACCESS INTEGRATION pypi ALLOWED_NETWORK_RULES = (pypi_rule, "
        'ml.public."Other") ENABLED = true'
    )
    assert st.kind == "CREATE INTEGRATION"
    assert st.props == {
        "ALLOWED_NETWORK_RULES": ["pypi_rule", 'ml.public."Other"'],
        "ENABLED": True,
    }
    assert p("DROP EXTERNAL ACCESS INTEGRATION pypi").kind == "DROP INTEGRATION"
    assert p("DROP INTEGRATION IF EXISTS pypi").kind == "DROP INTEGRATION"
    assert p("SHOW EXTERNAL ACCESS INTEGRATIONS").kind == "SHOW INTEGRATIONS"
    assert p("SHOW NETWORK RULES").kind == "SHOW NETWORK RULES"


def test_service_statements() -> None:
    st = p("SHOW SERVICES LIKE 'fore%' IN COMPUTE POOL cpu_pool")
    assert st.like == "fore%"
    assert st.args == {"scope": "COMPUTE POOL", "scope_name": "cpu_pool"}
    assert p("SHOW SERVICES IN SCHEMA ml.registry").args == {
        "scope": "SCHEMA",
        "scope_name": "ml.registry",
    }
    assert p("SHOW SERVICES").args == {}
    assert p("DESCRIBE SERVICE ml.registry.forecast_svc").name == "ml.registry.forecast_svc"
    assert p("ALTER SERVICE s SUSPEND").args == {"action": "SUSPEND"}
    assert p("ALTER SERVICE IF EXISTS s RESUME").if_exists
    st = p("ALTER SERVICE s SET MIN_INSTANCES = 1 MAX_INSTANCES = 3 COMMENT = 'x'")
    assert st.props == {"MIN_INSTANCES": 1, "MAX_INSTANCES": 3, "COMMENT": "x"}
    assert p("DROP SERVICE IF EXISTS s").kind == "DROP SERVICE"
    st = p("SHOW ENDPOINTS IN SERVICE s")
    assert (st.kind, st.name) == ("SHOW ENDPOINTS", "s")
    assert p("SHOW SERVICE CONTAINERS IN SERVICE s").kind == "SHOW SERVICE CONTAINERS"
    st = p("CALL SYSTEM$GET_SERVICE_LOGS('forecast_svc', 0, 'model-inference', 100)")
    assert st.kind == "CALL SYSTEM$GET_SERVICE_LOGS"
    assert st.args == {"args": ["forecast_svc", 0, "model-inference", 100]}
    st = p("call system$get_service_status('svc')")
    assert (st.kind, st.args) == ("CALL SYSTEM$GET_SERVICE_STATUS", {"args": ["svc"]})


def test_alter_service_refuses_spec_changes() -> None:
    with pytest.raises(InvalidArgumentError, match="immutable.*create a new service"):
        parse_management("ALTER SERVICE s SET NUM_WORKERS = 4")
    with pytest.raises(InvalidArgumentError, match="GRANT OWNERSHIP ON SERVICE <name> TO ROLE"):
        parse_management("ALTER SERVICE s SET OWNER = analyst")


def test_model_statements() -> None:
    st = p("SHOW MODELS LIKE 'f%' IN DATABASE ml")
    assert (st.like, st.args) == ("f%", {"scope": "DATABASE", "scope_name": "ml"})
    st = p("SHOW VERSIONS IN MODEL ml.registry.forecast")
    assert (st.kind, st.name) == ("SHOW VERSIONS", "ml.registry.forecast")
    assert p("DROP MODEL IF EXISTS forecast").if_exists
    st = p("ALTER MODEL forecast DROP VERSION v1")
    assert st.args == {"action": "DROP VERSION", "version": "v1"}
    assert p("ALTER MODEL m SET DEFAULT_VERSION = v2").props == {"DEFAULT_VERSION": "v2"}


def test_database_schema_use_statements() -> None:
    assert p("CREATE DATABASE IF NOT EXISTS ml").kind == "CREATE DATABASE"
    assert p("CREATE SCHEMA ml.registry COMMENT = 'r'").props == {"COMMENT": "r"}
    assert p("DROP DATABASE ml").kind == "DROP DATABASE"
    assert p("DROP SCHEMA IF EXISTS ml.registry").if_exists
    assert p("SHOW SCHEMAS IN DATABASE ml").args == {"scope": "DATABASE", "scope_name": "ml"}
    assert (p("USE DATABASE ml").kind, p("USE ml").kind) == ("USE DATABASE", "USE DATABASE")
    assert (p("USE SCHEMA ml.r").kind, p("USE ml.r").name) == ("USE SCHEMA", "ml.r")
    assert p("USE ROLE analyst").name == "analyst"
    assert p('USE "my.db"').kind == "USE DATABASE"  # the dot is inside the quotes


def test_user_role_grant_statements() -> None:
    st = p("CREATE USER IF NOT EXISTS alice PASSWORD = 'pw' DEFAULT_ROLE = analyst")
    assert st.props == {"PASSWORD": "pw", "DEFAULT_ROLE": "analyst"}
    assert p("CREATE ROLE analyst").kind == "CREATE ROLE"
    st = p("GRANT USAGE, MONITOR ON COMPUTE POOL p TO ROLE r WITH GRANT OPTION")
    assert st.args == {
        "privileges": ["USAGE", "MONITOR"],
        "object_type": "COMPUTE POOL",
        "to_role": "r",
        "with_grant_option": True,
    }
    assert st.name == "p"
    st = p("GRANT CREATE SERVICE ON SCHEMA ml.registry TO ROLE r")
    assert st.args["privileges"] == ["CREATE SERVICE"] and st.name == "ml.registry"
    st = p("GRANT BIND SERVICE ENDPOINT ON ACCOUNT TO ROLE r")
    assert (st.args["object_type"], st.name) == ("ACCOUNT", None)
    st = p("GRANT SERVICE READ ON IMAGE REPOSITORY ml.r.images TO ROLE r")
    assert st.args["privileges"] == ["SERVICE READ"]
    st = p("GRANT OWNERSHIP ON SERVICE s TO ROLE r REVOKE CURRENT GRANTS")
    assert st.kind == "GRANT OWNERSHIP" and st.args["copy_current_grants"] is False
    assert p("GRANT ROLE analyst TO USER alice").args == {"to_user": "alice"}
    assert p("GRANT ROLE analyst TO ROLE sysadmin").args == {"to_role": "sysadmin"}
    st = p("REVOKE GRANT OPTION FOR USAGE ON SERVICE s FROM ROLE r")
    assert st.args["grant_option_only"] is True and st.args["from_role"] == "r"
    assert p("REVOKE ROLE analyst FROM USER alice").args == {"from_user": "alice"}
    assert p("SHOW GRANTS TO ROLE r").args == {"to_role": "r"}
    assert p("SHOW GRANTS OF ROLE r").args == {"of_role": "r"}
    assert p("SHOW GRANTS TO USER u").args == {"to_user": "u"}
    assert p("SHOW GRANTS ON EXTERNAL ACCESS INTEGRATION i").args == {"on": ("INTEGRATION", "i")}
    assert p("SHOW GRANTS ON ACCOUNT").args == {"on": ("ACCOUNT", None)}


def test_function_and_table_statements() -> None:
    st = p(
        "ALTER FUNCTION ml.r.svc_predict SET MAX_BATCH_ROWS = 100 ON_BATCH_FAILURE = RETURN_NULL"
    )
    assert st.props == {"MAX_BATCH_ROWS": 100, "ON_BATCH_FAILURE": "RETURN_NULL"}
    st = p("ALTER FUNCTION svc_predict(DOUBLE, DOUBLE) UNSET MAX_BATCH_ROWS, BATCH_TIMEOUT_SECS")
    assert st.args == {"action": "UNSET", "unset": ["MAX_BATCH_ROWS", "BATCH_TIMEOUT_SECS"]}
    assert p("SHOW USER FUNCTIONS IN SCHEMA ml.r").kind == "SHOW FUNCTIONS"
    assert p("SHOW TABLES IN ACCOUNT").args == {"scope": "ACCOUNT"}


@pytest.mark.parametrize(
    "text",
    [
        "SELECT 1",
        "CREATE TABLE t (a INT)",
        "DROP TABLE t",
        "ALTER TABLE t ADD COLUMN b INT",
        "DESCRIBE t",
        "DESCRIBE TABLE t",
        "CALL pragma_version()",
        "INSERT INTO t VALUES (1)",
    ],
)
def test_warehouse_statements_are_not_management(text: str) -> None:
    assert parse_management(text) is None


def test_syntax_errors_report_line_position_and_token() -> None:
    script = "SHOW SERVICES;\nCREATE COMPUTE POOL p\n  MIN_NODES = 1 MAX_NODE = 2"
    pieces = split_statements(script)
    with pytest.raises(SqlSyntaxError) as info:
        parse_management(pieces[1].text, offset=pieces[1].offset, script=script)
    err = info.value
    assert (err.line, err.col) == (3, 17)
    assert "MAX_NODE" in err.message and "MAX_NODES" in err.message
    with pytest.raises(SqlSyntaxError) as info:
        parse_management("CREATE COMPUTE POOL p MIN_NODES = many")
    assert (info.value.line, info.value.col) == (1, 35)
    assert "integer for MIN_NODES" in info.value.message and "'many'" in info.value.message
    with pytest.raises(SqlSyntaxError, match="expected SUSPEND, RESUME or SET"):
        parse_management("ALTER SERVICE s")
    with pytest.raises(SqlSyntaxError, match="takes 3 to 4 arguments, got 1"):
        parse_management("CALL SYSTEM$GET_SERVICE_LOGS('s')")
    with pytest.raises(SqlSyntaxError, match="unknown SHOW statement"):
        parse_management("SHOW WIDGETS")
    with pytest.raises(SqlSyntaxError, match="unknown system function"):
        parse_management("CALL SYSTEM$REBOOT()")


def test_split_statements_respects_quotes_and_comments() -> None:
    script = "SELECT ';' AS a; -- a comment; here\nSELECT \"x;y\" FROM t ; SELECT 7 // 2"
    pieces = split_statements(script)
    assert [x.text for x in pieces] == [
        "SELECT ';' AS a",
        'SELECT "x;y" FROM t',
        "SELECT 7 // 2",
    ]
    assert pieces[1].line == 2


def test_bang_calls_are_rewritten_to_placeholders() -> None:
    text, calls = rewrite_bang_calls(
        "SELECT ml.r.svc!predict(a, b)['output_feature_0'], MODEL(ml.r.m, v1)!PREDICT(a) "
        "FROM t WHERE a != 1"
    )
    assert text == (
        "SELECT __NEVE_BANG_0(a, b)['output_feature_0'], __NEVE_BANG_1(a) FROM t WHERE a != 1"
    )
    first, second = calls.values()
    assert (first.kind, first.target, first.method) == ("SERVICE", "ml.r.svc", "predict")
    assert (second.kind, second.target, second.version, second.method) == (
        "MODEL",
        "ml.r.m",
        "v1",
        "PREDICT",
    )
    with pytest.raises(SqlSyntaxError, match="MODEL"):
        rewrite_bang_calls("SELECT (a)!predict(b) FROM t")


def test_create_service_from_specification() -> None:
    yaml_text = "\nspec:\n  containers:\n  - name: 'x'   # it's; here\n    image: a/b:c\n"
    script = (
        f"CREATE SERVICE IF NOT EXISTS ml.reg.s IN COMPUTE POOL p FROM SPECIFICATION "
        f"$${yaml_text}$$ MIN_INSTANCES = 2 MAX_INSTANCES = 3 AUTO_RESUME = FALSE "
        "AUTO_SUSPEND_SECS = 60 EXTERNAL_ACCESS_INTEGRATIONS = (pypi) COMMENT = 'c'; SHOW SERVICES"
    )
    # the ; and quotes inside $$ ... $$ belong to the specification
    first, second = split_statements(script)
    assert second.text.strip() == "SHOW SERVICES"
    st = p(first.text)
    assert (st.kind, st.name, st.if_not_exists) == ("CREATE SERVICE", "ml.reg.s", True)
    assert st.args == {"compute_pool": "p", "specification": yaml_text}
    assert st.props == {
        "MIN_INSTANCES": 2,
        "MAX_INSTANCES": 3,
        "AUTO_RESUME": False,
        "AUTO_SUSPEND_SECS": 60,
        "EXTERNAL_ACCESS_INTEGRATIONS": ["pypi"],
        "COMMENT": "c",
    }
    # a quoted string works too
    assert (
        p("CREATE SERVICE s IN COMPUTE POOL p FROM SPECIFICATION 'spec: {}'").args["specification"]
        == "spec: {}"
    )
    with pytest.raises(SqlSyntaxError, match="expected SPECIFICATION"):
        p("CREATE SERVICE s IN COMPUTE POOL p FROM SPECIFICATION_FILE 'x.yaml'")
    with pytest.raises(SqlSyntaxError, match="unknown property REPLICAS"):
        p("CREATE SERVICE s IN COMPUTE POOL p FROM SPECIFICATION $$ x $$ REPLICAS = 2")
    with pytest.raises(SqlSyntaxError, match="expected IN COMPUTE POOL"):
        p("CREATE SERVICE s FROM SPECIFICATION $$ x $$")


def test_create_and_drop_function_on_a_service_endpoint() -> None:
    st = p(
        "CREATE OR REPLACE FUNCTION ml.reg.score(a NUMBER(38, 0), b VARCHAR(10)) RETURNS FLOAT "
        "SERVICE = ml.reg.copy ENDPOINT = inference MAX_BATCH_ROWS = 100 AS '/predict'"
    )
    assert (st.kind, st.name, st.or_replace) == ("CREATE FUNCTION", "ml.reg.score", True)
    assert st.args == {
        "arguments": [("a", "NUMBER"), ("b", "VARCHAR")],
        "returns": "FLOAT",
        "path": "/predict",
    }
    assert st.props == {"SERVICE": "ml.reg.copy", "ENDPOINT": "inference", "MAX_BATCH_ROWS": 100}
    # without SERVICE = ... it is not a management statement
    assert parse_management("CREATE FUNCTION f(x) AS x + 1") is None
    with pytest.raises(SqlSyntaxError, match="needs ENDPOINT"):
        p("CREATE FUNCTION f(a NUMBER) RETURNS FLOAT SERVICE = s AS '/predict'")
    with pytest.raises(SqlSyntaxError, match="expected RETURNS"):
        p("CREATE FUNCTION f(a NUMBER) SERVICE = s ENDPOINT = e AS '/predict'")
    st = p("DROP FUNCTION IF EXISTS ml.reg.score(NUMBER, VARCHAR)")
    assert (st.kind, st.name, st.if_exists) == ("DROP FUNCTION", "ml.reg.score", True)
