"""GRANT and REVOKE: privileges, roles and ownership."""

from __future__ import annotations

from sqlglot.tokens import TokenType

from neve.sql.lexer import (
    word,
)
from neve.sql.parser.statement import Statement
from neve.sql.parser.tokens import Parser


def _privileges(p: Parser) -> list[str]:
    """``USAGE, MONITOR`` / ``CREATE SERVICE`` / ``ALL [PRIVILEGES]`` up to ON."""
    privs: list[str] = []
    current: list[str] = []
    while True:
        tok = p.peek()
        if tok is None:
            raise p.error("expected ON after the privilege list")
        w = word(tok)
        if w == "ON" and current:
            privs.append(" ".join(current))
            return privs
        if tok.token_type == TokenType.COMMA and current:
            privs.append(" ".join(current))
            current = []
            p.advance()
            continue
        if not w:
            raise p.error("expected a privilege name")
        current.append(w)
        p.advance()


def _grant_target(p: Parser) -> tuple[str, str | None]:
    if p.accept("ACCOUNT"):
        return ("ACCOUNT", None)
    kind = p.object_type()
    return kind, p.name(f"a {kind.lower()} name")


def _role_grant(p: Parser, kind: str, preposition: str) -> Statement:
    """The rest of ``GRANT ROLE r TO USER u | ROLE r2`` (or ``REVOKE ROLE r FROM ...``): the
    grantee lands in ``to_user``/``to_role`` (``from_user``/``from_role``)."""
    st = Statement(kind, name=p.name("a role name"))
    p.expect(preposition)
    prefix = preposition.lower()
    if p.accept("USER"):
        st.args[f"{prefix}_user"] = p.name("a user name")
    elif p.accept("ROLE"):
        st.args[f"{prefix}_role"] = p.name("a role name")
    else:
        raise p.error(f"expected USER or ROLE after {preposition}")
    p.end()
    return st


def grant_statement(p: Parser) -> Statement:
    p.advance()  # GRANT
    if p.accept("ROLE"):
        return _role_grant(p, "GRANT ROLE", "TO")
    privs = _privileges(p)
    p.expect("ON")
    if privs == ["OWNERSHIP"]:
        kind, name = _grant_target(p)
        p.expect("TO")
        p.accept("ROLE")
        st = Statement("GRANT OWNERSHIP", name=name)
        st.args.update(object_type=kind, to_role=p.name("a role name"), copy_current_grants=True)
        if p.accept("COPY", "CURRENT", "GRANTS"):
            st.args["copy_current_grants"] = True
        elif p.accept("REVOKE", "CURRENT", "GRANTS"):
            st.args["copy_current_grants"] = False
        p.end()
        return st
    kind, name = _grant_target(p)
    p.expect("TO")
    p.accept("ROLE")
    st = Statement("GRANT", name=name)
    st.args.update(privileges=privs, object_type=kind, to_role=p.name("a role name"))
    st.args["with_grant_option"] = p.accept("WITH", "GRANT", "OPTION")
    p.end()
    return st


def revoke_statement(p: Parser) -> Statement:
    p.advance()  # REVOKE
    if p.accept("ROLE"):
        return _role_grant(p, "REVOKE ROLE", "FROM")
    grant_option_only = p.accept("GRANT", "OPTION", "FOR")
    privs = _privileges(p)
    p.expect("ON")
    kind, name = _grant_target(p)
    p.expect("FROM")
    p.accept("ROLE")
    st = Statement("REVOKE", name=name)
    st.args.update(
        privileges=privs,
        object_type=kind,
        from_role=p.name("a role name"),
        grant_option_only=grant_option_only,
    )
    st.args["cascade"] = bool(p.accept("CASCADE"))
    if not st.args["cascade"]:
        p.accept("RESTRICT")  # the default
    p.end()
    return st
