"""Custom models: user Python classes with ``@inference_api`` methods.

Usage::

    import neve

    class Scaled(neve.CustomModel):
        def __init__(self, context: neve.ModelContext) -> None:
            super().__init__(context)
            self.factor = float(Path(context.path("factor")).read_text())

        @neve.inference_api
        def predict(self, X: pd.DataFrame) -> pd.DataFrame:
            clf = self.context.model("clf")
            return pd.DataFrame({"score": clf.predict(X) * self.factor})

    ctx = neve.ModelContext(artifacts={"factor": "factor.txt"}, models={"clf": fitted_sklearn})
    model = Scaled(ctx)

When saved, artifacts are copied into the model directory and sub-models are saved with their
own handlers; when loaded, ``self.context`` is a new ``ModelContext`` whose artifact paths point
into the model directory and whose models are the loaded sub-models. The instance itself (its
other attributes) is pickled, so everything it holds must be picklable: create locks, sockets
and clients lazily inside methods.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from neve.errors import InvalidArgumentError, ObjectNotFoundError

F = TypeVar("F", bound=Callable[..., Any])

INFERENCE_API_ATTR = "_neve_inference_api"
PARTITIONED_ATTR = "_neve_partitioned_api"
_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def inference_api(func: F) -> F:
    """Mark ``def method(self, X: pd.DataFrame) -> pd.DataFrame`` as callable on the model."""
    if not callable(func):
        raise InvalidArgumentError("@inference_api decorates a method")
    positional = [
        p
        for p in inspect.signature(func).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    if len(positional) < 2 and not any(p.kind == p.VAR_POSITIONAL for p in positional):
        raise InvalidArgumentError(
            f"@inference_api method {getattr(func, '__qualname__', func)!r} must take the input "
            "DataFrame: def method(self, X: pd.DataFrame) -> pd.DataFrame"
        )
    setattr(func, INFERENCE_API_ATTR, True)
    method_params(func)  # a parameter without a usable default fails here, at class definition
    return func


def partitioned_api(func: F) -> F:
    """Mark a table-function method: it receives all rows of one partition and returns any
    number of rows (``mv.run(df, function_name=..., partition_column=...)``, SQL
    ``TABLE(svc!method(...) OVER (PARTITION BY key))``)."""
    inference_api(func)
    setattr(func, PARTITIONED_ATTR, True)
    return func


def method_params(func: Callable[..., Any]) -> dict[str, Any]:
    """The method's parameters beyond the input frame: keyword arguments with defaults
    (``def predict(self, X, *, temperature: float = 1.0)``) -> {name: default}."""
    params: dict[str, Any] = {}
    positional_seen = 0
    for p in inspect.signature(func).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and positional_seen < 2:
            positional_seen += 1  # self and X
            continue
        if p.default is p.empty:
            raise InvalidArgumentError(
                f"method {getattr(func, '__qualname__', func)!r}: parameter {p.name!r} needs a "
                "default (params= values are optional per call)"
            )
        params[p.name] = p.default
    return params


def partitioned_methods(model_or_class: Any) -> list[str]:
    """Names of the ``@partitioned_api`` (table-function) methods, sorted."""
    cls = model_or_class if isinstance(model_or_class, type) else type(model_or_class)
    return [
        name
        for name in inference_methods(cls)
        if getattr(getattr(cls, name), PARTITIONED_ATTR, False)
    ]


def inference_methods(model_or_class: Any) -> list[str]:
    """Names of the ``@inference_api`` methods of a custom model (or its class), sorted."""
    cls = model_or_class if isinstance(model_or_class, type) else type(model_or_class)
    names = []
    for name in dir(cls):
        attr = getattr(cls, name, None)
        if callable(attr) and getattr(attr, INFERENCE_API_ATTR, False):
            names.append(name)
    return names


class ModelContext:
    """Files (``artifacts``) and sub-models (``models``) a custom model uses.

    Extra keyword arguments are sorted by value: a ``str`` or ``os.PathLike`` is an artifact,
    anything else a sub-model. Names are used as directory names, so they are simple words.
    """

    def __init__(
        self,
        artifacts: dict[str, str | os.PathLike] | None = None,
        models: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.artifacts: dict[str, str] = {}
        self.models: dict[str, Any] = {}
        for name, value in (artifacts or {}).items():
            self._add_artifact(name, value)
        for name, value in (models or {}).items():
            self._add_model(name, value)
        for name, value in kwargs.items():
            if isinstance(value, str | os.PathLike):
                self._add_artifact(name, value)
            else:
                self._add_model(name, value)

    def _add_artifact(self, name: str, value: str | os.PathLike) -> None:
        _check_key("artifact", name, self)
        if not isinstance(value, str | os.PathLike):
            raise InvalidArgumentError(
                f"artifact {name!r} must be a file or directory path, got {type(value).__name__}"
            )
        path = Path(value)
        if not path.exists():
            raise InvalidArgumentError(f"artifact {name!r}: path {str(path)!r} does not exist")
        self.artifacts[name] = str(path.resolve())

    def _add_model(self, name: str, value: Any) -> None:
        _check_key("model", name, self)
        if value is None:
            raise InvalidArgumentError(f"sub-model {name!r} is None")
        self.models[name] = value

    def path(self, name: str) -> str:
        """Absolute path of the artifact ``name`` (inside the model directory once loaded)."""
        try:
            return self.artifacts[name]
        except KeyError:
            raise ObjectNotFoundError(
                f"model context has no artifact {name!r}; artifacts: {sorted(self.artifacts)}"
            ) from None

    def model(self, name: str) -> Any:
        """The sub-model ``name`` (the framework object: a fitted estimator, a module...)."""
        try:
            return self.models[name]
        except KeyError:
            raise ObjectNotFoundError(
                f"model context has no model {name!r}; models: {sorted(self.models)}"
            ) from None

    # The reference API's spelling.
    model_ref = model

    def __getitem__(self, name: str) -> Any:
        if name in self.artifacts:
            return self.artifacts[name]
        if name in self.models:
            return self.models[name]
        raise ObjectNotFoundError(
            f"model context has no artifact or model {name!r}; artifacts: "
            f"{sorted(self.artifacts)}, models: {sorted(self.models)}"
        )

    def __repr__(self) -> str:
        return f"ModelContext(artifacts={sorted(self.artifacts)}, models={sorted(self.models)})"


class CustomModel:
    """Base class of custom models; mark callable methods with ``@inference_api`` (one output
    row per input row) or ``@partitioned_api`` (a table function over one partition)."""

    def __init__(self, context: ModelContext | None = None) -> None:
        if context is not None and not isinstance(context, ModelContext):
            raise InvalidArgumentError(
                f"{type(self).__name__}: context must be a neve.ModelContext, got "
                f"{type(context).__name__}"
            )
        self.context = context if context is not None else ModelContext()


def _check_key(kind: str, name: Any, ctx: ModelContext) -> None:
    if not isinstance(name, str) or not _KEY.match(name):
        raise InvalidArgumentError(
            f"{kind} name {name!r} is not valid: use letters, digits, '_', '-' and '.'"
        )
    if name in ctx.artifacts or name in ctx.models:
        raise InvalidArgumentError(f"model context already has an entry named {name!r}")
