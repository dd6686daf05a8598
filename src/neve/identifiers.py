"""SQL identifier rules: case-insensitive unless double-quoted; objects addressed db.schema.name.

Unquoted identifiers are stored upper-cased (as the reference platform does), quoted ones keep
their case. ``ident("forecast")`` and ``ident("FORECAST")`` are the same object;
``ident('"Forecast"')`` is another one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from neve.errors import InvalidIdentifierError

_UNQUOTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
MAX_LEN = 255


def ident(raw: str, *, kind: str = "identifier") -> str:
    """Normalize one identifier part; raise ``InvalidIdentifierError`` naming ``kind`` if invalid."""
    if not isinstance(raw, str):
        raise InvalidIdentifierError(f"{kind} must be a string, got {type(raw).__name__}")
    text = raw.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        inner = text[1:-1].replace('""', '"')
        if not inner or len(inner) > MAX_LEN or "\x00" in inner or "/" in inner or ".." in inner:
            raise InvalidIdentifierError(f"invalid quoted {kind} {raw!r}")
        return inner
    if not text or len(text) > MAX_LEN or not _UNQUOTED.match(text):
        raise InvalidIdentifierError(
            f"invalid {kind} {raw!r}: use letters, digits, _ and $, starting with a letter or _, "
            'or double-quote it ("My Name")'
        )
    return text.upper()


def quote(name: str) -> str:
    """The SQL text that names an already-normalized identifier."""
    if _UNQUOTED.match(name) and name == name.upper():
        return name
    return '"' + name.replace('"', '""') + '"'


def split_name(raw: str) -> list[str]:
    """Split ``a.b."c.d"`` into raw parts, honouring double quotes."""
    parts: list[str] = []
    buf: list[str] = []
    in_quotes = False
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == '"':
            if in_quotes and i + 1 < len(raw) and raw[i + 1] == '"':
                buf.append('""')
                i += 2
                continue
            in_quotes = not in_quotes
            buf.append(ch)
        elif ch == "." and not in_quotes:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    if in_quotes:
        raise InvalidIdentifierError(f"unterminated quote in name {raw!r}")
    parts.append("".join(buf))
    return parts


@dataclass(frozen=True)
class QualifiedName:
    database: str
    schema: str
    name: str

    def __str__(self) -> str:
        return f"{quote(self.database)}.{quote(self.schema)}.{quote(self.name)}"


def qualify(
    raw: str, *, database: str | None, schema: str | None, kind: str = "object"
) -> QualifiedName:
    """Resolve ``name``, ``schema.name`` or ``db.schema.name`` against the current db/schema."""
    parts = split_name(raw)
    if len(parts) > 3:
        raise InvalidIdentifierError(f"invalid {kind} name {raw!r}: at most database.schema.name")
    name = ident(parts[-1], kind=f"{kind} name")
    sch = ident(parts[-2], kind="schema name") if len(parts) >= 2 else schema
    db = ident(parts[-3], kind="database name") if len(parts) == 3 else database
    if db is None or sch is None:
        raise InvalidIdentifierError(
            f"{kind} name {raw!r} is not qualified and no current "
            f"{'database' if db is None else 'schema'} is set (USE DATABASE / USE SCHEMA)"
        )
    return QualifiedName(db, sch, name)
