"""LightGBM: the scikit-learn API (LGBMClassifier, LGBMRegressor, ...) and ``lightgbm.Booster``.

A ``Booster`` is saved in LightGBM's native text format. The scikit-learn wrappers have no native
format that restores the wrapper itself (classes, objective, fitted state), so they are pickled,
as LightGBM's documentation recommends; LightGBM runs on CPU only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from neve.models.base import register_handler
from neve.models.frameworks._boosting import GradientBoostingHandler
from neve.models.frameworks._util import align_columns, dump_model_pickle, load_model_pickle

NATIVE_FILE = "model.txt"


@register_handler
class LightGBMHandler(GradientBoostingHandler):
    model_type = "lightgbm"
    module = "lightgbm"
    packages = ["lightgbm"]
    gpu_capable = False
    display_name = "LightGBM"
    sklearn_base = "LGBMModel"

    @classmethod
    def save(cls, model: Any, path: Path) -> dict:
        path.mkdir(parents=True)
        if cls._is_booster(model):
            model.save_model(str(path / NATIVE_FILE))
            return {"kind": "booster", "format": "text"}
        dump_model_pickle(model, path)
        return {"kind": "sklearn", "format": "pickle", "class": type(model).__name__}

    @classmethod
    def load(cls, path: Path, options: dict, *, device: str = "cpu") -> Any:
        import lightgbm

        if options.get("kind") == "booster":
            return lightgbm.Booster(model_file=str(path / NATIVE_FILE))
        return load_model_pickle(path)

    @classmethod
    def call(cls, model: Any, method: str, data: pd.DataFrame) -> Any:
        booster = model if cls._is_booster(model) else model.booster_
        x = align_columns(data, _trained_names(booster))
        return getattr(model, method)(x)


def _trained_names(booster: Any) -> list[str] | None:
    # LightGBM names array-trained features Column_0, Column_1, ...: those came from an array.
    names = booster.feature_name()
    if all(n == f"Column_{i}" for i, n in enumerate(names)):
        return None
    return names
