"""The grammar of management statements: CREATE, DROP, ALTER, DESCRIBE, SHOW, USE, CALL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlglot.tokens import Token, TokenType

from neve.errors import InvalidArgumentError
from neve.sql.lexer import (
    is_quoted_identifier,
    is_string,
    is_word,
    line_col,
    word,
)
from neve.sql.parser.grants import grant_statement, revoke_statement
from neve.sql.parser.statement import (
    API_INTEGRATION_ALTER_PROPS,
    API_INTEGRATION_PROPS,
    COMMENT_PROPS,
    EXTERNAL_FUNCTION_PROPS,
    FUNCTION_CREATE_PROPS,
    FUNCTION_PROPS,
    INTEGRATION_PROPS,
    MODEL_ALTER_PROPS,
    NETWORK_RULE_PROPS,
    PAT_PROPS,
    POOL_ALTER_PROPS,
    POOL_CREATE_PROPS,
    SERVICE_ALTER_PROPS,
    SERVICE_CREATE_PROPS,
    USER_PROPS,
    Statement,
)
from neve.sql.parser.tokens import Parser

# -- statements ----------------------------------------------------------------------------------

_CREATE_OBJECTS = {
    ("COMPUTE", "POOL"),
    ("IMAGE", "REPOSITORY"),
    ("NETWORK", "RULE"),
    ("EXTERNAL", "ACCESS", "INTEGRATION"),
    ("API", "INTEGRATION"),
    ("DATABASE",),
    ("SCHEMA",),
    ("ROLE",),
    ("USER",),
    ("SERVICE",),
}
_DROP_OBJECTS = _CREATE_OBJECTS | {("INTEGRATION",), ("MODEL",)}
_ALTER_OBJECTS = {
    ("COMPUTE", "POOL"),
    ("SERVICE",),
    ("MODEL",),
    ("FUNCTION",),
    ("USER",),
    ("API", "INTEGRATION"),
}
_DESCRIBE_OBJECTS = {
    ("COMPUTE", "POOL"),
    ("SERVICE",),
    ("MODEL",),
    ("FUNCTION",),
    ("USER",),
    ("IMAGE", "REPOSITORY"),
    ("DATABASE",),
    ("SCHEMA",),
    ("API", "INTEGRATION"),
    ("INTEGRATION",),
}


def _object_after(p: Parser, start: int, objects: set[tuple[str, ...]]) -> tuple[str, ...] | None:
    for words in sorted(objects, key=len, reverse=True):
        if all(p.peek_word(start + i) == w for i, w in enumerate(words)):
            return words
    return None


def parse_management(text: str, *, offset: int = 0, script: str | None = None) -> Statement | None:
    """Parse one management statement; ``None`` when ``text`` is a warehouse statement."""
    p = Parser(text, offset=offset, script=script)
    if p.at_end():
        return None
    first = p.peek_word()
    handler = _DISPATCH.get(first)
    if handler is None:
        return None
    return handler(p)


def _create(p: Parser) -> Statement | None:
    i = 1
    or_replace = p.peek_word(1) == "OR" and p.peek_word(2) == "REPLACE"
    if or_replace:
        i = 3
    if p.peek_word(i) == "FUNCTION":
        return _create_function(p, i + 1, or_replace)
    if p.peek_word(i) == "SECURE" and p.peek_word(i + 1) == "EXTERNAL":
        raise p.error("SECURE external functions are not supported; leave SECURE out")
    if p.peek_word(i) == "EXTERNAL" and p.peek_word(i + 1) == "FUNCTION":
        return _create_external_function(p, i + 2, or_replace)
    obj = _object_after(p, i, _CREATE_OBJECTS)
    if obj is None:
        return None
    p.pos = i + len(obj)
    kind = "CREATE " + " ".join(obj)
    if kind == "CREATE EXTERNAL ACCESS INTEGRATION":
        kind = "CREATE INTEGRATION"
    st = Statement(kind=kind, or_replace=or_replace)
    st.if_not_exists = p.if_not_exists()
    st.name = p.name(f"a {' '.join(obj).lower()} name")
    if kind == "CREATE SERVICE":
        return _create_service(p, st)
    table = {
        "CREATE COMPUTE POOL": POOL_CREATE_PROPS,
        "CREATE IMAGE REPOSITORY": COMMENT_PROPS,
        "CREATE NETWORK RULE": NETWORK_RULE_PROPS,
        "CREATE INTEGRATION": INTEGRATION_PROPS,
        "CREATE API INTEGRATION": API_INTEGRATION_PROPS,
        "CREATE DATABASE": COMMENT_PROPS,
        "CREATE SCHEMA": COMMENT_PROPS,
        "CREATE ROLE": COMMENT_PROPS,
        "CREATE USER": USER_PROPS,
    }[kind]
    st.props = p.props(table, kind)
    p.end()
    return st


def _create_service(p: Parser, st: Statement) -> Statement:
    """``CREATE SERVICE [IF NOT EXISTS] s IN COMPUTE POOL p FROM SPECIFICATION $$ yaml $$
    [MIN_INSTANCES = n] ...``: the specification is a string ($$...$$ or quoted)."""
    if st.or_replace:
        raise p.error("CREATE OR REPLACE SERVICE is not supported; drop the service first")
    p.expect("IN", "COMPUTE", "POOL")
    st.args["compute_pool"] = p.name("a compute pool name")
    p.expect("FROM")
    if not p.accept("SPECIFICATION"):
        raise p.error(
            "expected SPECIFICATION after FROM (the specification inline, between $$ and $$)"
        )
    st.args["specification"] = p.string("a specification between $$ and $$")
    st.props = p.props(SERVICE_CREATE_PROPS, st.kind)
    p.end()
    return st


def _sql_type(p: Parser, what: str) -> str:
    """A type name such as ``NUMBER``, ``NUMBER(38, 0)`` or ``VARCHAR(100)`` (size dropped)."""
    tok = p.peek()
    if tok is None or not is_word(tok):
        raise p.error(f"expected {what}")
    p.advance()
    if p.accept_punct(TokenType.L_PAREN):
        while not p.accept_punct(TokenType.R_PAREN):
            p.advance()
    return tok.text.upper()


def _create_function(p: Parser, start: int, or_replace: bool) -> Statement | None:
    """``CREATE [OR REPLACE] FUNCTION f(a NUMBER, ...) RETURNS t SERVICE = s ENDPOINT = e
    [MAX_BATCH_ROWS = n ...] AS '/path'``: a function on a service's endpoint. Any other
    CREATE FUNCTION (no ``SERVICE =``) is not a management statement."""
    words = [(word(t), t.token_type) for t in p.tokens]
    if not any(
        w == "SERVICE" and i + 1 < len(words) and words[i + 1][1] == TokenType.EQ
        for i, (w, _) in enumerate(words)
    ):
        return None
    p.pos = start
    st = Statement(kind="CREATE FUNCTION", or_replace=or_replace)
    st.if_not_exists = p.if_not_exists()
    st.name = p.name("a function name")
    st.args["arguments"] = _argument_list(p)
    p.expect("RETURNS")
    st.args["returns"] = _sql_type(p, "a return type")
    st.props = p.props(FUNCTION_CREATE_PROPS, st.kind, stop=("AS",))
    for key in ("SERVICE", "ENDPOINT"):
        if key not in st.props:
            raise p.error(f"CREATE FUNCTION needs {key} = ... before AS")
    p.expect("AS")
    st.args["path"] = p.string("the endpoint path, e.g. '/predict'")
    p.end()
    return st


def _create_external_function(p: Parser, start: int, or_replace: bool) -> Statement:
    """``CREATE [OR REPLACE] EXTERNAL FUNCTION [IF NOT EXISTS] f(a NUMBER, ...) RETURNS t
    API_INTEGRATION = i [MAX_BATCH_ROWS = n ...] [COMMENT = '...'] AS '<url>'``: a function that
    sends its rows in batches to a URL speaking the external-function data format."""
    p.pos = start
    st = Statement(kind="CREATE EXTERNAL FUNCTION", or_replace=or_replace)
    st.if_not_exists = p.if_not_exists()
    st.name = p.name("a function name")
    st.args["arguments"] = _argument_list(p)
    p.expect("RETURNS")
    st.args["returns"] = _sql_type(p, "a return type")
    st.props = p.props(EXTERNAL_FUNCTION_PROPS, st.kind, stop=("AS",))
    if "API_INTEGRATION" not in st.props:
        raise p.error("CREATE EXTERNAL FUNCTION needs API_INTEGRATION = <integration> before AS")
    p.expect("AS")
    st.args["url"] = p.string("the URL the function calls, e.g. 'https://host/svc/name/predict'")
    p.end()
    return st


def _argument_list(p: Parser) -> list[tuple[str, str]]:
    """``(a NUMBER, b VARCHAR)``: the arguments' names and types."""
    p.expect_punct(TokenType.L_PAREN, "(")
    args: list[tuple[str, str]] = []
    if not p.accept_punct(TokenType.R_PAREN):
        while True:
            arg = p.name("an argument name")
            args.append((arg, _sql_type(p, f"a type for argument {arg}")))
            if p.accept_punct(TokenType.R_PAREN):
                break
            p.expect_punct(TokenType.COMMA, ",")
    return args


def _drop(p: Parser) -> Statement | None:
    if p.peek_word(1) == "FUNCTION":
        p.pos = 2
        st = Statement(kind="DROP FUNCTION")
        st.if_exists = p.if_exists()
        st.name = p.name("a function name")
        if p.accept_punct(TokenType.L_PAREN):  # argument types: accepted, not needed
            while not p.accept_punct(TokenType.R_PAREN):
                p.advance()
        p.end()
        return st
    obj = _object_after(p, 1, _DROP_OBJECTS)
    if obj is None:
        return None
    p.pos = 1 + len(obj)
    kind = "DROP " + " ".join(obj)
    if kind in ("DROP EXTERNAL ACCESS INTEGRATION",):
        kind = "DROP INTEGRATION"
    st = Statement(kind=kind)
    st.if_exists = p.if_exists()
    st.name = p.name(f"a {' '.join(obj).lower()} name")
    p.accept("CASCADE") or p.accept("RESTRICT")
    p.end()
    return st


def _alter_user_token(p: Parser) -> Statement | None:
    """``ALTER USER [IF EXISTS] [u] ADD {PROGRAMMATIC ACCESS TOKEN | PAT} t [ROLE_RESTRICTION =
    'r'] [DAYS_TO_EXPIRY = n] [SERVICES = (s, ...)] [COMMENT = '...']`` and ``... REMOVE
    {PROGRAMMATIC ACCESS TOKEN | PAT} t``; None for any other ALTER USER."""

    def token_words(ahead: int) -> int:
        """How many words ``PAT`` / ``PROGRAMMATIC ACCESS TOKEN`` take ``ahead`` of here."""
        if p.peek_word(ahead) == "PAT":
            return 1
        if [p.peek_word(ahead + k) for k in range(3)] == ["PROGRAMMATIC", "ACCESS", "TOKEN"]:
            return 3
        return 0

    p.pos = 2
    if_exists = p.if_exists()
    name = None
    if not (p.peek_word() in ("ADD", "REMOVE") and token_words(1)):
        tok = p.peek()
        if tok is None or not is_word(tok):
            return None
        name = p.name("a user name")
    action = p.peek_word()
    width = token_words(1) if action in ("ADD", "REMOVE") else 0
    if not width:
        return None
    p.pos += 1 + width
    st = Statement(kind=f"ALTER USER {action} PAT", name=name, if_exists=if_exists)
    st.args["token"] = p.name("a token name")
    if action == "ADD":
        st.props = p.props(PAT_PROPS, "ALTER USER ... ADD PROGRAMMATIC ACCESS TOKEN")
    p.end()
    return st


def _alter(p: Parser) -> Statement | None:
    if p.peek_word(1) == "USER":
        found = _alter_user_token(p)
        if found is not None:
            return found
        p.pos = 0
    obj = _object_after(p, 1, _ALTER_OBJECTS)
    if obj is None:
        return None
    p.pos = 1 + len(obj)
    kind = "ALTER " + " ".join(obj)
    st = Statement(kind=kind)
    st.if_exists = p.if_exists()
    st.name = p.name(f"a {' '.join(obj).lower()} name")
    if kind == "ALTER COMPUTE POOL":
        if p.accept("SUSPEND"):
            st.args["action"] = "SUSPEND"
        elif p.accept("RESUME"):
            st.args["action"] = "RESUME"
        elif p.accept("STOP", "ALL"):
            st.args["action"] = "STOP ALL"
        elif p.accept("SET"):
            st.args["action"] = "SET"
            st.props = p.props(POOL_ALTER_PROPS, kind)
        else:
            raise p.error("expected SUSPEND, RESUME, STOP ALL or SET after ALTER COMPUTE POOL name")
    elif kind == "ALTER SERVICE":
        if p.accept("SUSPEND"):
            st.args["action"] = "SUSPEND"
        elif p.accept("RESUME"):
            st.args["action"] = "RESUME"
        elif p.accept("SET"):
            st.args["action"] = "SET"
            st.props = _service_set_props(p)
        else:
            raise p.error("expected SUSPEND, RESUME or SET after ALTER SERVICE name")
    elif kind == "ALTER MODEL":
        if p.accept("DROP", "VERSION"):
            st.args["action"] = "DROP VERSION"
            st.args["version"] = p.name("a version name")
        elif p.accept("SET"):
            st.args["action"] = "SET"
            st.props = p.props(MODEL_ALTER_PROPS, kind)
        else:
            raise p.error("expected DROP VERSION or SET after ALTER MODEL name")
    elif kind == "ALTER FUNCTION":
        # ALTER FUNCTION name [(types)] SET ... : an argument type list is accepted and ignored
        # (service functions are not overloaded).
        if p.accept_punct(TokenType.L_PAREN):
            depth = 1
            while depth:
                tok = p.advance()
                if tok.token_type == TokenType.L_PAREN:
                    depth += 1
                elif tok.token_type == TokenType.R_PAREN:
                    depth -= 1
        if p.accept("SET"):
            st.args["action"] = "SET"
            st.props = p.props(FUNCTION_PROPS, kind)
        elif p.accept("UNSET"):
            st.args["action"] = "UNSET"
            st.args["unset"] = _unset_list(p, FUNCTION_PROPS, kind)
        else:
            raise p.error("expected SET or UNSET after ALTER FUNCTION name")
    elif kind == "ALTER USER":
        p.expect("SET")
        st.args["action"] = "SET"
        st.props = p.props(USER_PROPS, kind)
    elif kind == "ALTER API INTEGRATION":
        p.expect("SET")
        st.args["action"] = "SET"
        st.props = p.props(API_INTEGRATION_ALTER_PROPS, kind)
    p.end()
    return st


def _service_set_props(p: Parser) -> dict:
    """ALTER SERVICE ... SET: only scaling, comment and auto-suspend may change."""
    tok = p.peek()
    key = word(tok) if tok is not None else ""
    if key == "OWNER":
        raise InvalidArgumentError(
            _at(p, tok) + "ALTER SERVICE cannot SET OWNER; transfer a service with "
            "GRANT OWNERSHIP ON SERVICE <name> TO ROLE <role>"
        )
    if key and key not in SERVICE_ALTER_PROPS:
        raise InvalidArgumentError(
            _at(p, tok)
            + f"ALTER SERVICE cannot change {key}: a service's specification (model, image, "
            "resources, workers, batching, ingress) is immutable. Only MIN_INSTANCES, "
            "MAX_INSTANCES, AUTO_SUSPEND_SECS and COMMENT can be set; to change anything else "
            "create a new service (create_service with the new settings) and drop this one"
        )
    return p.props(SERVICE_ALTER_PROPS, "ALTER SERVICE")


def _at(p: Parser, tok: Token | None) -> str:
    if tok is None:
        return ""
    line, col = line_col(p.script, p.offset + tok.start)
    return f"line {line}, position {col}: "


def _unset_list(p: Parser, table: dict, statement: str) -> list[str]:
    keys = []
    while True:
        tok = p.peek()
        key = word(tok) if tok is not None else ""
        if key not in table:
            raise p.error(f"expected a property of {statement} ({', '.join(sorted(table))})")
        p.advance()
        keys.append(key)
        if not p.accept_punct(TokenType.COMMA):
            break
    return keys


def _describe(p: Parser) -> Statement | None:
    obj = _object_after(p, 1, _DESCRIBE_OBJECTS)
    if obj is None:
        return None  # DESCRIBE TABLE / DESCRIBE SELECT ...: the warehouse
    p.pos = 1 + len(obj)
    st = Statement(kind="DESCRIBE " + " ".join(obj))
    st.name = p.name(f"a {' '.join(obj).lower()} name")
    p.end()
    return st


def _show(p: Parser) -> Statement:
    p.advance()  # SHOW
    if p.accept("TERSE"):
        pass
    if p.accept("COMPUTE", "POOLS"):
        st = Statement("SHOW COMPUTE POOLS", like=p.like())
    elif p.accept("IMAGE", "REPOSITORIES"):
        st = Statement("SHOW IMAGE REPOSITORIES", like=p.like())
        st.args.update(p.show_scope())
    elif p.accept("IMAGES"):
        st = Statement("SHOW IMAGES", like=p.like())
        p.expect("IN", "IMAGE", "REPOSITORY")
        st.name = p.name("an image repository name")
    elif p.accept("NETWORK", "RULES"):
        st = Statement("SHOW NETWORK RULES", like=p.like())
        st.args.update(p.show_scope())
    elif p.accept("EXTERNAL", "ACCESS", "INTEGRATIONS") or p.accept("INTEGRATIONS"):
        st = Statement("SHOW INTEGRATIONS", like=p.like())
    elif p.accept("API", "INTEGRATIONS"):
        st = Statement("SHOW API INTEGRATIONS", like=p.like())
    elif p.accept("USER", "PROGRAMMATIC", "ACCESS", "TOKENS") or p.accept("USER", "PATS"):
        st = Statement("SHOW USER PATS")
        if p.accept("FOR", "USER"):
            st.name = p.name("a user name")
    elif p.accept("EXTERNAL", "FUNCTIONS"):
        st = Statement("SHOW FUNCTIONS", like=p.like())
        st.args.update(p.show_scope())
        st.args["external"] = True
    elif p.accept("SERVICES"):
        st = Statement("SHOW SERVICES", like=p.like())
        if p.accept("IN", "COMPUTE", "POOL"):
            st.args["scope"] = "COMPUTE POOL"
            st.args["scope_name"] = p.name("a compute pool name")
        else:
            st.args.update(p.show_scope())
    elif p.accept("ENDPOINTS"):
        st = Statement("SHOW ENDPOINTS")
        p.expect("IN", "SERVICE")
        st.name = p.name("a service name")
    elif p.accept("SERVICE", "CONTAINERS") or p.accept("SERVICE", "INSTANCES"):
        st = Statement("SHOW SERVICE CONTAINERS")
        p.expect("IN", "SERVICE")
        st.name = p.name("a service name")
    elif p.accept("MODELS"):
        st = Statement("SHOW MODELS", like=p.like())
        st.args.update(p.show_scope())
    elif p.accept("VERSIONS"):
        st = Statement("SHOW VERSIONS", like=p.like())
        p.expect("IN", "MODEL")
        st.name = p.name("a model name")
    elif p.accept("DATABASES"):
        st = Statement("SHOW DATABASES", like=p.like())
    elif p.accept("SCHEMAS"):
        st = Statement("SHOW SCHEMAS", like=p.like())
        if p.accept("IN"):
            p.accept("DATABASE")
            st.args["scope"] = "DATABASE"
            st.args["scope_name"] = p.name("a database name")
    elif p.accept("ROLES"):
        st = Statement("SHOW ROLES", like=p.like())
    elif p.accept("USERS"):
        st = Statement("SHOW USERS", like=p.like())
    elif p.accept("TABLES"):
        st = Statement("SHOW TABLES", like=p.like())
        st.args.update(p.show_scope())
    elif p.accept("USER", "FUNCTIONS") or p.accept("FUNCTIONS"):
        st = Statement("SHOW FUNCTIONS", like=p.like())
        st.args.update(p.show_scope())
    elif p.accept("GRANTS"):
        st = Statement("SHOW GRANTS")
        if p.accept("TO", "ROLE"):
            st.args["to_role"] = p.name("a role name")
        elif p.accept("TO", "USER"):
            st.args["to_user"] = p.name("a user name")
        elif p.accept("OF", "ROLE"):
            st.args["of_role"] = p.name("a role name")
        elif p.accept("ON"):
            if p.accept("ACCOUNT"):
                st.args["on"] = ("ACCOUNT", None)
            else:
                kind = p.object_type()
                st.args["on"] = (kind, p.name(f"a {kind.lower()} name"))
    else:
        raise p.error(
            "unknown SHOW statement; expected one of COMPUTE POOLS, IMAGE REPOSITORIES, IMAGES, "
            "NETWORK RULES, INTEGRATIONS, API INTEGRATIONS, SERVICES, ENDPOINTS, SERVICE "
            "CONTAINERS, MODELS, VERSIONS, DATABASES, SCHEMAS, TABLES, FUNCTIONS, EXTERNAL "
            "FUNCTIONS, USER PROGRAMMATIC ACCESS TOKENS, ROLES, USERS, GRANTS"
        )
    p.end()
    return st


def _use(p: Parser) -> Statement:
    p.advance()  # USE
    if p.accept("ROLE"):
        st = Statement("USE ROLE", name=p.name("a role name"))
    elif p.accept("DATABASE"):
        st = Statement("USE DATABASE", name=p.name("a database name"))
    elif p.accept("SCHEMA"):
        st = Statement("USE SCHEMA", name=p.name("a schema name"))
    else:
        name = p.name("a database or schema name")
        st = Statement("USE SCHEMA" if "." in _unquoted_dots(name) else "USE DATABASE", name=name)
    p.end()
    return st


def _unquoted_dots(name: str) -> str:
    out, quoted = [], False
    for ch in name:
        if ch == '"':
            quoted = not quoted
        elif ch == "." and not quoted:
            out.append(ch)
    return "".join(out)


_SYSTEM_FUNCTIONS = {
    "SYSTEM$GET_SERVICE_LOGS": (3, 4),
    "SYSTEM$GET_SERVICE_STATUS": (1, 2),
}


def _call(p: Parser) -> Statement | None:
    fn = p.peek_word(1)
    if not fn.startswith("SYSTEM$"):
        return None
    p.pos = 2
    if fn not in _SYSTEM_FUNCTIONS:
        raise p.error(
            f"unknown system function {fn}; available: {', '.join(sorted(_SYSTEM_FUNCTIONS))}",
            p.tokens[1],
        )
    p.expect_punct(TokenType.L_PAREN, "(")
    args: list[Any] = []
    if not p.accept_punct(TokenType.R_PAREN):
        while True:
            tok = p.peek()
            if tok is not None and is_string(tok):
                args.append(p.advance().text)
            elif tok is not None and tok.token_type in (TokenType.NUMBER, TokenType.DASH):
                args.append(p.integer("an integer argument"))
            else:
                raise p.error(f"expected a string or integer argument to {fn}")
            if p.accept_punct(TokenType.R_PAREN):
                break
            p.expect_punct(TokenType.COMMA, ",")
    low, high = _SYSTEM_FUNCTIONS[fn]
    if not low <= len(args) <= high:
        raise p.error(
            f"{fn} takes {low} to {high} arguments, got {len(args)}"
            if low != high
            else f"{fn} takes {low} arguments, got {len(args)}",
            p.tokens[1],
        )
    p.end()
    return Statement("CALL " + fn, args={"args": args})


_DISPATCH: dict[str, Callable[[Parser], Statement | None]] = {
    "CREATE": _create,
    "DROP": _drop,
    "ALTER": _alter,
    "DESCRIBE": _describe,
    "DESC": _describe,
    "SHOW": _show,
    "USE": _use,
    "GRANT": grant_statement,
    "REVOKE": revoke_statement,
    "CALL": _call,
}

__all__ = ["Statement", "parse_management", "is_quoted_identifier"]
