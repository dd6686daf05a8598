"""Compute backends by name: ``local`` (processes on this machine), ``ray`` (a Ray cluster).

A backend module is imported only when a pool uses it, so the control plane does not need Ray
installed to run local pools. Add a backend by adding its ``module:Class`` here.
"""

from __future__ import annotations

import importlib

from neve.compute.backends.base import ComputeBackend
from neve.errors import InvalidArgumentError, NotSupportedError

BACKENDS: dict[str, str] = {
    "local": "neve.compute.backends.local:LocalBackend",
    "ray": "neve.compute.backends.ray:RayBackend",
}


def backend_name(name: str | None) -> str:
    """Normalize and check a backend name (``'LOCAL'`` -> ``'local'``)."""
    key = str(name or "local").strip().strip("'\"").lower()
    if key not in BACKENDS:
        raise InvalidArgumentError(
            f"unknown compute backend {name!r}; valid backends: {', '.join(BACKENDS)}"
        )
    return key


def backend_class(name: str) -> type[ComputeBackend]:
    """The backend class; ``NotSupportedError`` when its module cannot be imported here."""
    module_name, _, cls_name = BACKENDS[backend_name(name)].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise NotSupportedError(
            f"compute backend {name!r} is not available in this installation: {exc}"
        ) from None
    return getattr(module, cls_name)
