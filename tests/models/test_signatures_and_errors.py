"""Signatures inferred from every supported sample type, and bad input of every kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.linear_model import LinearRegression, LogisticRegression

import neve
from neve.errors import (
    InvalidArgumentError,
    NotSupportedError,
    ObjectNotFoundError,
    SignatureError,
)
from neve.models import ModelSignature, infer_signature, load_model, save_model


class Echo(neve.CustomModel):
    """Returns its input: shows exactly what the signature made of the sample."""

    @neve.inference_api
    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        return X.rename(columns=lambda c: f"out_{c}")


@pytest.fixture(scope="module")
def fitted() -> tuple[LinearRegression, pd.DataFrame]:
    rng = np.random.default_rng(0)
    x = pd.DataFrame({"age": rng.integers(18, 80, 50), "income": rng.normal(50, 10, 50)})
    return LinearRegression().fit(x, x["income"] * 2 + x["age"]), x


def signature_of(model, sample, tmp_path: Path) -> ModelSignature:
    save_model(model, tmp_path / "m", sample_input=sample)
    return next(iter(load_model(tmp_path / "m").methods.values())).signature


def test_signature_from_dataframe(tmp_path: Path) -> None:
    sample = pd.DataFrame(
        {
            "n": np.array([1, 2], dtype=np.int32),
            "x": [0.5, 1.5],
            "s": ["a", "b"],  # pandas 3: the str dtype
            "flag": [True, False],
        }
    )
    sig = signature_of(Echo(), sample, tmp_path)
    assert [(f.name, f.type) for f in sig.inputs] == [
        ("n", "INT32"),
        ("x", "DOUBLE"),
        ("s", "STRING"),
        ("flag", "BOOL"),
    ]
    assert sig.output_names == ["out_n", "out_x", "out_s", "out_flag"]


def test_signature_from_numpy_array(tmp_path: Path) -> None:
    sig = signature_of(Echo(), np.ones((3, 2), dtype=np.float32), tmp_path)
    assert [(f.name, f.type) for f in sig.inputs] == [
        ("input_feature_0", "FLOAT"),
        ("input_feature_1", "FLOAT"),
    ]


def test_signature_from_list_of_strings(tmp_path: Path) -> None:
    sig = signature_of(Echo(), ["one", "two"], tmp_path)
    assert [(f.name, f.type) for f in sig.inputs] == [("input_feature_0", "STRING")]


def test_signature_from_list_of_dicts(tmp_path: Path) -> None:
    sig = signature_of(
        Echo(), [{"city": "Oslo", "temp": 3.5}, {"city": "Rome", "temp": 18.0}], tmp_path
    )
    assert [(f.name, f.type) for f in sig.inputs] == [("city", "STRING"), ("temp", "DOUBLE")]


def test_infer_signature_and_variable_tensor_shape() -> None:
    sig = infer_signature(
        pd.DataFrame({"ids": [np.arange(3), np.arange(5)]}),
        pd.DataFrame({"vec": [np.zeros((3, 4), np.float32), np.zeros((5, 4), np.float32)]}),
    )
    assert [(f.type, f.shape) for f in sig.inputs] == [("INT64", [-1])]
    assert [(f.type, f.shape) for f in sig.outputs] == [("FLOAT", [-1, 4])]
    assert ModelSignature.from_dict(sig.to_dict()) == sig


def test_explicit_signature_is_used(fitted, tmp_path: Path) -> None:
    model, x = fitted
    sig = infer_signature(x, pd.DataFrame({"prediction": model.predict(x)}))
    save_model(model, tmp_path / "m", signatures={"predict": sig.to_dict()})
    loaded = load_model(tmp_path / "m")
    out = loaded.call("predict", x.head(3))
    assert list(out.columns) == ["prediction"]
    np.testing.assert_allclose(out["prediction"], model.predict(x.head(3)))


def test_unknown_method(fitted, tmp_path: Path) -> None:
    model, x = fitted
    with pytest.raises(InvalidArgumentError, match=r"no method\(s\) \['predict_proba'\]"):
        save_model(model, tmp_path / "bad", sample_input=x, target_methods=["predict_proba"])
    assert not (tmp_path / "bad").exists()
    save_model(model, tmp_path / "m", sample_input=x)
    with pytest.raises(ObjectNotFoundError, match=r"no method 'explain'.*\['predict'\]"):
        load_model(tmp_path / "m").call("explain", x)


def test_wrong_columns_and_types(fitted, tmp_path: Path) -> None:
    model, x = fitted
    save_model(model, tmp_path / "m", sample_input=x)
    loaded = load_model(tmp_path / "m")
    with pytest.raises(SignatureError, match=r"missing column\(s\) \['income'\]"):
        loaded.call("predict", pd.DataFrame({"age": [30], "salary": [1.0]}))
    bad = pd.DataFrame({"age": [30, "forty", 50], "income": [1.0, 2.0, 3.0]}, dtype=object)
    with pytest.raises(
        SignatureError, match=r"row 1, column 'age': expected INT64, got str 'forty'"
    ):
        loaded.call("predict", bad)
    with pytest.raises(SignatureError, match=r"row 0, column 'income'"):
        loaded.call("predict", [{"age": 30, "income": "lots"}])


def test_unsupported_object_and_bad_objects(fitted, tmp_path: Path) -> None:
    _, x = fitted
    with pytest.raises(NotSupportedError, match=r"unsupported model type builtins.dict.*sklearn"):
        save_model({"weights": [1, 2]}, tmp_path / "dict", sample_input=x)
    with pytest.raises(InvalidArgumentError, match="LogisticRegression is not fitted"):
        save_model(LogisticRegression(), tmp_path / "unfitted", sample_input=x)
    with pytest.raises(InvalidArgumentError, match="XGBRegressor is not fitted"):
        save_model(xgb.XGBRegressor(), tmp_path / "unfitted_xgb", sample_input=x)
    assert not any(tmp_path.iterdir())


def test_missing_sample_input(fitted, tmp_path: Path) -> None:
    model, _ = fitted
    with pytest.raises(SignatureError, match="pass sample_input_data or signatures"):
        save_model(model, tmp_path / "m")
