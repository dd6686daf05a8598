"""Table functions in SQL (``FROM t, TABLE(MODEL(m, v)!f(...) OVER (PARTITION BY k))``) and
``name => constant`` method parameters, on a real registry and warehouse, with the errors that
name the problem."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

import neve
from neve.errors import NotSupportedError, ObjectNotFoundError, SignatureError
from neve.models import load_model, save_model


class Summary(neve.CustomModel):
    @neve.partitioned_api
    def summarize(self, X: pd.DataFrame, *, top: int = 1) -> pd.DataFrame:
        best = X.sort_values("v", ascending=False).head(top)
        return pd.DataFrame({"rank": range(1, len(best) + 1), "v": best["v"].to_numpy()})

    @neve.partitioned_api
    def first(self, X: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"first": [X["v"].iloc[0]], "n": [len(X)]})

    @neve.inference_api
    def scale(self, X: pd.DataFrame, *, by: float = 1.0) -> pd.DataFrame:
        return pd.DataFrame({"y": X["v"] * by})


@pytest.fixture
def sql(sql, account, tmp_path):
    path = tmp_path / "m"
    sample = pd.DataFrame({"k": ["a", "a", "b"], "v": [1.0, 3.0, 2.0]})
    save_model(Summary(), path, sample_input=sample)
    sql("CREATE DATABASE ml")
    account.registry.log_model(sql.ctx, "ML", "PUBLIC", "SUMMARY", "V1", path)
    rows = pd.DataFrame({"k": ["a", "b", "a", "c", "b", "a"], "v": [1.0, 5.0, 4.0, 7.0, 2.0, 2.5]})
    account.sql.write_table(sql.ctx, "points", pa.Table.from_pandas(rows))
    sql.path = path
    sql.points = rows
    return sql


def test_one_call_per_partition_equals_the_in_process_run(sql) -> None:
    result = sql(
        "SELECT p.k, rank, v FROM points p, TABLE(MODEL(summary, v1)!summarize(k, v, top => 2) "
        "OVER (PARTITION BY k)) ORDER BY p.k, rank"
    )
    local = load_model(sql.path).call_partitioned("summarize", sql.points, "k", {"top": 2})
    expected = local.sort_values(["k", "rank"]).values.tolist()
    assert [list(r) for r in result.rows] == expected
    assert [r[0] for r in result.rows] == ["a", "a", "b", "b", "c"]
    # the default parameter; SELECT * gives the partition column first
    star = sql(
        "SELECT * FROM points, TABLE(MODEL(summary, v1)!summarize(k, v) OVER (PARTITION BY k))"
    )
    assert star.columns == ["k", "rank", "v"] and len(star.rows) == 3


def test_parameters_of_a_row_function(sql) -> None:
    rows = sql("SELECT v, MODEL(summary, v1)!scale(k, v, by => -2) AS y FROM points ORDER BY v")
    assert [r[1] for r in rows.rows] == [-2 * v for v in sorted(sql.points["v"])]
    with pytest.raises(SignatureError, match="no parameter"):
        sql("SELECT MODEL(summary, v1)!scale(k, v, nope => 1) FROM points")
    with pytest.raises(SignatureError, match="expects DOUBLE"):
        sql("SELECT MODEL(summary, v1)!scale(k, v, by => 'x') FROM points")
    with pytest.raises(SignatureError, match="must be a constant"):
        sql("SELECT MODEL(summary, v1)!scale(k, v, by => v) FROM points")


def test_errors_name_the_problem(sql) -> None:
    with pytest.raises(ValueError, match=r"reads column\(s\) k, v but no FROM item comes before"):
        sql("SELECT * FROM TABLE(MODEL(summary, v1)!summarize(k, v) OVER (PARTITION BY k))")
    with pytest.raises(ValueError, match=r"MODEL\(summary, V1\)!summarize.*no FROM item"):
        sql("SELECT * FROM TABLE(MODEL(summary, v1)!summarize(k, v)), points")
    with pytest.raises(NotSupportedError, match="not a window frame"):
        sql(
            "SELECT * FROM points, TABLE(MODEL(summary, v1)!summarize(k, v) "
            "OVER (PARTITION BY k ORDER BY v ROWS BETWEEN 1 PRECEDING AND CURRENT ROW))"
        )
    with pytest.raises(SignatureError, match="not a table function"):
        sql("SELECT * FROM points, TABLE(MODEL(summary, v1)!scale(k, v) OVER (PARTITION BY k))")
    with pytest.raises(SignatureError, match=r"is a table function .* TABLE\(MODEL"):
        sql("SELECT MODEL(summary, v1)!summarize(k, v) FROM points")
    with pytest.raises(SignatureError, match="takes 2 argument"):
        sql("SELECT * FROM points, TABLE(MODEL(summary, v1)!summarize(v) OVER (PARTITION BY k))")
    with pytest.raises(ObjectNotFoundError, match="no method"):
        sql("SELECT * FROM points, TABLE(MODEL(summary, v1)!nope(k, v) OVER (PARTITION BY k))")


def in_process(sql, data: pd.DataFrame, keys: list[str] | None, top: int = 1) -> list[list]:
    """The in-process answer of ``summarize`` per distinct combination of ``keys`` (all rows
    one partition without keys), as sorted rows: keys, then rank and v."""
    model = load_model(sql.path)
    if not keys:
        return ordered(model.call("summarize", data, {"top": top}).values.tolist())
    out = []
    for values, rows in data.groupby(keys, sort=False, dropna=False):
        part = model.call("summarize", rows, {"top": top})
        key = [None if pd.isna(x) else x for x in values]
        out += [[*key, *r] for r in part.values.tolist()]
    return ordered(out)


def ordered(rows) -> list[list]:
    """Rows as lists, sorted (NULL among the values)."""
    return sorted((list(r) for r in rows), key=lambda r: [(x is None, str(x)) for x in r])


def test_sources_written_as_sub_queries_ctes_joins_or_constants(sql) -> None:
    """The rows come from every FROM item before TABLE(...): a sub-query (aliased or not), a
    CTE, joined tables; with none, constant arguments make one row."""
    big = sql.points[sql.points.v > 1.5]
    expected = in_process(sql, big, ["k"])
    fn = "TABLE(MODEL(summary, v1)!summarize(k, v) OVER (PARTITION BY k))"
    for text in (
        f"SELECT * FROM (SELECT * FROM points WHERE v > 1.5) s, {fn}",
        f"SELECT * FROM (SELECT * FROM points WHERE v > 1.5), {fn}",
        f"WITH s AS (SELECT * FROM points WHERE v > 1.5) SELECT * FROM s, {fn}",
        f"WITH s AS (SELECT * FROM points WHERE v > 1.5) SELECT * FROM s CROSS JOIN {fn}",
        f"SELECT * FROM (WITH s AS (SELECT * FROM points) SELECT * FROM s WHERE v > 1.5), {fn}",
    ):
        result = sql(text)
        assert result.columns == ["k", "rank", "v"], text
        assert ordered(result.rows) == expected, text

    # a name given to the sub-query and one given to TABLE(...) both resolve
    named = sql(
        "SELECT s.k, f.rank, f.v FROM (SELECT * FROM points WHERE v > 1.5) s, "
        "TABLE(MODEL(summary, v1)!summarize(k, v) OVER (PARTITION BY k)) f ORDER BY s.k"
    )
    assert [list(r) for r in named.rows] == expected

    # a join before the call: its rows (with the ON condition) are the input
    regions = pd.DataFrame({"k": ["a", "b"], "region": ["north", "south"]})
    sql.account.sql.write_table(sql.ctx, "regions", pa.Table.from_pandas(regions))
    joined = sql(
        "SELECT p.k, g.region, rank, v FROM points p JOIN regions g ON p.k = g.k, "
        "TABLE(MODEL(summary, v1)!summarize(p.k, p.v) OVER (PARTITION BY p.k, g.region)) "
        "ORDER BY p.k"
    )
    kept = sql.points[sql.points.k.isin(["a", "b"])].merge(regions, on="k")
    want = in_process(sql, kept[["k", "region", "v"]], ["k", "region"])
    assert ordered(joined.rows) == want

    # constants and no FROM item before the call: one row
    one = sql("SELECT * FROM TABLE(MODEL(summary, v1)!summarize('z', 4.5, top => 3))")
    assert one.columns == ["rank", "v"] and [list(r) for r in one.rows] == [[1, 4.5]]
    sub = sql("SELECT * FROM TABLE(MODEL(summary, v1)!summarize('z', (SELECT max(v) FROM points)))")
    assert [list(r) for r in sub.rows] == [[1, 7.0]]

    # one table function reading another's answer (the inner one runs first)
    chained = sql(
        "WITH best AS (SELECT * FROM points, TABLE(MODEL(summary, v1)!summarize(k, v) "
        "OVER (PARTITION BY k))) SELECT * FROM best, TABLE(MODEL(summary, v1)!summarize(k, v))"
    )
    assert [list(r) for r in chained.rows] == [[1, 7.0]]


def test_several_partition_expressions_and_order(sql) -> None:
    """PARTITION BY a, b: one call per distinct combination (NULL included); expressions name
    their column PARTITION_<n>; no PARTITION BY: all rows one partition, as mv.run without
    partition_column; ORDER BY orders the rows inside each partition."""
    data = pd.DataFrame(
        {
            "k": ["a", "b", "a", "c", "b", "a", None, None],
            "r": ["x", "x", "y", "y", "x", "x", "x", "x"],
            "v": [1.0, 5.0, 4.0, 7.0, 2.0, 2.5, 0.5, 9.0],
        }
    )
    sql.account.sql.write_table(sql.ctx, "points2", pa.Table.from_pandas(data))
    pair = sql(
        "SELECT * FROM points2, TABLE(MODEL(summary, v1)!summarize(k, v, top => 5) "
        "OVER (PARTITION BY k, r))"
    )
    assert pair.columns == ["k", "r", "rank", "v"]
    expected = in_process(sql, data, ["k", "r"], top=5)
    assert ordered(pair.rows) == expected
    assert len({(r[0], r[1]) for r in pair.rows}) == 5  # (a,x) (a,y) (b,x) (c,y) (NULL,x)

    exprs = sql(
        "SELECT * FROM points2, TABLE(MODEL(summary, v1)!summarize(k, v) "
        "OVER (PARTITION BY upper(k), r = 'x')) ORDER BY 1, 2"
    )
    assert exprs.columns == ["PARTITION_1", "PARTITION_2", "rank", "v"]
    assert [r[:2] for r in exprs.rows][:3] == [["A", False], ["A", True], ["B", True]]

    for over in ("", " OVER ()"):
        whole = sql(
            f"SELECT * FROM points2, TABLE(MODEL(summary, v1)!summarize(k, v, top => 2){over})"
        )
        assert whole.columns == ["rank", "v"]
        assert ordered(whole.rows) == in_process(sql, data, None, top=2)

    # ORDER BY inside OVER: each partition's rows arrive in that order
    by_order = sql(
        "SELECT r, first, n FROM points2, TABLE(MODEL(summary, v1)!first(k, v) "
        "OVER (PARTITION BY r ORDER BY v DESC)) ORDER BY r"
    )
    assert [list(r) for r in by_order.rows] == [["x", 9.0, 6], ["y", 7.0, 2]]
    ascending = sql(
        "SELECT first FROM points2, TABLE(MODEL(summary, v1)!first(k, v) OVER (ORDER BY v))"
    )
    assert [list(r) for r in ascending.rows] == [[0.5]]
