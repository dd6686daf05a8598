"""What an image is built from, and its content address.

An image's digest is the sha256 of its inputs: the model's pinned requirements (sorted; conda
names already mapped to PyPI), the inference server version, the python version, the GPU flag
and the base environment's digest. Equal inputs give the same digest, so the image is built
once and reused by every service and user that may read the repository.

The *server version* is a hash of the files that run inside every image (``neve/__init__.py``,
``neve/errors.py``, ``neve/server``, ``neve/models``) plus ``neve.__version__``: change the
server's code and every image is rebuilt, on its next use, on a new base.

The *base environment* holds the inference server's own dependencies and the common model
frameworks that are installed next to the control plane, pinned to those versions (like the
reference's base CPU/GPU inference images). Model images are layered over it and add only what
differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

import neve
from neve.errors import BuildError, InvalidArgumentError

#: The inference server's own dependencies: always in the base environment.
SERVER_PACKAGES = (
    "starlette",
    "uvicorn",
    "httptools",  # uvicorn's C HTTP/1.1 parser: uvicorn uses it when it is installed
    "prometheus-client",
    "orjson",
    "pyarrow",
    "numpy",
    "pandas",
    "cloudpickle",
    "threadpoolctl",  # sizes each worker's OpenMP/BLAS pools (neve.server.worker)
    "grpcio",  # the V2 gRPC port (neve.server.v2_grpc)
    "protobuf",
)
#: Common model frameworks put into the base when they are installed next to the control plane
#: (override with the account setting ``base_frameworks``).
BASE_FRAMEWORKS = (
    "scikit-learn",
    "xgboost",
    "lightgbm",
    "torch",
    "transformers",
    "sentence-transformers",
)
#: The parts of the ``neve`` package that run inside an image.
RUNTIME_PARTS = ("__init__.py", "errors.py", "server", "models")


def neve_package_dir() -> Path:
    return Path(neve.__file__).resolve().parent


def runtime_files() -> list[tuple[str, Path]]:
    """(path relative to the neve package, file) for every runtime source file, sorted."""
    root = neve_package_dir()
    out: list[tuple[str, Path]] = []
    for part in RUNTIME_PARTS:
        path = root / part
        if path.is_file():
            out.append((part, path))
        elif path.is_dir():
            for file in sorted(path.rglob("*")):
                if file.is_file() and "__pycache__" not in file.parts and file.suffix != ".pyc":
                    out.append((file.relative_to(root).as_posix(), file))
    return sorted(out)


def server_version() -> str:
    """``<neve version>+<12 hex of the runtime files' hash>``."""
    h = hashlib.sha256(neve.__version__.encode())
    for rel, file in runtime_files():
        h.update(b"\0" + rel.encode() + b"\0")
        h.update(file.read_bytes())
    return f"{neve.__version__}+{h.hexdigest()[:12]}"


def _sha(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class BaseSpec:
    """The base environment: interpreter, pinned packages, server version, GPU flavour."""

    python: str  # interpreter executable the venv is created from
    python_version: str  # full version, e.g. "3.11.7"
    packages: tuple[str, ...]
    server_version: str
    gpu: bool = False

    @property
    def digest(self) -> str:
        return _sha(
            {
                "python_version": self.python_version,
                "packages": sorted(self.packages),
                "server_version": self.server_version,
                "gpu": self.gpu,
            }
        )

    @property
    def dir_name(self) -> str:
        return f"base-{self.digest[:16]}"

    def to_dict(self) -> dict:
        return {**asdict(self), "packages": list(self.packages), "digest": self.digest}


@dataclass(frozen=True)
class ImageInputs:
    """Everything the model layer of an image depends on."""

    requirements: tuple[str, ...]  # sorted PEP 508 strings
    python_version: str  # major.minor
    server_version: str
    gpu: bool
    base_digest: str
    conda_mapping: tuple[tuple[str, str], ...] = field(default=())  # (conda spec, PyPI req)

    @property
    def digest(self) -> str:
        return _sha(
            {
                "requirements": list(self.requirements),
                "python_version": self.python_version,
                "server_version": self.server_version,
                "gpu": self.gpu,
                "base": self.base_digest,
            }
        )

    def to_dict(self) -> dict:
        return {
            "requirements": list(self.requirements),
            "python_version": self.python_version,
            "server_version": self.server_version,
            "gpu": self.gpu,
            "base_digest": self.base_digest,
            "conda_mapping": [list(x) for x in self.conda_mapping],
        }


def normalize_requirements(requirements: list[str]) -> tuple[str, ...]:
    """Parsed, de-duplicated and sorted PEP 508 strings (canonical names)."""
    out: dict[str, str] = {}
    for text in requirements:
        try:
            req = Requirement(str(text).strip())
        except InvalidRequirement as exc:
            raise InvalidArgumentError(f"dependency {text!r} is not valid PEP 508: {exc}") from None
        req.name = canonicalize_name(req.name)
        out[str(req)] = str(req)
    return tuple(sorted(out))


def conda_mapping(conda_dependencies: list[str]) -> tuple[tuple[str, str], ...]:
    """(conda spec, PyPI requirement it is installed as) for the build log."""
    from neve.environments.dependencies import parse_conda_dependency

    pairs = []
    for text in conda_dependencies or []:
        dep = parse_conda_dependency(text)
        pairs.append((dep.raw, dep.requirement()))
    return tuple(pairs)


def base_packages(frameworks: list[str] | tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The base's requirement list: server packages always, frameworks when installed here.

    Each is pinned to the version installed next to the control plane, which is also what a
    model logged from this machine is pinned to, so most model images add nothing.
    """
    pins = []
    for name in (*SERVER_PACKAGES, *(BASE_FRAMEWORKS if frameworks is None else frameworks)):
        try:
            pins.append(f"{canonicalize_name(name)}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            if name in SERVER_PACKAGES:
                pins.append(canonicalize_name(name))
    return tuple(dict.fromkeys(pins))


@lru_cache(maxsize=16)
def find_python(version: str, uv: str) -> tuple[str, str]:
    """(executable, full version) of an interpreter for ``version`` ("3.11"; "" = this one).

    This process's interpreter when it matches, else one uv finds on this machine (never a
    download: builds reach package indexes only).
    """
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    full_here = ".".join(map(str, sys.version_info[:3]))
    wanted = str(version or "").strip()
    if not wanted or wanted in (here, full_here):
        return sys.executable, full_here
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run(
        [uv, "python", "find", "--no-project", wanted],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise BuildError(
            f"python {wanted} is not available on this machine (the control plane runs "
            f"{full_here}); install that interpreter or log the model with "
            f"python_version='{here}'"
        )
    exe = proc.stdout.strip().splitlines()[-1]
    out = subprocess.run(
        [exe, "-c", "import sys; print('.'.join(map(str, sys.version_info[:3])))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return exe, out.stdout.strip() or wanted
