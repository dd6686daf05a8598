"""scikit-learn estimators and pipelines."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import cloudpickle
import pandas as pd

from neve.models.base import ModelHandler, register_handler

CANDIDATE_METHODS = [
    "predict",
    "predict_proba",
    "predict_log_proba",
    "decision_function",
    "transform",
    "score_samples",
]


@register_handler
class SklearnHandler(ModelHandler):
    model_type = "sklearn"
    module = "sklearn"
    packages = ["scikit-learn"]

    @classmethod
    def can_handle(cls, model: Any) -> bool:
        if "sklearn" not in sys.modules:
            return False
        from sklearn.base import BaseEstimator

        mod = type(model).__module__
        return isinstance(model, BaseEstimator) and not mod.startswith(("xgboost", "lightgbm"))

    @classmethod
    def methods(cls, model: Any) -> list[str]:
        return [
            m
            for m in CANDIDATE_METHODS
            if callable(getattr(model, m, None)) and _available(model, m)
        ]

    @classmethod
    def save(cls, model: Any, path: Path) -> dict:
        path.mkdir(parents=True)
        with (path / "model.pkl").open("wb") as fh:
            cloudpickle.dump(model, fh)
        return {"feature_names_in": [str(c) for c in getattr(model, "feature_names_in_", [])]}

    @classmethod
    def load(cls, path: Path, options: dict, *, device: str = "cpu") -> Any:
        with (path / "model.pkl").open("rb") as fh:
            return cloudpickle.load(fh)

    @classmethod
    def call(cls, model: Any, method: str, data: pd.DataFrame) -> Any:
        # A model fitted on a DataFrame wants the same column names; one fitted on an array wants an array.
        x = data if getattr(model, "feature_names_in_", None) is not None else data.to_numpy()
        return getattr(model, method)(x)


def _available(model: Any, method: str) -> bool:
    # sklearn's available_if hides methods (e.g. predict_proba on SVC(probability=False)).
    try:
        getattr(model, method)
        return True
    except AttributeError:
        return False
