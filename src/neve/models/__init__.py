"""Model handlers: save, load, list methods and call models of every supported framework."""

from neve.models.base import (
    ModelHandler,
    handler_by_type,
    handler_for_model,
    handlers,
    register_handler,
)
from neve.models.modeldir import (
    LoadedModel,
    directory_digest,
    load_model,
    read_manifest,
    save_model,
)
from neve.models.signature import FeatureSpec, ModelSignature, infer_signature

__all__ = [
    "FeatureSpec",
    "LoadedModel",
    "ModelHandler",
    "ModelSignature",
    "directory_digest",
    "handler_by_type",
    "handler_for_model",
    "handlers",
    "infer_signature",
    "load_model",
    "read_manifest",
    "register_handler",
    "save_model",
]
