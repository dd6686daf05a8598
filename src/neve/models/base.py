"""The handler interface every framework implements, and the handler registry.

A handler knows how to save a model object to a directory, load it back, list its callable
methods, call a method on a DataFrame, and which packages it needs. Everything above handlers
(registry, server, SQL) talks only to ``neve.models.modeldir``'s ``save_model`` / ``load_model``
and the ``LoadedModel`` they return, so a new framework is one new handler module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd


class ModelHandler(ABC):
    #: Stable name stored in the manifest and the catalog ("sklearn", "xgboost", ...).
    model_type: ClassVar[str]
    #: Import name of the framework module, checked cheaply before importing it.
    module: ClassVar[str]
    #: Distribution names (PyPI) the handler needs at load time; pinned by the registry.
    packages: ClassVar[list[str]] = []
    #: Whether the framework can use a GPU for this model type.
    gpu_capable: ClassVar[bool] = False
    #: Whether signatures cannot be inferred without sample input (most need it).
    needs_sample_input: ClassVar[bool] = True
    #: Whether one call spreads over several cores well (torch's intra-op threads on matrix
    #: products): the inference server then gives a batch that computes alone every thread of
    #: the instance and batches side by side their share, instead of one thread per batch
    #: (trees, small models).
    threaded_calls: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def can_handle(cls, model: Any) -> bool:
        """True when ``model`` is an object of this framework."""

    @classmethod
    @abstractmethod
    def methods(cls, model: Any) -> list[str]:
        """Default target methods available on ``model`` (e.g. predict, predict_proba)."""

    @classmethod
    @abstractmethod
    def save(cls, model: Any, path: Path) -> dict:
        """Write ``model`` into the empty directory ``path``; return options needed to load it."""

    @classmethod
    @abstractmethod
    def load(cls, path: Path, options: dict, *, device: str = "cpu") -> Any:
        """Load the object saved by ``save``."""

    @classmethod
    @abstractmethod
    def call(cls, model: Any, method: str, data: pd.DataFrame) -> Any:
        """Call ``method`` on input columns ``data`` (signature order); return raw output.

        The raw output (array, DataFrame, list of vectors) is turned into output columns by
        ``neve.models.modeldir.to_output_frame`` with the signature's output names.
        """

    @classmethod
    def function_types(cls, model: Any) -> dict[str, str]:
        """Methods that are table functions ({method: "TABLE_FUNCTION"}); others are FUNCTIONs."""
        return {}

    @classmethod
    def method_params(cls, model: Any, method: str) -> dict[str, Any]:
        """Parameters ``method`` declares beyond its input ({name: default})."""
        return {}

    @classmethod
    def call_with_params(
        cls, model: Any, method: str, data: pd.DataFrame, params: dict[str, Any]
    ) -> Any:
        """``call`` with per-call parameter values (only handlers that declare params)."""
        from neve.errors import NotSupportedError

        raise NotSupportedError(f"{cls.model_type} model methods take no parameters")

    @classmethod
    def extra_packages(cls, model: Any) -> list[str]:
        """Packages needed beyond ``packages`` for this particular object (e.g. transformers)."""
        return []

    @classmethod
    def validate(cls, model: Any) -> None:
        """Raise a ``neve.errors`` exception when ``model`` cannot be saved (e.g. not fitted).

        Called by ``save_model`` before anything else, so a bad object fails at log time with a
        message naming the problem rather than later inside a service.
        """
        return None

    @classmethod
    def requirements(cls, model: Any) -> list[str]:
        """``packages`` plus ``extra_packages(model)``, de-duplicated, in order."""
        return list(dict.fromkeys([*cls.packages, *cls.extra_packages(model)]))


_HANDLERS: list[type[ModelHandler]] = []


def register_handler(handler: type[ModelHandler]) -> type[ModelHandler]:
    _HANDLERS.append(handler)
    return handler


def handlers() -> list[type[ModelHandler]]:
    """The registered handlers (``neve.models.frameworks`` registers the built-in ones; it is
    imported with ``neve.models``)."""
    return list(_HANDLERS)


def handler_for_model(model: Any) -> type[ModelHandler]:
    from neve.errors import NotSupportedError

    for handler in handlers():
        try:
            if handler.can_handle(model):
                return handler
        except Exception:  # a framework that fails to import cannot be this model's
            continue
    raise NotSupportedError(
        f"unsupported model type {type(model).__module__}.{type(model).__qualname__}; supported: "
        + ", ".join(h.model_type for h in handlers())
    )


def handler_by_type(model_type: str) -> type[ModelHandler]:
    from neve.errors import NotSupportedError

    for handler in handlers():
        if handler.model_type == model_type:
            return handler
    raise NotSupportedError(f"unknown model type {model_type!r}")
