"""What ``session.sql`` returns: a result of named rows, as rows, a first row or a DataFrame."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


class Row(tuple):
    """A result row: a tuple whose values can also be read by column name.

    ``row[0]``, ``row["NAME"]`` and ``row.NAME`` all work; names match exactly first, then
    case-insensitively (SHOW output uses lower-case names, unquoted SQL names are upper-case).
    """

    _fields: tuple[str, ...] = ()

    def __new__(cls, values: Sequence[Any], fields: Sequence[str]) -> Row:
        row = super().__new__(cls, values)
        row._fields = tuple(fields)
        return row

    def __reduce__(self) -> tuple:  # picklable (the default would drop the field names)
        return (Row, (tuple(self), self._fields))

    def _index(self, name: str) -> int:
        fields = self._fields
        if name in fields:
            return fields.index(name)
        folded = name.upper()
        for i, field_name in enumerate(fields):
            if field_name.upper() == folded:
                return i
        raise KeyError(f"no column {name!r}; columns: {', '.join(fields)}")

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index(key))
        return tuple.__getitem__(self, key)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def as_dict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self, strict=True))

    asDict = as_dict  # noqa: N815 (the reference's spelling)

    def __repr__(self) -> str:
        pairs = ", ".join(f"{k}={v!r}" for k, v in zip(self._fields, self, strict=True))
        return f"Row({pairs})"


class SqlResult:
    """What a SQL statement returned: ``columns``, ``types`` and ``rows`` (lists of values)."""

    def __init__(self, body: dict[str, Any], text: str) -> None:
        self.text = text
        self.columns: list[str] = [str(c) for c in body.get("columns") or []]
        self.types: list[str] = list(body.get("types") or [])
        self.rows: list[list[Any]] = [list(r) for r in body.get("rows") or []]
        self.stats: dict[str, Any] = dict(body.get("stats") or {})

    def collect(self) -> list[Row]:
        return [Row(r, self.columns) for r in self.rows]

    def first(self) -> Row | None:
        return Row(self.rows[0], self.columns) if self.rows else None

    def to_pandas(self) -> pd.DataFrame:
        import pandas as pd  # only when asked for: `neve` commands start faster without it

        return pd.DataFrame(self.rows, columns=self.columns)

    def show(self, n: int = 10) -> None:
        """Print the first ``n`` rows."""
        print(self.to_pandas().head(n).to_string(index=False))

    def __iter__(self) -> Iterator[Row]:
        return iter(self.collect())

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"SqlResult({len(self.rows)} rows, columns={self.columns})"
