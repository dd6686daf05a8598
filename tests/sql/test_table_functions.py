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
    with pytest.raises(ValueError, match="reads its rows from the table before it"):
        sql("SELECT * FROM TABLE(MODEL(summary, v1)!summarize(k, v) OVER (PARTITION BY k))")
    with pytest.raises(NotSupportedError, match="exactly one PARTITION BY"):
        sql(
            "SELECT * FROM points, TABLE(MODEL(summary, v1)!summarize(k, v) "
            "OVER (PARTITION BY k, v))"
        )
    with pytest.raises(SignatureError, match="not a table function"):
        sql("SELECT * FROM points, TABLE(MODEL(summary, v1)!scale(k, v) OVER (PARTITION BY k))")
    with pytest.raises(SignatureError, match="takes 2 argument"):
        sql("SELECT * FROM points, TABLE(MODEL(summary, v1)!summarize(v) OVER (PARTITION BY k))")
    with pytest.raises(ObjectNotFoundError, match="no method"):
        sql("SELECT * FROM points, TABLE(MODEL(summary, v1)!nope(k, v) OVER (PARTITION BY k))")
