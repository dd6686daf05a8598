"""scikit-learn, XGBoost and LightGBM handlers: real models trained here, saved, loaded, called."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.datasets import make_classification, make_regression
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from neve.models import handler_for_model, load_model, save_model


@pytest.fixture(scope="module")
def classification() -> tuple[pd.DataFrame, np.ndarray]:
    x, y = make_classification(
        n_samples=200, n_features=4, n_informative=3, random_state=0, n_redundant=0
    )
    return pd.DataFrame(x, columns=["a", "b", "c", "d"]), y


@pytest.fixture(scope="module")
def regression() -> tuple[np.ndarray, np.ndarray]:
    x, y = make_regression(n_samples=200, n_features=3, random_state=0)
    return x.astype(np.float32), y


def roundtrip(model, tmp_path: Path, sample, **kwargs):
    manifest = save_model(model, tmp_path / "m", sample_input=sample, **kwargs)
    return manifest, load_model(tmp_path / "m", device="cpu")


def test_sklearn_pipeline_roundtrip(classification, tmp_path: Path) -> None:
    x, y = classification
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    manifest, loaded = roundtrip(model, tmp_path, x)

    assert manifest["model_type"] == "sklearn" and manifest["gpu_capable"] is False
    assert {"predict", "predict_proba", "decision_function"} <= set(loaded.methods)
    assert manifest["framework_packages"] == ["scikit-learn"]
    test = x.iloc[50:80]
    np.testing.assert_array_equal(
        loaded.call("predict", test)["output_feature_0"], model.predict(test)
    )
    np.testing.assert_allclose(
        loaded.call("predict_proba", test).to_numpy(), model.predict_proba(test)
    )
    sig = loaded.methods["predict_proba"].signature
    assert [(f.name, f.type) for f in sig.inputs] == [(c, "DOUBLE") for c in "abcd"]
    assert sig.output_names == ["output_feature_0", "output_feature_1"]


def test_sklearn_pipeline_with_xgboost_step_lists_xgboost(classification) -> None:
    x, y = classification
    model = make_pipeline(StandardScaler(), xgb.XGBClassifier(n_estimators=3)).fit(x, y)
    handler = handler_for_model(model)
    assert handler.model_type == "sklearn"
    assert handler.requirements(model) == ["scikit-learn", "xgboost"]


def test_xgboost_classifier_native_format(classification, tmp_path: Path) -> None:
    x, y = classification
    model = xgb.XGBClassifier(n_estimators=15, max_depth=3).fit(x, y)
    manifest, loaded = roundtrip(model, tmp_path, x)

    assert manifest["model_type"] == "xgboost" and manifest["gpu_capable"] is True
    assert manifest["handler_options"]["format"] == "ubj"
    assert (tmp_path / "m" / "model" / "model.ubj").exists()
    assert not list((tmp_path / "m" / "model").glob("*.pkl"))
    assert manifest["framework_packages"] == ["xgboost", "scikit-learn"]
    assert sorted(loaded.methods) == ["predict", "predict_proba"]
    assert type(loaded.raw) is xgb.XGBClassifier
    test = x.iloc[:40]
    np.testing.assert_array_equal(
        loaded.call("predict", test)["output_feature_0"], model.predict(test)
    )
    np.testing.assert_allclose(
        loaded.call("predict_proba", test).to_numpy(), model.predict_proba(test)
    )


def test_xgboost_regressor_from_numpy(regression, tmp_path: Path) -> None:
    x, y = regression
    model = xgb.XGBRegressor(n_estimators=10).fit(x, y)
    _, loaded = roundtrip(model, tmp_path, x)
    sig = loaded.methods["predict"].signature
    assert [(f.name, f.type) for f in sig.inputs] == [
        (f"input_feature_{i}", "FLOAT") for i in range(3)
    ]
    out = loaded.call("predict", x[:25])
    np.testing.assert_allclose(out["output_feature_0"], model.predict(x[:25]), rtol=1e-6)


def test_xgboost_booster(classification, tmp_path: Path) -> None:
    x, y = classification
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3},
        xgb.DMatrix(x, label=y),
        num_boost_round=10,
    )
    manifest, loaded = roundtrip(booster, tmp_path, x)
    assert manifest["handler_options"]["kind"] == "booster"
    assert manifest["framework_packages"] == ["xgboost"]
    assert list(loaded.methods) == ["predict"]
    expected = booster.predict(xgb.DMatrix(x.iloc[:30]))
    np.testing.assert_allclose(loaded.call("predict", x.iloc[:30])["output_feature_0"], expected)
    # Columns match by position, so a numpy batch with the signature's order works too.
    renamed = pd.DataFrame(x.iloc[:30].to_numpy(), columns=["A", "B", "C", "D"])
    np.testing.assert_allclose(loaded.call("predict", renamed)["output_feature_0"], expected)


def test_lightgbm_classifier(classification, tmp_path: Path) -> None:
    x, y = classification
    model = lgb.LGBMClassifier(n_estimators=15, min_child_samples=5, verbose=-1).fit(x, y)
    manifest, loaded = roundtrip(model, tmp_path, x)
    assert manifest["model_type"] == "lightgbm" and manifest["gpu_capable"] is False
    assert manifest["framework_packages"] == ["lightgbm", "scikit-learn"]
    assert sorted(loaded.methods) == ["predict", "predict_proba"]
    test = x.iloc[100:150]
    np.testing.assert_array_equal(
        loaded.call("predict", test)["output_feature_0"], model.predict(test)
    )
    np.testing.assert_allclose(
        loaded.call("predict_proba", test).to_numpy(), model.predict_proba(test)
    )


def test_lightgbm_regressor_from_numpy(regression, tmp_path: Path) -> None:
    x, y = regression
    model = lgb.LGBMRegressor(n_estimators=10, min_child_samples=5, verbose=-1).fit(x, y)
    _, loaded = roundtrip(model, tmp_path, x)
    np.testing.assert_allclose(
        loaded.call("predict", x[:20])["output_feature_0"], model.predict(x[:20])
    )


def test_lightgbm_booster_native_text(classification, tmp_path: Path) -> None:
    x, y = classification
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "min_data_in_leaf": 5},
        lgb.Dataset(x, label=y),
        num_boost_round=10,
    )
    manifest, loaded = roundtrip(booster, tmp_path, x)
    assert manifest["handler_options"] == {"kind": "booster", "format": "text"}
    assert (tmp_path / "m" / "model" / "model.txt").read_text().startswith("tree")
    np.testing.assert_allclose(
        loaded.call("predict", x.iloc[:30])["output_feature_0"], booster.predict(x.iloc[:30])
    )


class ClippedRegressor(xgb.XGBRegressor):
    """A user subclass: not rebuildable from the native file, so it is pickled (by value)."""

    def predict(self, X, **kwargs):
        return np.clip(super().predict(X, **kwargs), -10.0, 10.0)


def test_xgboost_user_subclass_is_pickled(regression, tmp_path: Path) -> None:
    x, y = regression
    model = ClippedRegressor(n_estimators=5).fit(x, y)
    manifest, loaded = roundtrip(model, tmp_path, x)
    assert manifest["model_type"] == "xgboost"
    assert manifest["handler_options"]["format"] == "pickle"
    out = loaded.call("predict", x[:20])["output_feature_0"]
    np.testing.assert_allclose(out, model.predict(x[:20]))
    assert out.abs().max() <= 10.0
