"""Helpers shared by handlers: shipping user code by value, pickling a model, aligning features.

A model class defined in a notebook, a script (``__main__``) or a test module is not importable
where the model is served. cloudpickle can serialize such code *by value* (the class body travels
inside the pickle); ``pickle_user_code_by_value`` turns that on for every loaded module that is
not part of an installed distribution or the standard library, for the duration of one dump.

Loading such a pickle in the process that wrote it is a trap: cloudpickle then hands back the
*original* class and overwrites its methods with rebuilt copies (whose globals are a detached
dict, and whose source ``inspect``/TorchScript can no longer find). ``FreshClassUnpickler``
builds a new class instead, so loading a model never changes the caller's classes.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import cloudpickle
import pandas as pd


@cache
def _installed_roots() -> tuple[str, ...]:
    # Where the interpreter and installed distributions live: code there is importable anywhere
    # the model's environment is rebuilt, so it is pickled by reference.
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    return tuple(os.path.realpath(r) + os.sep for r in roots if r)


def is_user_module(name: str) -> bool:
    """True for a module that exists only on this machine (a script, notebook or test module)."""
    top = name.split(".", 1)[0]
    if top in sys.stdlib_module_names or top in {"neve", "builtins"}:
        return False
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    if module is None or not isinstance(file, str):
        return False
    return _is_user_file(file)


@cache
def _is_user_file(file: str) -> bool:
    path = os.path.realpath(file)
    parts = path.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return False
    return not path.startswith(_installed_roots())


# cloudpickle's by-value registry is process-global: one dump at a time registers and
# unregisters, so a concurrent save never sees another save's registrations vanish midway.
_BY_VALUE_LOCK = threading.RLock()


@contextmanager
def pickle_user_code_by_value() -> Iterator[None]:
    """Within the block, cloudpickle serializes classes/functions of user modules by value."""
    with _BY_VALUE_LOCK, _registered_user_modules():
        yield


@contextmanager
def _registered_user_modules() -> Iterator[None]:
    registered = []
    already = cloudpickle.list_registry_pickle_by_value()  # the caller's own: leave them be
    for name in list(sys.modules):
        if name == "__main__" or name in already or not is_user_module(name):
            continue  # cloudpickle always ships __main__ by value
        try:
            cloudpickle.register_pickle_by_value(sys.modules[name])
        except ValueError:  # removed from sys.modules meanwhile
            continue
        registered.append(name)
    try:
        yield
    finally:
        for name in registered:
            module = sys.modules.get(name)
            if module is not None:
                try:
                    cloudpickle.unregister_pickle_by_value(module)
                except ValueError:
                    pass


def align_columns(data: pd.DataFrame, feature_names: list[str] | None) -> Any:
    """Input for a model trained with ``feature_names``: a DataFrame, or an array (None: the
    model was trained on an array).

    Signature columns may carry other names than the training frame (e.g. a numpy sample gives
    ``input_feature_0``...); columns are matched by position, as the signature defines order.
    """
    if not feature_names:
        return data.to_numpy()
    names = [str(n) for n in feature_names]
    if list(map(str, data.columns)) == names or len(names) != len(data.columns):
        return data
    renamed = data.copy()
    renamed.columns = names
    return renamed


def qualified_name(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _fresh_skeleton_class(
    type_constructor: Any, name: str, bases: tuple, type_kwargs: dict, tracker_id: Any, extra: Any
) -> type:
    from cloudpickle import cloudpickle as cp

    return cp._make_skeleton_class(type_constructor, name, bases, type_kwargs, None, extra)


def _fresh_skeleton_enum(
    bases: tuple, name: str, qualname: str, members: dict, module: str, tracker_id: Any, extra: Any
) -> type:
    from cloudpickle import cloudpickle as cp

    return cp._make_skeleton_enum(bases, name, qualname, members, module, None, extra)


_FRESH = {
    "_make_skeleton_class": _fresh_skeleton_class,
    "_make_skeleton_enum": _fresh_skeleton_enum,
}


class FreshClassUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds by-value classes as new classes (see the module doc)."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("cloudpickle") and name in _FRESH:
            return _FRESH[name]
        return super().find_class(module, name)


def load_pickle(file: Any) -> Any:
    return FreshClassUnpickler(file).load()


#: The file a model pickled whole (scikit-learn, boosting wrappers) is written to.
PICKLE_FILE = "model.pkl"


def dump_model_pickle(model: Any, directory: Path) -> None:
    """Cloudpickle ``model`` to ``directory/model.pkl``, user code by value."""
    with (directory / PICKLE_FILE).open("wb") as fh, pickle_user_code_by_value():
        cloudpickle.dump(model, fh)


def load_model_pickle(directory: Path) -> Any:
    """The model ``dump_model_pickle`` wrote to ``directory`` (user classes rebuilt fresh)."""
    with (directory / PICKLE_FILE).open("rb") as fh:
        return load_pickle(fh)


def _pickle_module() -> types.ModuleType:
    # ``torch.load(pickle_module=...)`` subclasses ``pickle_module.Unpickler``.
    module = types.ModuleType("neve_fresh_pickle")
    module.__dict__.update({k: v for k, v in vars(pickle).items() if not k.startswith("__")})
    module.Unpickler = FreshClassUnpickler  # type: ignore[attr-defined]
    module.load = lambda file, **kw: FreshClassUnpickler(file, **kw).load()  # type: ignore[attr-defined]
    return module


fresh_pickle_module = _pickle_module()
