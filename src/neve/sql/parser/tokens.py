"""The token cursor the grammar reads with: words, names, strings, values, property lists."""

from __future__ import annotations

from typing import Any

from sqlglot.tokens import Token, TokenType

from neve.errors import SqlSyntaxError
from neve.kinds import BOOL, INT, NAMES, NUM, STR, STRS, WORD
from neve.sql.lexer import (
    is_string,
    is_word,
    line_col,
    raw_identifier,
    tokenize,
    word,
)
from neve.sql.parser.statement import GRANT_OBJECT_TYPES


class Parser:
    def __init__(self, text: str, *, offset: int = 0, script: str | None = None) -> None:
        self.text = text
        self.script = script if script is not None else text
        self.offset = offset
        self.tokens = [t for t in tokenize(text)]
        self.pos = 0

    # -- token helpers ----------------------------------------------------------------------------
    def peek(self, ahead: int = 0) -> Token | None:
        i = self.pos + ahead
        return self.tokens[i] if i < len(self.tokens) else None

    def peek_word(self, ahead: int = 0) -> str:
        tok = self.peek(ahead)
        return word(tok) if tok is not None else ""

    def at_end(self) -> bool:
        return self.pos >= len(self.tokens)

    def advance(self) -> Token:
        tok = self.peek()
        if tok is None:
            raise self.error("unexpected end of statement")
        self.pos += 1
        return tok

    def accept(self, *words: str) -> bool:
        """Consume the word sequence ``words`` if it comes next."""
        for i, w in enumerate(words):
            if self.peek_word(i) != w:
                return False
        self.pos += len(words)
        return True

    def expect(self, *words: str) -> None:
        if not self.accept(*words):
            raise self.error(f"expected {' '.join(words)}")

    def accept_punct(self, kind: TokenType) -> bool:
        tok = self.peek()
        if tok is not None and tok.token_type == kind:
            self.pos += 1
            return True
        return False

    def expect_punct(self, kind: TokenType, label: str) -> None:
        if not self.accept_punct(kind):
            raise self.error(f"expected '{label}'")

    def error(self, message: str, tok: Token | None = None) -> SqlSyntaxError:
        tok = tok or self.peek()
        if tok is None:
            where = self.offset + len(self.text.rstrip())
            line, col = line_col(self.script, where)
            return SqlSyntaxError(f"{message} (unexpected end of statement)", line=line, col=col)
        line, col = line_col(self.script, self.offset + tok.start)
        shown = self.text[tok.start : tok.end + 1]
        return SqlSyntaxError(f"{message}, found {shown!r}", line=line, col=col)

    def end(self) -> None:
        if not self.at_end():
            raise self.error("unexpected token")

    # -- values -----------------------------------------------------------------------------------
    def name(self, what: str = "name") -> str:
        """A possibly qualified name as source text: ``a``, ``db.s."X y"``."""
        tok = self.peek()
        if tok is None or not is_word(tok):
            raise self.error(f"expected {what}")
        parts = [raw_identifier(self.advance())]
        while self.peek() is not None and self.peek().token_type == TokenType.DOT:  # type: ignore[union-attr]
            self.advance()
            tok = self.peek()
            if tok is None or not is_word(tok):
                raise self.error(f"expected {what} after '.'")
            parts.append(raw_identifier(self.advance()))
        return ".".join(parts)

    def string(self, what: str = "string") -> str:
        tok = self.peek()
        if tok is None or not is_string(tok):
            raise self.error(f"expected {what} (a quoted string)")
        self.advance()
        return tok.text

    def integer(self, what: str = "integer") -> int:
        tok = self.peek()
        negative = False
        if tok is not None and tok.token_type == TokenType.DASH:
            self.advance()
            negative = True
            tok = self.peek()
        if tok is None or tok.token_type != TokenType.NUMBER or not tok.text.isdigit():
            raise self.error(f"expected {what}")
        self.advance()
        return -int(tok.text) if negative else int(tok.text)

    def value(self, kind: str, prop: str) -> Any:
        tok = self.peek()
        if tok is None:
            raise self.error(f"expected a value for {prop}")
        if kind == INT:
            return self.integer(f"an integer for {prop}")
        if kind == NUM:
            if tok.token_type != TokenType.NUMBER:
                raise self.error(f"expected a number for {prop}")
            self.advance()
            return float(tok.text) if "." in tok.text else int(tok.text)
        if kind == BOOL:
            w = word(tok) or (tok.text.upper() if is_string(tok) else "")
            if w in ("TRUE", "FALSE"):
                self.advance()
                return w == "TRUE"
            raise self.error(f"expected TRUE or FALSE for {prop}")
        if kind == STR:
            return self.string(f"a quoted string for {prop}")
        if kind == WORD:
            if is_string(tok):
                self.advance()
                return tok.text
            if is_word(tok):
                return self.name(f"a value for {prop}")
            raise self.error(f"expected a value for {prop}")
        if kind in (NAMES, STRS):
            self.expect_punct(TokenType.L_PAREN, "(")
            items: list[str] = []
            if not self.accept_punct(TokenType.R_PAREN):
                while True:
                    items.append(
                        self.string(f"a quoted string in {prop}")
                        if kind == STRS
                        else self.name(f"a name in {prop}")
                    )
                    if self.accept_punct(TokenType.R_PAREN):
                        break
                    self.expect_punct(TokenType.COMMA, ",")
            return items
        raise AssertionError(kind)

    def props(self, table: dict[str, str], statement: str, *, stop: tuple[str, ...] = ()) -> dict:
        """``KEY = value`` pairs (``=`` optional) until the end or a word in ``stop``."""
        found: dict[str, Any] = {}
        while not self.at_end() and self.peek_word() not in stop:
            tok = self.peek()
            assert tok is not None
            key = word(tok)
            if not key:
                raise self.error(f"expected a property name for {statement}")
            if key not in table:
                raise self.error(
                    f"unknown property {key} for {statement}; valid: {', '.join(sorted(table))}"
                )
            if key in found:
                raise self.error(f"property {key} is given twice")
            self.advance()
            self.accept_punct(TokenType.EQ)
            found[key] = self.value(table[key], key)
            self.accept_punct(TokenType.COMMA)
        return found

    def if_not_exists(self) -> bool:
        return self.accept("IF", "NOT", "EXISTS")

    def if_exists(self) -> bool:
        return self.accept("IF", "EXISTS")

    def like(self) -> str | None:
        if self.accept("LIKE"):
            return self.string("a LIKE pattern")
        return None

    def show_scope(self) -> dict:
        """``IN ACCOUNT | IN DATABASE d | IN SCHEMA s`` (optional)."""
        if not self.accept("IN"):
            return {}
        if self.accept("ACCOUNT"):
            return {"scope": "ACCOUNT"}
        if self.accept("DATABASE"):
            return {"scope": "DATABASE", "scope_name": self.name("a database name")}
        if self.accept("SCHEMA"):
            return {"scope": "SCHEMA", "scope_name": self.name("a schema name")}
        raise self.error("expected ACCOUNT, DATABASE or SCHEMA after IN")

    def object_type(self) -> str:
        for words in GRANT_OBJECT_TYPES:
            if self.accept(*words):
                joined = " ".join(words)
                return "INTEGRATION" if joined == "EXTERNAL ACCESS INTEGRATION" else joined
        raise self.error(
            "expected an object type (ACCOUNT, DATABASE, SCHEMA, MODEL, SERVICE, COMPUTE POOL, "
            "IMAGE REPOSITORY, NETWORK RULE, INTEGRATION, FUNCTION, ROLE, USER)"
        )
