"""The arguments of ``create_service``: validation, normalization and the idempotency key.

A service's *spec* (model version, image repository, pool, resources, workers, batching,
ingress) is fixed at creation and stored whole in ``services.spec``. Only the instance bounds,
auto-suspend, comment and owner may change later (ALTER SERVICE). ``create_args`` inside the
spec records the arguments the service was created with, so calling ``create_service`` again
with the same arguments is recognised (nothing rebuilt, nothing restarted) while different
arguments on the same name are refused with the list of differences.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from neve.errors import InvalidArgumentError

CONTAINER_NAME = "model-inference"
BUILD_CONTAINER_NAME = "model-build"
#: Idle time after which a service created with ``min_instances=0`` suspends itself, when no
#: ``auto_suspend_secs`` was given.
DEFAULT_IDLE_SUSPEND_SECS = 300
MAX_INSTANCES_LIMIT = 64

_CPU = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m?)\s*$")
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?)?B?\s*$", re.IGNORECASE)
_MEMORY_UNITS = {
    "": 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "KI": 2**10,
    "MI": 2**20,
    "GI": 2**30,
    "TI": 2**40,
}


def parse_cpu(value: Any, *, service: str) -> float | None:
    """``"2"``, ``2``, ``0.5`` or ``"500m"`` (milli-cores) -> cores."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidArgumentError(f"service {service}: cpu_requests must be a number of cores")
    if isinstance(value, int | float):
        cores = float(value)
    else:
        match = _CPU.match(str(value))
        if match is None:
            raise InvalidArgumentError(
                f"service {service}: invalid cpu_requests {value!r}; use cores such as '2', "
                "'0.5' or milli-cores such as '500m'"
            )
        cores = float(match.group(1)) / (1000 if match.group(2) else 1)
    if not cores > 0 or math.isinf(cores):
        raise InvalidArgumentError(f"service {service}: cpu_requests must be > 0, got {value!r}")
    return cores


def parse_memory(value: Any, *, service: str) -> int | None:
    """``"4Gi"``, ``"512Mi"``, ``"1G"`` or a byte count -> bytes."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidArgumentError(f"service {service}: memory_requests must be a size")
    if isinstance(value, int | float):
        size = float(value)
    else:
        match = _MEMORY.match(str(value))
        if match is None:
            raise InvalidArgumentError(
                f"service {service}: invalid memory_requests {value!r}; use a size such as "
                "'4Gi', '512Mi' or '2G'"
            )
        size = float(match.group(1)) * _MEMORY_UNITS[(match.group(2) or "").upper()]
    if not size >= 1 or math.isinf(size):
        raise InvalidArgumentError(
            f"service {service}: memory_requests must be a positive size, got {value!r}"
        )
    return int(size)


def parse_gpu(value: Any, *, service: str) -> int:
    """``"1"`` or ``1`` -> 1; None -> 0."""
    if value is None:
        return 0
    try:
        if isinstance(value, bool) or float(value) != int(float(value)):
            raise ValueError
        gpus = int(float(value))
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"service {service}: gpu_requests must be a whole number of GPUs, got {value!r}"
        ) from None
    if gpus < 0:
        raise InvalidArgumentError(f"service {service}: gpu_requests must be >= 0, got {value!r}")
    return gpus


def _positive_int(value: Any, what: str, service: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            if isinstance(value, bool) or value is None or float(value) != int(float(value)):
                raise ValueError
            value = int(float(value))
        except (TypeError, ValueError):
            raise InvalidArgumentError(
                f"service {service}: {what} must be an integer, got {value!r}"
            ) from None
    if value < minimum:
        raise InvalidArgumentError(f"service {service}: {what} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class Resources:
    """What one instance asks of a pool node."""

    cpu: float | None = None
    memory_bytes: int | None = None
    gpu: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Resources:
        d = d or {}
        return cls(cpu=d.get("cpu"), memory_bytes=d.get("memory_bytes"), gpu=int(d.get("gpu") or 0))


@dataclass
class CreateArgs:
    """``create_service`` arguments after validation (names still raw; resolved by the manager)."""

    service_name: str
    model: str
    version: str
    compute_pool: str
    image_repo: str
    ingress_enabled: bool = False
    max_instances: int = 1
    min_instances: int = 1
    resources: Resources = field(default_factory=Resources)
    num_workers: int | None = None
    max_batch_rows: int | None = None
    build_external_access_integrations: tuple[str, ...] = ()
    image_build_compute_pool: str | None = None
    auto_suspend_secs: int | None = None
    raw_requests: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> str:
        return "cuda" if self.resources.gpu > 0 else "cpu"


def validate_create_args(
    *,
    service_name: str,
    model: str,
    version: str,
    compute_pool: str,
    image_repo: str,
    ingress_enabled: Any = False,
    max_instances: Any = 1,
    min_instances: Any = None,
    cpu_requests: Any = None,
    memory_requests: Any = None,
    gpu_requests: Any = None,
    num_workers: Any = None,
    max_batch_rows: Any = None,
    build_external_access_integrations: Iterable[str] | str | None = (),
    image_build_compute_pool: str | None = None,
    auto_suspend_secs: Any = None,
) -> CreateArgs:
    """Check every argument that can be checked without the catalog; raise naming the bad one."""
    label = str(service_name)
    for what, value in (
        ("service_name", service_name),
        ("model", model),
        ("version", version),
        ("service_compute_pool", compute_pool),
        ("image_repo", image_repo),
    ):
        if not isinstance(value, str) or not value.strip():
            raise InvalidArgumentError(f"service {label}: {what} is required (a name)")
    max_n = _positive_int(max_instances, "max_instances", label)
    if max_n > MAX_INSTANCES_LIMIT:
        raise InvalidArgumentError(
            f"service {label}: max_instances {max_n} is over the limit of {MAX_INSTANCES_LIMIT}"
        )
    min_n = (
        max_n
        if min_instances is None
        else _positive_int(min_instances, "min_instances", label, minimum=0)
    )
    if min_n > max_n:
        raise InvalidArgumentError(
            f"service {label}: min_instances ({min_n}) is greater than max_instances ({max_n})"
        )
    workers = None if num_workers is None else _positive_int(num_workers, "num_workers", label)
    batch = (
        None if max_batch_rows is None else _positive_int(max_batch_rows, "max_batch_rows", label)
    )
    idle = (
        None
        if auto_suspend_secs is None
        else _positive_int(auto_suspend_secs, "auto_suspend_secs", label, minimum=0) or None
    )
    if min_n == 0 and idle is None:
        idle = DEFAULT_IDLE_SUSPEND_SECS
    if isinstance(build_external_access_integrations, str):
        integrations: tuple[str, ...] = (build_external_access_integrations,)
    else:
        integrations = tuple(build_external_access_integrations or ())
    if not isinstance(ingress_enabled, bool):
        raise InvalidArgumentError(f"service {label}: ingress_enabled must be True or False")
    resources = Resources(
        cpu=parse_cpu(cpu_requests, service=label),
        memory_bytes=parse_memory(memory_requests, service=label),
        gpu=parse_gpu(gpu_requests, service=label),
    )
    return CreateArgs(
        service_name=service_name,
        model=model,
        version=version,
        compute_pool=compute_pool,
        image_repo=image_repo,
        ingress_enabled=ingress_enabled,
        max_instances=max_n,
        min_instances=min_n,
        resources=resources,
        num_workers=workers,
        max_batch_rows=batch,
        build_external_access_integrations=integrations,
        image_build_compute_pool=image_build_compute_pool,
        auto_suspend_secs=idle,
        raw_requests={
            "cpu_requests": cpu_requests,
            "memory_requests": memory_requests,
            "gpu_requests": gpu_requests,
        },
    )


def default_num_workers(resources: Resources, node_vcpu: float | None = None) -> int:
    """``2 * cpus + 1`` on CPU, one on GPU. cpus: the instance's CPU request; without one, the
    cores of a node of its pool's instance family (``node_vcpu``) as far as this machine has
    them: a CPU_X64_XS service on a 32-core host gets 3 workers, not 65 copies of the model."""
    from neve.server.config import cpu_count
    from neve.server.config import default_num_workers as server_default

    if resources.gpu > 0:
        return server_default("cuda")
    if resources.cpu is not None:
        cpus = max(1, math.ceil(resources.cpu))
    elif node_vcpu is not None:
        cpus = min(cpu_count(), max(1, math.ceil(node_vcpu)))
    else:
        cpus = cpu_count()
    return server_default("cpu", cpus)


def identity(
    args: CreateArgs,
    *,
    model: str,
    version: str,
    compute_pool: str,
    image_repo: str,
    integrations: list[str],
    build_pool: str | None,
) -> dict[str, Any]:
    """The normalized create arguments two calls must share to be 'the same' create_service."""
    return {
        "model": model,
        "version": version,
        "compute_pool": compute_pool,
        "image_repo": image_repo,
        "ingress_enabled": args.ingress_enabled,
        "max_instances": args.max_instances,
        "min_instances": args.min_instances,
        "resources": args.resources.to_dict(),
        "num_workers": args.num_workers,
        "max_batch_rows": args.max_batch_rows,
        "build_external_access_integrations": sorted(integrations),
        "image_build_compute_pool": build_pool,
        "auto_suspend_secs": args.auto_suspend_secs,
    }


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``["max_instances: 2 -> 3", ...]`` for the keys whose values differ."""
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            out.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return out


def new_ingress_host(account_name: str, ingress_domain: str) -> str:
    """``<random>-<account>.<ingress_domain>``, lower case (a DNS label per part)."""
    account = re.sub(r"[^a-z0-9-]", "-", account_name.lower()).strip("-") or "account"
    return f"{secrets.token_hex(4)}-{account}.{ingress_domain.lower().strip('.')}"


def format_bytes(size: int | None) -> str | None:
    if size is None:
        return None
    for unit, scale in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)
