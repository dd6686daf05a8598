"""LightGBM: the scikit-learn API (LGBMClassifier, LGBMRegressor, ...) and ``lightgbm.Booster``.

A ``Booster`` is saved in LightGBM's native text format. The scikit-learn wrappers have no native
format that restores the wrapper itself (classes, objective, fitted state), so they are pickled,
as LightGBM's documentation recommends; LightGBM runs on CPU only here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import cloudpickle
import pandas as pd

from neve.errors import InvalidArgumentError
from neve.models.base import ModelHandler, register_handler
from neve.models.frameworks._util import align_columns, load_pickle, pickle_user_code_by_value

SKLEARN_METHODS = ["predict", "predict_proba"]
NATIVE_FILE = "model.txt"


@register_handler
class LightGBMHandler(ModelHandler):
    model_type = "lightgbm"
    module = "lightgbm"
    packages = ["lightgbm"]
    gpu_capable = False

    @classmethod
    def can_handle(cls, model: Any) -> bool:
        if "lightgbm" not in sys.modules:
            return False
        import lightgbm

        return isinstance(model, lightgbm.LGBMModel | lightgbm.Booster)

    @classmethod
    def methods(cls, model: Any) -> list[str]:
        if _is_booster(model):
            return ["predict"]
        return [m for m in SKLEARN_METHODS if callable(getattr(model, m, None))]

    @classmethod
    def extra_packages(cls, model: Any) -> list[str]:
        return [] if _is_booster(model) else ["scikit-learn"]

    @classmethod
    def validate(cls, model: Any) -> None:
        if not _is_booster(model) and not model.__sklearn_is_fitted__():
            raise InvalidArgumentError(
                f"LightGBM model {type(model).__name__} is not fitted: call fit() before logging it"
            )

    @classmethod
    def save(cls, model: Any, path: Path) -> dict:
        path.mkdir(parents=True)
        if _is_booster(model):
            model.save_model(str(path / NATIVE_FILE))
            return {"kind": "booster", "format": "text"}
        with (path / "model.pkl").open("wb") as fh, pickle_user_code_by_value():
            cloudpickle.dump(model, fh)
        return {"kind": "sklearn", "format": "pickle", "class": type(model).__name__}

    @classmethod
    def load(cls, path: Path, options: dict, *, device: str = "cpu") -> Any:
        import lightgbm

        if options.get("kind") == "booster":
            return lightgbm.Booster(model_file=str(path / NATIVE_FILE))
        with (path / "model.pkl").open("rb") as fh:
            return load_pickle(fh)

    @classmethod
    def call(cls, model: Any, method: str, data: pd.DataFrame) -> Any:
        booster = model if _is_booster(model) else model.booster_
        x = align_columns(data, _trained_names(booster))
        return getattr(model, method)(x)


def _trained_names(booster: Any) -> list[str] | None:
    # LightGBM names array-trained features Column_0, Column_1, ...: those came from an array.
    names = booster.feature_name()
    if all(n == f"Column_{i}" for i, n in enumerate(names)):
        return None
    return names


def _is_booster(model: Any) -> bool:
    import lightgbm

    return isinstance(model, lightgbm.Booster)
