"""The pieces of the registry API that exist so code written for snowflake-ml-python runs
unchanged: the ``Task`` and ``ExportMode`` enums, fully qualified model names, the default
image repository, and one ``unsupported`` error for features neve does not have.

``neve.client.registry`` uses these; users import the enums as ``neve.Task`` /
``neve.ExportMode`` (or pass their string values).
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from neve.errors import InvalidArgumentError, NotSupportedError
from neve.identifiers import ident, split_name

#: The image repository ``create_service`` uses when no ``image_repo`` is given (created in
#: the model's schema on first use), as the reference platform falls back to a default one.
DEFAULT_IMAGE_REPO = "NEVE_DEFAULT_IMAGES"


class Task(enum.Enum):
    """What a model does, recorded at log time (``log_model(task=...)``)."""

    UNKNOWN = "UNKNOWN"
    TABULAR_BINARY_CLASSIFICATION = "TABULAR_BINARY_CLASSIFICATION"
    TABULAR_MULTI_CLASSIFICATION = "TABULAR_MULTI_CLASSIFICATION"
    TABULAR_REGRESSION = "TABULAR_REGRESSION"
    TABULAR_RANKING = "TABULAR_RANKING"


class ExportMode(enum.Enum):
    """``MODEL``: the model's own files; ``FULL``: the whole model directory (manifest, code)."""

    MODEL = "model"
    FULL = "full"


def as_task(value: Any) -> Task:
    if isinstance(value, Task):
        return value
    try:
        return Task(str(getattr(value, "value", value)).upper())
    except ValueError:
        raise InvalidArgumentError(
            f"unknown task {value!r}; tasks: {', '.join(t.value for t in Task)}"
        ) from None


def as_export_mode(value: Any) -> ExportMode:
    if isinstance(value, ExportMode):
        return value
    try:
        return ExportMode(str(getattr(value, "value", value)).lower())
    except ValueError:
        raise InvalidArgumentError(
            f"unknown export_mode {value!r}; modes: {', '.join(m.name for m in ExportMode)}"
        ) from None


def split_model_name(raw: str) -> tuple[str | None, str | None, str]:
    """``name``, ``schema.name`` or ``db.schema.name`` -> (database, schema, name), normalized;
    missing parts are None (the registry's own)."""
    if not isinstance(raw, str):
        raise InvalidArgumentError(f"model name must be a string, got {type(raw).__name__}")
    parts = split_name(raw)
    if len(parts) > 3:
        raise InvalidArgumentError(
            f"invalid model name {raw!r}: at most database.schema.model_name"
        )
    name = ident(parts[-1], kind="model name")
    schema = ident(parts[-2], kind="schema name") if len(parts) >= 2 else None
    database = ident(parts[-3], kind="database name") if len(parts) == 3 else None
    return database, schema, name


def unsupported(feature: str, instead: str) -> NotSupportedError:
    """The error for an argument or method of the reference API that neve does not offer."""
    return NotSupportedError(f"{feature} is not supported by neve; {instead}")


@contextlib.contextmanager
def pickled_by_value(modules: list[ModuleType] | None) -> Iterator[None]:
    """``ext_modules``: these modules' code travels inside the pickled model (by value), so the
    model loads where they are not installed."""
    import cloudpickle

    done = []
    for module in modules or []:
        if not isinstance(module, ModuleType):
            raise InvalidArgumentError(
                f"ext_modules must list imported modules, got {type(module).__name__}"
            )
        if module.__name__ in cloudpickle.list_registry_pickle_by_value():
            continue
        cloudpickle.register_pickle_by_value(module)
        done.append(module)
    try:
        yield
    finally:
        for module in done:
            with contextlib.suppress(ValueError):
                cloudpickle.unregister_pickle_by_value(module)
