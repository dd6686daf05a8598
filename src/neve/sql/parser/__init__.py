"""A small recursive-descent parser for neve's management statements.

sqlglot parses queries and table DDL well, but not CREATE COMPUTE POOL, SHOW SERVICES, CALL
SYSTEM$... or GRANT ... ON COMPUTE POOL. Those are parsed here, over the same tokens as the query
path (``neve.sql.lexer``). :func:`parse_management` returns a :class:`Statement` for a management
statement, or ``None`` for anything else (which then runs on the warehouse).

Names are kept as source text (``db.schema."My Svc"``) and resolved by the managers with
``neve.identifiers.qualify``, so quoting rules live in one place. Property values are checked
against each statement's property table here, so a typo is reported with its position.
"""

from neve.sql.parser.grammar import parse_management
from neve.sql.parser.statement import Statement

__all__ = ["Statement", "parse_management"]
