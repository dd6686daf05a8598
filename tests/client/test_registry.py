"""The client registry (Registry, Model, ModelVersion) over real HTTP to the registry routes."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

import neve
from neve.errors import (
    InvalidArgumentError,
    InvalidIdentifierError,
    ModelSerializationError,
    NotSupportedError,
    ObjectExistsError,
    ObjectNotFoundError,
    SignatureError,
)
from neve.models import directory_digest

pytestmark = pytest.mark.e2e  # starts processes: see the Development section


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(1)
    x = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60)})
    return x, 2.0 * x["a"] - x["b"] + 1.0


@pytest.fixture(scope="module")
def model(data) -> LinearRegression:
    x, y = data
    return LinearRegression().fit(x, y)


@pytest.fixture(scope="module")
def reg(served_account) -> neve.Registry:
    session, _ = served_account
    return neve.Registry(session, database_name="ml", schema_name="registry")


def stored_keys(served_account) -> list[str]:
    return served_account[1].registry.store.keys()


def test_log_run_and_browse(reg, model, data, served_account) -> None:
    x, _ = data
    mv = reg.log_model(
        model,
        model_name="forecast",
        version_name="v1",
        conda_dependencies=["scikit-learn"],
        sample_input_data=x,
        comment="linear baseline",
        metrics={"r2": 0.99},
    )
    assert isinstance(mv, neve.ModelVersion) and mv.version_name == "V1"
    assert mv.fully_qualified_model_name == "ML.REGISTRY.FORECAST"
    assert mv.comment == "linear baseline" and mv.show_metrics() == {"r2": 0.99}
    assert mv.target_platforms == ["WAREHOUSE", "SERVICE"]

    test = x.iloc[:7]
    out = mv.run(test, function_name="predict")
    assert list(out.columns) == ["a", "b", "output_feature_0"]
    np.testing.assert_allclose(out["output_feature_0"], model.predict(test))
    pd.testing.assert_frame_equal(out[["a", "b"]], test)
    # one function: function_name may be left out; names match case-insensitively
    np.testing.assert_allclose(mv.run(test)["output_feature_0"], model.predict(test))
    np.testing.assert_allclose(
        mv.run(test, function_name="PREDICT")["output_feature_0"], model.predict(test)
    )

    # positional input (a numpy array, a list of rows) is matched to the signature by position
    np.testing.assert_allclose(
        mv.run(test.to_numpy())["output_feature_0"], model.predict(test), rtol=1e-12
    )
    assert list(mv.run([[1.0, 2.0]]).columns) == ["a", "b", "output_feature_0"]

    functions = mv.show_functions()
    assert [(f["name"], f["target_method"]) for f in functions] == [("PREDICT", "predict")]
    assert functions[0]["signature"].input_names == ["a", "b"]
    assert functions[0]["target_method_function_type"] == "FUNCTION"

    shown = reg.show_models()
    assert isinstance(shown, pd.DataFrame)
    assert {"created_on", "name", "database_name", "schema_name", "owner"} <= set(shown.columns)
    assert "FORECAST" in set(shown["name"])
    m = reg.get_model("forecast")
    assert m in reg.models()
    versions = m.show_versions()
    assert isinstance(versions, pd.DataFrame) and list(versions["name"]) == ["V1"]
    assert m.default == mv and m.version("v1") == mv and m.versions() == [mv]


def test_versions_defaults_aliases_tags_metrics(reg, model, data) -> None:
    x, _ = data
    first = reg.log_model(model, "ranker", sample_input_data=x)
    second = reg.log_model(model, "ranker", sample_input_data=x)
    assert (first.version_name, second.version_name) == ("V1", "V2")
    m = reg.get_model("ranker")
    assert m.default == first
    m.default = second
    assert m.default == second and m.last() == second and m.first() == first

    second.set_alias("production")
    assert m.version("production") == second and second.aliases == ["PRODUCTION"]
    with pytest.raises(ObjectExistsError, match="alias PRODUCTION .* already names version V2"):
        first.set_alias("production")
    second.unset_alias("production")
    with pytest.raises(ObjectNotFoundError, match="no version or alias PRODUCTION"):
        m.version("production")

    first.set_metric("rmse", np.float64(0.5))
    assert first.get_metric("rmse") == 0.5
    first.delete_metric("rmse")
    with pytest.raises(ObjectNotFoundError, match="no metric 'rmse'"):
        first.get_metric("rmse")

    m.set_tag("stage", "experimental")
    assert m.get_tag("stage") == "experimental" and m.show_tags() == {"STAGE": "experimental"}
    m.unset_tag("stage")
    assert m.get_tag("stage") is None
    m.comment = "ranks things"
    first.comment = "first try"
    assert m.comment == "ranks things" and first.comment == "first try"

    m.delete_version("v1")
    assert m.versions() == [second]
    reg.delete_model("ranker")
    with pytest.raises(ObjectNotFoundError, match="model ML.REGISTRY.RANKER does not exist"):
        reg.get_model("ranker")


def test_export_load_and_cache(reg, model, data, served_account, tmp_path: Path) -> None:
    session, _ = served_account
    x, _ = data
    mv = reg.log_model(model, "exported", sample_input_data=x)
    target = mv.export(tmp_path / "out")
    assert (target / "manifest.json").is_file()
    digest = mv._describe()["artifact_sha256"]
    assert directory_digest(target) == digest
    with pytest.raises(InvalidArgumentError, match="not an empty directory"):
        mv.export(target)

    loaded = mv.load()
    assert isinstance(loaded, LinearRegression) and loaded is not model
    np.testing.assert_allclose(loaded.predict(x), model.predict(x))
    mv.run(x.iloc[:2])
    assert (Path(session.account_home) / "cache" / "models" / digest / "manifest.json").is_file()


def test_quoted_mixed_case_names_travel_in_urls(reg, model, data) -> None:
    x, _ = data
    mv = reg.log_model(model, '"My Model"', version_name='"First Try"', sample_input_data=x)
    assert mv.model_name == "My Model" and mv.version_name == "First Try"
    assert mv.fully_qualified_model_name == 'ML.REGISTRY."My Model"'
    assert mv.run(x.iloc[:3]).shape == (3, 3)
    assert reg.get_model('"My Model"').version('"First Try"') == mv
    with pytest.raises(ObjectNotFoundError):
        reg.get_model("my_model")  # unquoted: MY_MODEL, another name


def test_bad_input_is_named_and_leaves_nothing(reg, model, data, served_account) -> None:
    x, y = data
    mv = reg.log_model(model, "strict", version_name="v1", sample_input_data=x)
    keys = stored_keys(served_account)

    with pytest.raises(ObjectNotFoundError, match=r"STRICT version V1 has no function 'score'"):
        mv.run(x, function_name="score")
    with pytest.raises(SignatureError, match=r"STRICT version V1: .*missing column\(s\) \['b'\]"):
        mv.run(x[["a"]])
    with pytest.raises(SignatureError, match=r"column 'a': expected DOUBLE, got str"):
        mv.run(pd.DataFrame({"a": ["x", "y"], "b": [1.0, 2.0]}, dtype=object))

    with pytest.raises(ObjectExistsError, match=r"STRICT already has a version V1"):
        reg.log_model(model, "strict", version_name="V1", sample_input_data=x)
    with pytest.raises(InvalidIdentifierError, match="invalid model name 'no good'"):
        reg.log_model(model, "no good", sample_input_data=x)
    with pytest.raises(InvalidIdentifierError, match="invalid version name '2nd'"):
        reg.log_model(model, "strict", version_name="2nd", sample_input_data=x)

    unpicklable = LogisticRegression().fit(x, (y > 0).astype(int))
    unpicklable.lock = threading.Lock()  # cannot be pickled
    with pytest.raises(
        ModelSerializationError, match=r"cannot log model ML\.REGISTRY\.LOCKED: .*pickle"
    ):
        reg.log_model(unpicklable, "locked", sample_input_data=x)
    with pytest.raises(
        SignatureError, match=r"cannot log model ML\.REGISTRY\.NOSAMPLE: .*sample_input_data"
    ):
        reg.log_model(model, "nosample")
    with pytest.raises(NotSupportedError, match="unsupported model type builtins.dict"):
        reg.log_model({"not": "a model"}, "dict_model", sample_input_data=x)

    assert stored_keys(served_account) == keys
    assert set(reg.show_models()["name"]) & {"LOCKED", "NOSAMPLE", "DICT_MODEL", "NO GOOD"} == set()
    assert [v.version_name for v in reg.get_model("strict").versions()] == ["V1"]


def test_service_only_model_says_why_it_cannot_run_here(reg, model, data) -> None:
    x, _ = data
    mv = reg.log_model(model, "pipdep", sample_input_data=x, pip_requirements=["requests>=2"])
    assert mv.target_platforms == ["SERVICE"]
    with pytest.raises(NotSupportedError) as info:
        mv.run(x)
    message = str(info.value)
    assert "PIPDEP version V1 cannot run in this process" in message
    assert "pip requirement(s) requests>=2 are pip-only" in message
    assert "create_service" in message

    with pytest.raises(InvalidArgumentError, match="cannot target WAREHOUSE: pip requirement"):
        reg.log_model(
            model,
            "pipdep",
            sample_input_data=x,
            pip_requirements=["requests"],
            target_platforms=["WAREHOUSE"],
        )
    assert len(reg.get_model("pipdep").versions()) == 1


def test_registry_needs_a_schema_and_lends_it_to_a_session_without_one(
    served_account, model, data
) -> None:
    session, _ = served_account
    with neve.connect(session.account_home) as fresh:  # no current database or schema
        with pytest.raises(InvalidArgumentError, match="Registry needs a database and a schema"):
            neve.Registry(fresh)
        reg = neve.Registry(fresh, database_name="ctx_db", schema_name="models")
        # the session now works in the registry's schema (it need not exist yet)
        assert (fresh.current_database, fresh.current_schema) == ("CTX_DB", "MODELS")
        assert fresh.sql("SELECT 1 AS x").collect()[0].x == 1
        reg.log_model(model, "lin_ctx", sample_input_data=data[0])
        assert fresh.sql("SHOW MODELS").collect()[0].name == "LIN_CTX"  # in the current schema
        fresh.sql("CREATE TABLE feats AS SELECT 2.0 AS x").collect()  # unqualified: CTX_DB.MODELS
        assert fresh.sql("SELECT x FROM ctx_db.models.feats").collect()[0].x == 2.0
        # a schema chosen with USE stays: another registry does not take it over
        fresh.use_schema("ctx_db.public")
        neve.Registry(fresh, database_name="ml", schema_name="other")
        assert (fresh.current_database, fresh.current_schema) == ("CTX_DB", "PUBLIC")
