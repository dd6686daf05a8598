"""Warehouse model functions (MODEL(m, v)!METHOD) and model statements, on a real registry."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from neve.errors import (
    InvalidStateError,
    NotSupportedError,
    ObjectNotFoundError,
    SignatureError,
)
from neve.models import load_model, save_model

pytestmark = pytest.mark.e2e  # starts processes: see the Development section


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Two saved versions of a small classifier (the second trained on other labels)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    train = pd.DataFrame({"A": rng.normal(size=300), "B": rng.normal(size=300)})
    dirs = []
    for k, labels in enumerate([train["A"] > 0, train["B"] > 0]):
        model = LogisticRegression().fit(train, labels.astype(int))
        path = tmp_path_factory.mktemp(f"v{k}") / "m"
        save_model(model, path, sample_input=train, target_methods=["predict", "predict_proba"])
        dirs.append(path)
    return dirs


@pytest.fixture
def registry(sql, account, saved):
    sql("CREATE DATABASE ml")
    reg = account.registry
    reg.log_model(sql.ctx, "ML", "PUBLIC", "CLASSIFIER", "V1", saved[0])
    reg.log_model(sql.ctx, "ML", "PUBLIC", "CLASSIFIER", "V2", saved[1])
    reg.log_model(
        sql.ctx,
        "ML",
        "PUBLIC",
        "SERVICE_ONLY",
        "V1",
        saved[0],
        pip_requirements=["some-private-package==1.0"],
    )
    frame = pd.DataFrame({"a": np.linspace(-2, 2, 5000), "b": np.linspace(3, -3, 5000)})
    account.sql.write_table(sql.ctx, "features", pa.Table.from_pandas(frame))
    sql.frame = frame
    return sql


def test_model_function_equals_the_in_process_run(registry, saved) -> None:
    frame = registry.frame
    result = registry("SELECT MODEL(ml.public.classifier, v1)!predict(a, b) AS y FROM features")
    expected = load_model(saved[0]).call("predict", frame).iloc[:, 0].to_numpy()
    np.testing.assert_array_equal([r[0] for r in result.rows], expected)
    assert result.stats == {"batches": 3, "rows": 5000}  # one model call per DuckDB vector
    # the default version (the first logged), a struct for several outputs, aliases
    proba = registry(
        "SELECT MODEL(classifier)!PREDICT_PROBA(a, b)['output_feature_1'] AS p, "
        "MODEL(classifier, LAST)!PREDICT_PROBA(a, b)['output_feature_1'] AS q FROM features"
    )
    for k, column in enumerate(("p", "q")):
        expected_k = load_model(saved[k]).call("predict_proba", frame)["output_feature_1"]
        np.testing.assert_allclose(proba.arrow.column(column).to_numpy(), expected_k.to_numpy())
    registry.account.registry.set_alias(registry.ctx, "classifier", "V1", "prod")
    first = registry.rows("SELECT MODEL(classifier, prod)!predict(a, b) FROM features LIMIT 3")
    assert [r[0] for r in first] == list(expected[:3])
    assert registry.rows("SELECT MODEL(classifier, FIRST)!predict(1.0, 2.0)") == [[1]]


def test_model_function_errors(registry) -> None:
    with pytest.raises(NotSupportedError, match="cannot run in the warehouse.*create_service"):
        registry("SELECT MODEL(service_only, v1)!predict(a, b) FROM features")
    with pytest.raises(SignatureError, match=r"takes 2 argument\(s\) \(A DOUBLE, B DOUBLE\)"):
        registry("SELECT MODEL(classifier, v1)!predict(a) FROM features")
    with pytest.raises(ObjectNotFoundError, match="has no method 'explain'"):
        registry("SELECT MODEL(classifier, v1)!explain(a, b) FROM features")
    with pytest.raises(ObjectNotFoundError, match="has no version or alias V9"):
        registry("SELECT MODEL(classifier, v9)!predict(a, b) FROM features")
    with pytest.raises(ObjectNotFoundError, match=r"model ML\.PUBLIC\.NOPE does not exist"):
        registry("SELECT MODEL(nope)!predict(a, b) FROM features")


def test_model_statements(registry) -> None:
    shown = registry("SHOW MODELS")
    names = [r[shown.columns.index("name")] for r in shown.rows]
    assert names == ["CLASSIFIER", "SERVICE_ONLY"]
    assert [r[shown.columns.index("name")] for r in registry("SHOW MODELS LIKE 'cl%'").rows] == [
        "CLASSIFIER"
    ]
    assert len(registry("SHOW MODELS IN ACCOUNT").rows) == 2
    versions = registry("SHOW VERSIONS IN MODEL ml.public.classifier")
    assert [r[versions.columns.index("name")] for r in versions.rows] == ["V1", "V2"]
    with pytest.raises(InvalidStateError, match="default version"):
        registry("ALTER MODEL classifier DROP VERSION v1")
    registry("ALTER MODEL classifier SET DEFAULT_VERSION = v2")
    registry("ALTER MODEL classifier DROP VERSION v1")
    versions = registry("SHOW VERSIONS IN MODEL classifier")
    assert [r[versions.columns.index("name")] for r in versions.rows] == ["V2"]
    registry("DROP MODEL service_only")
    registry("DROP MODEL IF EXISTS service_only")
    with pytest.raises(ObjectNotFoundError):
        registry("DROP MODEL service_only")
    assert [r[shown.columns.index("name")] for r in registry("SHOW MODELS").rows] == ["CLASSIFIER"]


def test_concurrent_queries_each_get_their_own_functions(registry, saved) -> None:
    from concurrent.futures import ThreadPoolExecutor

    frame = registry.frame
    expected = {k: load_model(saved[k]).call("predict", frame).iloc[:, 0].sum() for k in (0, 1)}
    queries = [
        (
            k,
            f"SELECT sum(MODEL(classifier, {'FIRST' if k == 0 else 'LAST'})!predict(a, b)) "
            "FROM features",
        )
        for k in (0, 1, 0, 1, 0, 1)
    ]
    with ThreadPoolExecutor(6) as pool:
        results = list(
            pool.map(lambda q: (q[0], registry.account.sql.execute(registry.ctx, q[1])), queries)
        )
    for k, result in results:
        assert result.rows == [[expected[k]]]
