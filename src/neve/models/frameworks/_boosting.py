"""What the gradient-boosting handlers (XGBoost, LightGBM) share.

Both frameworks offer a native ``Booster`` and scikit-learn wrappers (``XGBClassifier``,
``LGBMRegressor``, ...) over it. A booster exposes ``predict`` only and needs no scikit-learn; a
wrapper exposes ``predict``/``predict_proba``, must be fitted before it is logged, and brings
scikit-learn in. Subclasses say how each saves, loads and is called.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any, ClassVar

from neve.errors import InvalidArgumentError
from neve.models.base import ModelHandler

SKLEARN_METHODS = ["predict", "predict_proba"]


class GradientBoostingHandler(ModelHandler):
    """A handler for a framework with a ``Booster`` class and scikit-learn wrappers."""

    #: The framework's name in messages ("XGBoost").
    display_name: ClassVar[str]
    #: The framework's base class of its scikit-learn wrappers ("XGBModel").
    sklearn_base: ClassVar[str]

    @classmethod
    def _framework(cls) -> ModuleType:
        return importlib.import_module(cls.module)

    @classmethod
    def _is_booster(cls, model: Any) -> bool:
        return isinstance(model, cls._framework().Booster)

    @classmethod
    def can_handle(cls, model: Any) -> bool:
        if cls.module not in sys.modules:
            return False
        framework = cls._framework()
        return isinstance(model, getattr(framework, cls.sklearn_base) | framework.Booster)

    @classmethod
    def methods(cls, model: Any) -> list[str]:
        if cls._is_booster(model):
            return ["predict"]
        return [m for m in SKLEARN_METHODS if callable(getattr(model, m, None))]

    @classmethod
    def extra_packages(cls, model: Any) -> list[str]:
        return [] if cls._is_booster(model) else ["scikit-learn"]

    @classmethod
    def validate(cls, model: Any) -> None:
        if not cls._is_booster(model) and not model.__sklearn_is_fitted__():
            raise InvalidArgumentError(
                f"{cls.display_name} model {type(model).__name__} is not fitted: "
                "call fit() before logging it"
            )
