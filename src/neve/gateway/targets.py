"""Moved to ``neve.dataplane.targets`` (kept importable from here)."""

from neve.dataplane.targets import (
    READY_INSTANCE_STATUSES,
    RUNNING,
    TOUCH_INTERVAL_SECS,
    CatalogIngressTargets,
    IngressTarget,
    IngressTargets,
    find_service,
    method_names,
    target_of,
)

__all__ = [
    "READY_INSTANCE_STATUSES",
    "RUNNING",
    "TOUCH_INTERVAL_SECS",
    "CatalogIngressTargets",
    "IngressTarget",
    "IngressTargets",
    "find_service",
    "method_names",
    "target_of",
]
