"""scikit-learn estimators and pipelines."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd

from neve.errors import InvalidArgumentError
from neve.models.base import ModelHandler, register_handler
from neve.models.frameworks._util import align_columns, dump_model_pickle, load_model_pickle

CANDIDATE_METHODS = [
    "predict",
    "predict_proba",
    "predict_log_proba",
    "decision_function",
    "transform",
    "score_samples",
]

# Top-level module of an estimator step -> the distribution that provides it.
_STEP_PACKAGES = {"xgboost": "xgboost", "lightgbm": "lightgbm"}


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

        from neve.models.custom import CustomModel

        if not isinstance(model, BaseEstimator) or isinstance(model, CustomModel):
            return False
        # XGBoost and LightGBM wrappers (and user subclasses of them) have their own handlers.
        xgb, lgb = sys.modules.get("xgboost"), sys.modules.get("lightgbm")
        if xgb is not None and isinstance(model, getattr(xgb, "XGBModel", ())):
            return False
        return not (lgb is not None and isinstance(model, getattr(lgb, "LGBMModel", ())))

    @classmethod
    def methods(cls, model: Any) -> list[str]:
        return [
            m
            for m in CANDIDATE_METHODS
            if callable(getattr(model, m, None)) and _available(model, m)
        ]

    @classmethod
    def validate(cls, model: Any) -> None:
        from sklearn.exceptions import NotFittedError
        from sklearn.utils.validation import check_is_fitted

        try:
            check_is_fitted(model)
        except NotFittedError:
            raise InvalidArgumentError(
                f"scikit-learn model {type(model).__name__} is not fitted: call fit() before "
                "logging it"
            ) from None

    @classmethod
    def extra_packages(cls, model: Any) -> list[str]:
        # A pipeline may hold XGBoost/LightGBM estimators as steps; they are pickled with it.
        found = []
        try:
            params = model.get_params(deep=True).values()
        except Exception:
            return []
        for value in params:
            root = type(value).__module__.split(".", 1)[0]
            if root in _STEP_PACKAGES and _STEP_PACKAGES[root] not in found:
                found.append(_STEP_PACKAGES[root])
        return found

    @classmethod
    def save(cls, model: Any, path: Path) -> dict:
        path.mkdir(parents=True)
        dump_model_pickle(model, path)
        return {"feature_names_in": [str(c) for c in getattr(model, "feature_names_in_", [])]}

    @classmethod
    def load(cls, path: Path, options: dict, *, device: str = "cpu") -> Any:
        return load_model_pickle(path)

    @classmethod
    def call(cls, model: Any, method: str, data: pd.DataFrame) -> Any:
        # A model fitted on a DataFrame wants the same column names; one fitted on an array wants an array.
        names = getattr(model, "feature_names_in_", None)
        return getattr(model, method)(align_columns(data, None if names is None else list(names)))


def _available(model: Any, method: str) -> bool:
    # sklearn's available_if hides methods (e.g. predict_proba on SVC(probability=False)).
    try:
        getattr(model, method)
        return True
    except AttributeError:
        return False
