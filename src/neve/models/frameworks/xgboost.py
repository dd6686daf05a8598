"""XGBoost: the scikit-learn API (XGBClassifier, XGBRegressor, ...) and the native ``Booster``.

Both are saved in XGBoost's own UBJSON format (``model.ubj``), which later XGBoost versions load
and which needs no pickle. The sklearn wrapper's ``save_model`` also records its class count and
parameters, so loading into a fresh instance of the same class restores ``predict_proba``.
A subclass defined outside xgboost cannot be rebuilt from the native file and is pickled instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from neve.models.base import register_handler
from neve.models.frameworks._boosting import GradientBoostingHandler
from neve.models.frameworks._util import align_columns, dump_model_pickle, load_model_pickle

NATIVE_FILE = "model.ubj"


@register_handler
class XGBoostHandler(GradientBoostingHandler):
    model_type = "xgboost"
    module = "xgboost"
    packages = ["xgboost"]
    gpu_capable = True
    display_name = "XGBoost"
    sklearn_base = "XGBModel"

    @classmethod
    def save(cls, model: Any, path: Path) -> dict:
        import xgboost

        path.mkdir(parents=True)
        if cls._is_booster(model):
            model.save_model(path / NATIVE_FILE)
            return {"kind": "booster", "format": "ubj"}
        model_cls = type(model)
        if getattr(xgboost, model_cls.__name__, None) is model_cls:
            model.save_model(path / NATIVE_FILE)
            return {"kind": "sklearn", "format": "ubj", "class": model_cls.__name__}
        dump_model_pickle(model, path)
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
            model = load_model_pickle(path)
        else:
            model = getattr(xgboost, options["class"])()
            model.load_model(path / NATIVE_FILE)
        model.set_params(device=device)
        return model

    @classmethod
    def call(cls, model: Any, method: str, data: pd.DataFrame) -> Any:
        import xgboost

        if cls._is_booster(model):
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
