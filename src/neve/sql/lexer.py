"""Tokens, statement splitting and the ``!`` call syntax, shared by every SQL parser in neve.

Both the management-statement parser and the query path tokenize with sqlglot's DuckDB tokenizer
(so quoting, comments and string rules are the same everywhere), with "command" keywords turned
off so that ``CALL x(...)`` or ``SHOW ...`` are tokenized in full instead of swallowed whole.

``svc!predict(a, b)`` and ``MODEL(m, v1)!predict(a, b)`` are not SQL that any parser knows, so
they are replaced by placeholder function calls before sqlglot parses the query
(:func:`rewrite_bang_calls`); the placeholders are resolved when the query is planned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sqlglot.dialects.duckdb import DuckDB
from sqlglot.errors import TokenError
from sqlglot.tokens import Token, TokenType

from neve.errors import SqlSyntaxError


class _Tokenizer(DuckDB.Tokenizer):
    # tokenize CALL/SHOW/EXECUTE bodies instead of one opaque string
    COMMANDS: ClassVar[set[TokenType]] = set()


#: Token types that can name something (keywords are words too: ``SHOW MODELS`` etc.).
_NON_WORDS = {
    TokenType.STRING,
    TokenType.NUMBER,
    TokenType.NATIONAL_STRING,
    TokenType.HEREDOC_STRING,
    TokenType.RAW_STRING,
    TokenType.BIT_STRING,
    TokenType.HEX_STRING,
    TokenType.BYTE_STRING,
    TokenType.L_PAREN,
    TokenType.R_PAREN,
    TokenType.L_BRACKET,
    TokenType.R_BRACKET,
    TokenType.L_BRACE,
    TokenType.R_BRACE,
    TokenType.COMMA,
    TokenType.DOT,
    TokenType.SEMICOLON,
    TokenType.EQ,
    TokenType.NEQ,
    TokenType.STAR,
    TokenType.DASH,
    TokenType.PLUS,
    TokenType.SLASH,
    TokenType.COLON,
    TokenType.EXCLAMATION,
    TokenType.LT,
    TokenType.GT,
    TokenType.LTE,
    TokenType.GTE,
    TokenType.PARAMETER,
    TokenType.PLACEHOLDER,
}
_STRINGS = {
    TokenType.STRING,
    TokenType.NATIONAL_STRING,
    TokenType.HEREDOC_STRING,
    TokenType.RAW_STRING,
}


def tokenize(text: str) -> list[Token]:
    try:
        return _Tokenizer().tokenize(text)
    except TokenError as exc:
        line, col = _position_from_message(text, str(exc))
        raise SqlSyntaxError(str(exc).splitlines()[0], line=line, col=col) from None


def _position_from_message(text: str, message: str) -> tuple[int | None, int | None]:
    # sqlglot's tokenizer errors say "Error tokenizing '<context>'"; point at the context.
    marker = "Error tokenizing '"
    if marker in message:
        context = message.split(marker, 1)[1].rsplit("'", 1)[0]
        idx = text.find(context[:20])
        if idx >= 0:
            return line_col(text, idx)
    return None, None


def is_word(tok: Token) -> bool:
    if tok.token_type == TokenType.NOT:
        return tok.text != "!"  # the keyword NOT is a word, the symbol ! is not
    return tok.token_type not in _NON_WORDS


def is_string(tok: Token) -> bool:
    return tok.token_type in _STRINGS


def is_quoted_identifier(tok: Token) -> bool:
    return tok.token_type == TokenType.IDENTIFIER


def word(tok: Token) -> str:
    """Upper-cased text of an unquoted word (for keyword comparison)."""
    return "" if is_quoted_identifier(tok) or not is_word(tok) else tok.text.upper()


def raw_identifier(tok: Token) -> str:
    """The token as identifier source text (quoted identifiers get their quotes back)."""
    if is_quoted_identifier(tok):
        return '"' + tok.text.replace('"', '""') + '"'
    return tok.text


def line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of character ``offset`` in ``text``."""
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, col


@dataclass
class StatementText:
    """One statement of a script: its text and where it starts in the whole script."""

    text: str
    offset: int  # character offset of ``text`` in the script
    line: int  # 1-based line where it starts in the script


def split_statements(script: str) -> list[StatementText]:
    """Split a script at top-level ``;`` (never inside strings, identifiers or comments)."""
    tokens = tokenize(script)
    out: list[StatementText] = []
    start: int | None = None
    end = 0
    for tok in tokens:
        if tok.token_type == TokenType.SEMICOLON:
            if start is not None:
                out.append(_piece(script, start, end))
            start = None
            continue
        if start is None:
            start = tok.start  # leading comments are not part of the statement
        end = tok.end + 1
    if start is not None:
        out.append(_piece(script, start, end))
    return out


def _piece(script: str, start: int, end: int) -> StatementText:
    line, _ = line_col(script, start)
    return StatementText(script[start:end], start, line)


@dataclass
class BangCall:
    """A ``target!method(`` call found in query text, replaced by ``placeholder(``."""

    placeholder: str
    kind: str  # "SERVICE" | "MODEL"
    target: str  # service name text, or the model name text for MODEL(...)
    version: str | None  # MODEL(m, v) version text
    method: str
    line: int
    col: int


BANG_PREFIX = "__NEVE_BANG_"


def rewrite_bang_calls(text: str) -> tuple[str, dict[str, BangCall]]:
    """Replace ``a.b.svc!m(`` / ``MODEL(x, v)!m(`` by ``__NEVE_BANG_<n>(``; return the mapping."""
    tokens = tokenize(text)
    calls: dict[str, BangCall] = {}
    edits: list[tuple[int, int, str]] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if (
            tok.text == "!"
            and i + 2 < len(tokens)
            and is_word(tokens[i + 1])
            and tokens[i + 2].token_type == TokenType.L_PAREN
            and i > 0
        ):
            method_tok = tokens[i + 1]
            first, call = _bang_target(text, tokens, i)
            name = f"{BANG_PREFIX}{len(calls)}"
            line, col = line_col(text, tokens[first].start)
            calls[name] = BangCall(
                placeholder=name,
                kind=call[0],
                target=call[1],
                version=call[2],
                method=method_tok.text,
                line=line,
                col=col,
            )
            edits.append((tokens[first].start, method_tok.end + 1, name))
            i += 2
            continue
        i += 1
    if not edits:
        return text, calls
    out = []
    pos = 0
    for start, end, repl in edits:
        out.append(text[pos:start])
        out.append(repl)
        pos = end
    out.append(text[pos:])
    return "".join(out), calls


def _bang_target(
    text: str, tokens: list[Token], bang: int
) -> tuple[int, tuple[str, str, str | None]]:
    """Walk back from the ``!`` at ``tokens[bang]`` over the call target."""
    prev = tokens[bang - 1]
    if prev.token_type == TokenType.R_PAREN:
        depth = 0
        j = bang - 1
        while j >= 0:
            if tokens[j].token_type == TokenType.R_PAREN:
                depth += 1
            elif tokens[j].token_type == TokenType.L_PAREN:
                depth -= 1
                if depth == 0:
                    break
            j -= 1
        if j <= 0 or word(tokens[j - 1]) != "MODEL":
            line, col = line_col(text, tokens[bang].start)
            raise SqlSyntaxError(
                "unexpected '!': write SERVICE!METHOD(...) or MODEL(name[, version])!METHOD(...)",
                line=line,
                col=col,
            )
        args = _split_args(tokens[j + 1 : bang - 1])
        if len(args) not in (1, 2) or not args[0]:
            line, col = line_col(text, tokens[j - 1].start)
            raise SqlSyntaxError(
                "MODEL(...) takes a model name and optionally a version: MODEL(db.schema.m, v1)",
                line=line,
                col=col,
            )
        model = "".join(raw_identifier(t) for t in args[0])
        version = None
        if len(args) == 2:
            vt = args[1]
            if len(vt) != 1:
                line, col = line_col(text, vt[0].start if vt else tokens[j].start)
                raise SqlSyntaxError("MODEL(...) version must be a name", line=line, col=col)
            version = vt[0].text if is_string(vt[0]) else raw_identifier(vt[0])
        return j - 1, ("MODEL", model, version)
    j = bang - 1
    parts: list[str] = []
    while j >= 0 and is_word(tokens[j]):
        parts.append(raw_identifier(tokens[j]))
        if j >= 2 and tokens[j - 1].token_type == TokenType.DOT and is_word(tokens[j - 2]):
            parts.append(".")
            j -= 2
            continue
        break
    if not parts:
        line, col = line_col(text, tokens[bang].start)
        raise SqlSyntaxError("'!' must follow a service name", line=line, col=col)
    return j, ("SERVICE", "".join(reversed(parts)), None)


def _split_args(tokens: list[Token]) -> list[list[Token]]:
    args: list[list[Token]] = [[]]
    depth = 0
    for t in tokens:
        if t.token_type == TokenType.L_PAREN:
            depth += 1
        elif t.token_type == TokenType.R_PAREN:
            depth -= 1
        if t.token_type == TokenType.COMMA and depth == 0:
            args.append([])
            continue
        args[-1].append(t)
    return args
