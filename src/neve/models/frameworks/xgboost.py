"""XGBoost: the scikit-learn API (XGBClassifier, XGBRegressor, ...) and the native ``Booster``.

Both are saved in XGBoost's own UBJSON format (``model.ubj``), which later XGBoost versions load
and which needs no pickle. The sklearn wrapper's ``save_model`` also records its class count and
parameters, so loading into a fresh instance of the same class restores ``predict_proba``.
A subclass defined outside xgboost cannot be rebuilt from the native file and is pickled instead.
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
NATIVE_FILE = "model.ubj"


@register_handler
class XGBoostHandler(ModelHandler):
    model_type = "xgboost"
    module = "xgboost"
    packages = ["xgboost"]
    gpu_capable = True

    @classmethod
    def can_handle(cls, model: Any) -> bool:
        if "xgboost" not in sys.modules:
            return False
        import xgboost

        return isinstance(model, xgboost.XGBModel | xgboost.Booster)

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
        if _is_booster(model):
            return
        if not model.__sklearn_is_fitted__():
            raise InvalidArgumentError(
                f"XGBoost model {type(model).__name__} is not fitted: call fit() before logging it"
            )

    @classmethod
    def save(cls, model: Any, path: Path) -> dict:
        import xgboost

        path.mkdir(parents=True)
        if _is_booster(model):
            model.save_model(path / NATIVE_FILE)
            return {"kind": "booster", "format": "ubj"}
        model_cls = type(model)
        if getattr(xgboost, model_cls.__name__, None) is model_cls:
            model.save_model(path / NATIVE_FILE)
            return {"kind": "sklearn", "format": "ubj", "class": model_cls.__name__}
        with (path / "model.pkl").open("wb") as fh, pickle_user_code_by_value():
            cloudpickle.dump(model, fh)
        return {"kind": "sklearn", "format": "pickle", "class": model_cls.__qualname__}

    @classmethod
    def load(cls, path: Path, options: dict, *, device: str = "cpu") -> Any:
        import xgboost

        if options.get("kind") == "booster":
            booster = xgboost.Booster(model_file=str(path / NATIVE_FILE))
            # A model trained on a GPU records device=cuda; serve on the device asked for.
            booster.set_param({"device": device})
            return booster
        if options.get("format") == "pickle":
            with (path / "model.pkl").open("rb") as fh:
                model = load_pickle(fh)
        else:
            model = getattr(xgboost, options["class"])()
            model.load_model(path / NATIVE_FILE)
        model.set_params(device=device)
        return model

    @classmethod
    def call(cls, model: Any, method: str, data: pd.DataFrame) -> Any:
        import xgboost

        if _is_booster(model):
            x = align_columns(data, model.feature_names)
            if isinstance(x, pd.DataFrame):
                categorical = any(isinstance(t, pd.CategoricalDtype) for t in x.dtypes)
                dmatrix = xgboost.DMatrix(x, enable_categorical=categorical)
            else:
                dmatrix = xgboost.DMatrix(x)
            return model.predict(dmatrix)
        names = getattr(model, "feature_names_in_", None)
        x = align_columns(data, None if names is None else list(names))
        return getattr(model, method)(x)


def _is_booster(model: Any) -> bool:
    import xgboost

    return isinstance(model, xgboost.Booster)
