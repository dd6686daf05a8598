"""What an instance asks of a pool node (``ResourceRequest``) and where it got it (``Placement``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from neve.errors import InvalidArgumentError

#: Requests of an instance that states none (the reference's container defaults).
DEFAULT_CPU = 0.5
DEFAULT_MEMORY_GB = 0.5


@dataclass(frozen=True)
class ResourceRequest:
    """vCPUs (fractions allowed), memory in GiB and whole GPUs for one instance."""

    cpu: float = DEFAULT_CPU
    memory_gb: float = DEFAULT_MEMORY_GB
    gpu: int = 0

    def __post_init__(self) -> None:
        for name, value in (("cpu", self.cpu), ("memory_gb", self.memory_gb)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidArgumentError(f"resource request {name} must be a number: {value!r}")
            if not value > 0 or math.isinf(value):
                raise InvalidArgumentError(f"resource request {name} must be > 0, got {value!r}")
        if isinstance(self.gpu, bool) or not isinstance(self.gpu, int) or self.gpu < 0:
            raise InvalidArgumentError(
                f"resource request gpu must be a whole number >= 0, got {self.gpu!r}"
            )

    def describe(self) -> str:
        return f"{self.cpu:g} vCPU, {self.memory_gb:g} GiB memory, {self.gpu} GPU"

    def to_dict(self) -> dict:
        return {"cpu": self.cpu, "memory_gb": self.memory_gb, "gpu": self.gpu}

    @classmethod
    def from_dict(cls, data: dict | None) -> ResourceRequest:
        data = dict(data or {})
        return cls(
            cpu=float(data.get("cpu", DEFAULT_CPU)),
            memory_gb=float(data.get("memory_gb", DEFAULT_MEMORY_GB)),
            gpu=int(data.get("gpu", 0)),
        )


@dataclass(frozen=True)
class Placement:
    """One allocation: ``holder`` holds ``request`` on ``node`` of ``pool``."""

    pool: str
    node: str
    holder: str
    request: ResourceRequest
    gpu_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "pool": self.pool,
            "node": self.node,
            "holder": self.holder,
            "request": self.request.to_dict(),
            "gpu_ids": list(self.gpu_ids),
        }
