"""Instance families: the size of one compute pool node (vCPU, memory, GPUs).

The numbers follow the reference platform's families, so a pool declared there means the same
here. On the ``local`` backend a node is a slice of this machine: placement counts requests
against these capacities; it does not reserve real cores.
"""

from __future__ import annotations

from dataclasses import dataclass

from neve.errors import InvalidArgumentError


@dataclass(frozen=True)
class InstanceFamily:
    name: str
    vcpu: float
    memory_gb: float
    gpu: int = 0
    gpu_type: str | None = None
    description: str = ""

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "vcpu": self.vcpu,
            "memory_gb": self.memory_gb,
            "gpu": self.gpu,
            "gpu_type": self.gpu_type,
            "description": self.description,
        }


FAMILIES: dict[str, InstanceFamily] = {
    f.name: f
    for f in [
        InstanceFamily("CPU_X64_XS", 1, 6, description="smallest node: tests, light models"),
        InstanceFamily("CPU_X64_S", 3, 13, description="small CPU node"),
        InstanceFamily("CPU_X64_M", 6, 28, description="medium CPU node"),
        InstanceFamily("CPU_X64_L", 28, 116, description="large CPU node"),
        InstanceFamily("HIGHMEM_X64_S", 6, 58, description="small memory-optimized node"),
        InstanceFamily("HIGHMEM_X64_M", 28, 240, description="medium memory-optimized node"),
        InstanceFamily("HIGHMEM_X64_L", 124, 984, description="large memory-optimized node"),
        InstanceFamily("GPU_NV_S", 6, 27, 1, "NVIDIA A10G", "one 24 GB GPU"),
        InstanceFamily("GPU_NV_M", 44, 178, 4, "NVIDIA A10G", "four 24 GB GPUs"),
        InstanceFamily("GPU_NV_L", 92, 1112, 8, "NVIDIA A100", "eight 40 GB GPUs"),
    ]
}


def instance_family(name: str) -> InstanceFamily:
    """The family called ``name`` (case-insensitive), or an error listing the valid ones."""
    key = str(name or "").strip().strip("'\"").upper()
    family = FAMILIES.get(key)
    if family is None:
        raise InvalidArgumentError(
            f"unknown instance family {name!r}; valid instance families: {', '.join(FAMILIES)}"
        )
    return family
