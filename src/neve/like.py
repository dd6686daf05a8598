"""SQL ``LIKE`` patterns, one implementation for every surface (SQL SHOW, REST, CLI, client).

``%`` matches any run of characters, ``_`` exactly one, and a backslash makes the next character
literal (``'A\\_B'`` matches only ``A_B``). Matching is case-insensitive, as for neve's names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable


def like_regex(pattern: str) -> re.Pattern[str]:
    """The compiled regular expression of a LIKE ``pattern`` (whole-string, case-insensitive)."""
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.compile("^" + "".join(out) + "$", re.IGNORECASE | re.DOTALL)


def filter_like(rows: Iterable[dict], pattern: str | None, column: str = "name") -> list[dict]:
    """The rows whose ``column`` matches ``pattern`` (all of them when ``pattern`` is None/empty)."""
    rows = list(rows)
    if not pattern:
        return rows
    rx = like_regex(pattern)
    return [r for r in rows if rx.match(str(r.get(column) or ""))]
