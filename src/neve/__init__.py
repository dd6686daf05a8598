"""neve: a self-hosted model registry and model-serving platform.

The public surface is imported lazily so that ``neve.server`` (which runs inside every model
environment with only a few packages) can import ``neve`` without the control-plane stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "connect": "neve.client.session",
    "Session": "neve.client.session",
    "Registry": "neve.client.registry",
    "Model": "neve.client.model",
    "ModelVersion": "neve.client.model_version",
    "CustomModel": "neve.models.custom",
    "ModelContext": "neve.models.custom",
    "inference_api": "neve.models.custom",
    "partitioned_api": "neve.models.custom",
    "Task": "neve.client.compat",
    "ExportMode": "neve.client.compat",
    "ModelSignature": "neve.models.signature",
    "FeatureSpec": "neve.models.signature",
}

if TYPE_CHECKING:
    from neve.client.compat import ExportMode, Task
    from neve.client.model import Model
    from neve.client.model_version import ModelVersion
    from neve.client.registry import Registry
    from neve.client.session import Session, connect
    from neve.models.custom import CustomModel, ModelContext, inference_api, partitioned_api
    from neve.models.signature import FeatureSpec, ModelSignature


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'neve' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "CustomModel",
    "ExportMode",
    "FeatureSpec",
    "Model",
    "ModelContext",
    "ModelSignature",
    "ModelVersion",
    "Registry",
    "Session",
    "Task",
    "__version__",
    "connect",
    "inference_api",
    "partitioned_api",
]
