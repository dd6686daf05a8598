"""Custom models (``neve.CustomModel`` subclasses with ``@neve.inference_api`` methods).

Layout of the handler directory::

    model.pkl                 the instance, cloudpickled; its context and sub-models are
                              left out as persistent references, resolved at load
    artifacts/<name>/<file>   each artifact file or directory, copied
    models/<name>/            each sub-model, saved by its own handler

The class is pickled by value when it comes from a script, notebook or test module (any module
outside installed packages), so the model loads where that source does not exist.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
from pathlib import Path
from typing import Any, ClassVar

import cloudpickle
import pandas as pd

from neve.errors import InvalidArgumentError, ModelSerializationError, NeveError
from neve.models.base import ModelHandler, handler_by_type, handler_for_model, register_handler
from neve.models.custom import (
    CustomModel,
    ModelContext,
    inference_methods,
    method_params,
    partitioned_methods,
)
from neve.models.frameworks._util import (
    FreshClassUnpickler,
    pickle_user_code_by_value,
    qualified_name,
)

MODEL_FILE = "model.pkl"


@register_handler
class CustomModelHandler(ModelHandler):
    model_type = "custom"
    module = "neve"
    packages: ClassVar[list[str]] = []
    # User code decides what it runs on (it may hold a torch sub-model and move it to cuda).
    gpu_capable = True

    @classmethod
    def can_handle(cls, model: Any) -> bool:
        return isinstance(model, CustomModel)

    @classmethod
    def methods(cls, model: Any) -> list[str]:
        return inference_methods(model)

    @classmethod
    def function_types(cls, model: Any) -> dict[str, str]:
        return {name: "TABLE_FUNCTION" for name in partitioned_methods(model)}

    @classmethod
    def method_params(cls, model: Any, method: str) -> dict[str, Any]:
        return method_params(getattr(type(model), method))

    @classmethod
    def call_with_params(
        cls, model: Any, method: str, data: pd.DataFrame, params: dict[str, Any]
    ) -> Any:
        return getattr(model, method)(data, **params)

    @classmethod
    def extra_packages(cls, model: Any) -> list[str]:
        found: list[str] = []
        for sub in _context(model).models.values():
            for pkg in handler_for_model(sub).requirements(sub):
                if pkg not in found:
                    found.append(pkg)
        return found

    @classmethod
    def validate(cls, model: Any) -> None:
        name = type(model).__name__
        if not inference_methods(model):
            raise InvalidArgumentError(
                f"custom model {name} has no @neve.inference_api methods: decorate the methods "
                "to expose, e.g. `@neve.inference_api def predict(self, X)`"
            )
        ctx = _context(model)
        for sub_name, sub in ctx.models.items():
            try:
                handler = handler_for_model(sub)
                handler.validate(sub)
            except NeveError as exc:
                raise type(exc)(
                    f"custom model {name}, sub-model {sub_name!r}: {exc.message}"
                ) from None
        _dumps(model, ctx)  # fails now, naming the attribute, rather than inside a service

    @classmethod
    def save(cls, model: Any, path: Path) -> dict:
        ctx = _context(model)
        path.mkdir(parents=True)
        artifacts: dict[str, str] = {}
        for name, src in ctx.artifacts.items():
            source = Path(src)
            if not source.exists():
                raise InvalidArgumentError(
                    f"custom model {type(model).__name__}: artifact {name!r} path {src!r} no "
                    "longer exists"
                )
            dest = path / "artifacts" / name / source.name
            dest.parent.mkdir(parents=True)
            if source.is_dir():
                shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, dest)
            artifacts[name] = dest.relative_to(path).as_posix()
        models: dict[str, dict] = {}
        for name, sub in ctx.models.items():
            handler = handler_for_model(sub)
            try:
                options = handler.save(sub, path / "models" / name)
            except NeveError:
                raise
            except Exception as exc:
                raise ModelSerializationError(
                    f"custom model {type(model).__name__}: cannot save sub-model {name!r} "
                    f"({handler.model_type}): {exc}"
                ) from exc
            models[name] = {"model_type": handler.model_type, "options": options}
        (path / MODEL_FILE).write_bytes(_dumps(model, ctx))
        return {"class": qualified_name(model), "artifacts": artifacts, "models": models}

    @classmethod
    def load(cls, path: Path, options: dict, *, device: str = "cpu") -> Any:
        artifacts: dict[str, str | os.PathLike] = {
            name: str(path / rel) for name, rel in options.get("artifacts", {}).items()
        }
        models = {
            name: handler_by_type(spec["model_type"]).load(
                path / "models" / name, spec.get("options") or {}, device=device
            )
            for name, spec in options.get("models", {}).items()
        }
        ctx = ModelContext(artifacts=artifacts, models=models)
        refs: dict[str, Any] = {"context": ctx, "artifacts": ctx.artifacts, "models": ctx.models}
        refs.update({f"model:{name}": sub for name, sub in models.items()})
        with (path / MODEL_FILE).open("rb") as fh:
            return _RefUnpickler(fh, refs).load()

    @classmethod
    def call(cls, model: Any, method: str, data: pd.DataFrame) -> Any:
        return getattr(model, method)(data)


def _context(model: Any) -> ModelContext:
    ctx = getattr(model, "context", None)
    if isinstance(ctx, ModelContext):
        return ctx
    # A subclass that skipped super().__init__ may keep its context under another name.
    for value in getattr(model, "__dict__", {}).values():
        if isinstance(value, ModelContext):
            return value
    return ModelContext()


def _references(ctx: ModelContext) -> dict[int, str]:
    # The context, its dicts and each sub-model are saved separately; the pickle refers to them.
    refs = {id(ctx): "context", id(ctx.artifacts): "artifacts", id(ctx.models): "models"}
    refs.update({id(sub): f"model:{name}" for name, sub in ctx.models.items()})
    return refs


class _RefPickler(cloudpickle.Pickler):
    def __init__(self, file: io.BytesIO, refs: dict[int, str]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._refs = refs

    def persistent_id(self, obj: Any) -> str | None:
        return self._refs.get(id(obj))


class _RefUnpickler(FreshClassUnpickler):
    def __init__(self, file: Any, refs: dict[str, Any]) -> None:
        super().__init__(file)
        self._refs = refs

    def persistent_load(self, pid: str) -> Any:
        try:
            return self._refs[pid]
        except KeyError:
            raise pickle.UnpicklingError(f"unknown reference {pid!r} in custom model") from None


def _dumps(obj: Any, ctx: ModelContext) -> bytes:
    refs = _references(ctx)
    buf = io.BytesIO()
    try:
        with pickle_user_code_by_value():
            _RefPickler(buf, refs).dump(obj)
    except Exception as exc:
        raise ModelSerializationError(_unpicklable_message(obj, refs, exc)) from exc
    return buf.getvalue()


def _unpicklable_message(obj: Any, refs: dict[int, str], exc: Exception) -> str:
    """Name the attribute that cannot be pickled, so the user knows what to change."""
    name = type(obj).__name__
    for attr, value in vars(obj).items() if hasattr(obj, "__dict__") else []:
        try:
            with pickle_user_code_by_value():
                _RefPickler(io.BytesIO(), refs).dump(value)
        except Exception as attr_exc:
            return (
                f"custom model {name} cannot be saved: attribute {attr!r} holds a "
                f"{type(value).__name__} that cannot be pickled ({attr_exc}); create it lazily "
                "inside the method that uses it, or define __getstate__/__setstate__"
            )
    return f"custom model {name} cannot be pickled: {type(exc).__name__}: {exc}"
