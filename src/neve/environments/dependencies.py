"""A model version's dependencies: parse, pin, and decide where the model may run.

Three inputs make up what a model needs:

- the handler's own packages (``framework_packages`` in the manifest: scikit-learn, torch, ...),
- ``conda_dependencies``: conda match specs, optionally with a channel prefix
  (``conda-forge::xgboost``, ``xgboost=2.0``, ``pytorch>=2``),
- ``pip_requirements``: PEP 508 strings (``transformers[torch]>=4.40``).

:func:`pin_dependencies` merges them into ONE list of PEP 508 requirement strings (the image is
built from it): every entry without an explicit version is pinned to the version installed in
the process that logs the model, so a service runs what was tested (``torch==2.13.0+cpu``
resolves from the local wheel directory). ``relax_version=True`` widens those pins to the
compatible range ``>=X.Y,<X+1``.

:func:`check_warehouse` decides eligibility for in-process ("warehouse") runs: every conda
dependency and framework package is on the warehouse channel list, no conda dependency names a
channel, and there is no pip requirement. :func:`target_platforms` turns that into the stored
``target_platforms`` (``["WAREHOUSE", "SERVICE"]`` or ``["SERVICE"]``), refusing WAREHOUSE for an
ineligible model with an error that names the dependencies in the way.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from neve.errors import InvalidArgumentError

WAREHOUSE = "WAREHOUSE"
SERVICE = "SERVICE"
#: Spellings accepted for the platforms (the reference calls services SNOWPARK_CONTAINER_SERVICES).
PLATFORM_ALIASES = {
    "WAREHOUSE": WAREHOUSE,
    "SERVICE": SERVICE,
    "SERVICES": SERVICE,
    "CONTAINER_SERVICES": SERVICE,
    "SNOWPARK_CONTAINER_SERVICES": SERVICE,
    "SPCS": SERVICE,
}

DEFAULT_CHANNEL_FILE = Path(__file__).with_name("warehouse_channel.txt")
CHANNEL_FILE_ENV = "NEVE_WAREHOUSE_CHANNEL_FILE"

#: Conda package names whose PyPI distribution is spelled differently.
CONDA_TO_PYPI = {
    "pytorch": "torch",
    "pytorch-cpu": "torch",
    "pytorch-gpu": "torch",
    "py-xgboost": "xgboost",
    "py-xgboost-cpu": "xgboost",
    "py-xgboost-gpu": "xgboost",
    "tensorflow-cpu": "tensorflow",
    "pyyaml": "pyyaml",
    "py-opencv": "opencv-python",
}

_CONDA_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?P<spec>.*)$")


@dataclass(frozen=True)
class CondaDependency:
    """One parsed conda match spec."""

    raw: str
    name: str  # canonical (PEP 503) conda package name
    channel: str | None  # "conda-forge" for "conda-forge::x"; None for the default channel
    specifier: str  # a PEP 440 specifier set ("" when unversioned)

    @property
    def pypi_name(self) -> str:
        return pypi_name(self.name)

    def requirement(self) -> str:
        """The PEP 508 requirement this conda spec means for a pip/uv build."""
        return f"{self.pypi_name}{self.specifier}"


def pypi_name(conda_name: str) -> str:
    """The PyPI distribution name of a conda package (``pytorch`` -> ``torch``)."""
    name = canonicalize_name(conda_name)
    return CONDA_TO_PYPI.get(name, name)


def parse_conda_dependency(text: str) -> CondaDependency:
    """Parse ``[channel::]name[ version-spec]``; raise ``InvalidArgumentError`` naming it."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgumentError(f"conda dependency {text!r} is not a package name")
    raw = text.strip()
    channel: str | None = None
    rest = raw
    if "::" in raw:
        channel, rest = (p.strip() for p in raw.split("::", 1))
        if not channel or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$", channel):
            raise InvalidArgumentError(f"conda dependency {raw!r} has an invalid channel prefix")
    match = _CONDA_SPEC.match(rest)
    if match is None:
        raise InvalidArgumentError(
            f"conda dependency {raw!r} is not a valid match spec (expected name, name==1.2, "
            "name>=1.2 or channel::name)"
        )
    spec = _conda_specifier(match.group("spec").strip(), raw)
    return CondaDependency(
        raw=raw, name=canonicalize_name(match.group("name")), channel=channel, specifier=spec
    )


def _conda_specifier(spec: str, raw: str) -> str:
    """A conda version spec as a PEP 440 specifier set (``=1.2`` means ``==1.2.*``)."""
    if not spec:
        return ""
    if spec[0].isdigit():  # "xgboost 2.0.3": an exact version
        spec = "==" + spec
    parts = []
    for part in (p.strip() for p in spec.split(",")):
        if part.startswith("=") and not part.startswith("=="):
            version = part[1:].strip().rstrip("*").rstrip(".")
            part = f"=={version}.*"
        parts.append(part)
    try:
        return str(SpecifierSet(",".join(parts)))
    except InvalidSpecifier:
        raise InvalidArgumentError(
            f"conda dependency {raw!r} has an invalid version spec {spec!r}"
        ) from None


def parse_pip_requirement(text: str) -> Requirement:
    """Parse one PEP 508 requirement; raise ``InvalidArgumentError`` naming it."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgumentError(f"pip requirement {text!r} is not a requirement string")
    try:
        return Requirement(text.strip())
    except InvalidRequirement as exc:
        raise InvalidArgumentError(
            f"pip requirement {text!r} is not valid PEP 508: {exc}"
        ) from None


def installed_version(distribution: str) -> str | None:
    """The version of ``distribution`` installed in this process's environment, or None."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _pin(version: str, *, relax: bool) -> str:
    if not relax:
        return f"=={version}"
    try:
        parsed = Version(version)
    except InvalidVersion:
        return f"=={version}"
    major, minor = (list(parsed.release) + [0])[:2]
    return f">={major}.{minor},<{major + 1}"


def pin_dependencies(
    framework_packages: list[str],
    conda_dependencies: list[str] | None = None,
    pip_requirements: list[str] | None = None,
    *,
    relax_version: bool = False,
) -> list[str]:
    """One PEP 508 list from all three inputs; unversioned entries pinned to what is installed.

    An entry that appears in several inputs is listed once; a version the user wrote wins over
    the automatic pin. A package that is not installed here stays unpinned (the build resolves
    it). Must run in the process that logs the model: that is where the model was tested.
    """
    merged: dict[str, Requirement] = {}
    explicit: set[str] = set()

    def add(req: Requirement, *, user: bool) -> None:
        key = canonicalize_name(req.name)
        has_version = bool(req.specifier) or req.url is not None
        current = merged.get(key)
        if current is None or (has_version and key not in explicit):
            if current is not None and not req.extras:
                req.extras = set(current.extras)  # keep extras a weaker entry asked for
            merged[key] = req
        elif req.extras:
            current.extras |= req.extras
        if has_version and user:
            explicit.add(key)

    for name in framework_packages:
        add(Requirement(canonicalize_name(name)), user=False)
    for text in conda_dependencies or []:
        add(Requirement(parse_conda_dependency(text).requirement()), user=True)
    for text in pip_requirements or []:
        add(parse_pip_requirement(text), user=True)

    out = []
    for key, req in merged.items():
        req.name = key  # the canonical spelling, for stable output and comparisons
        version = installed_version(key) if not req.specifier and req.url is None else None
        if version is None:
            out.append(str(req))
            continue
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        marker = f"; {req.marker}" if req.marker else ""
        out.append(f"{key}{extras}{_pin(version, relax=relax_version)}{marker}")
    return out


# -- the warehouse channel ------------------------------------------------------------------------


def channel_file(setting: str | None = None) -> Path:
    """The channel list in use: env var, then the account setting, then the shipped default."""
    configured = os.environ.get(CHANNEL_FILE_ENV) or setting
    return Path(configured).expanduser() if configured else DEFAULT_CHANNEL_FILE


def load_warehouse_channel(path: str | os.PathLike | None = None) -> frozenset[str]:
    """The canonical package names of a channel list file (one per line, # comments)."""
    file = Path(path) if path is not None else DEFAULT_CHANNEL_FILE
    try:
        stat = file.stat()
    except OSError as exc:
        raise InvalidArgumentError(f"warehouse channel file {file} cannot be read: {exc}") from None
    return _read_channel(str(file.resolve()), stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _read_channel(path: str, _mtime: int) -> frozenset[str]:  # mtime in the key: edits reload
    names = set()
    for line in Path(path).read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            names.add(canonicalize_name(text))
    return frozenset(names)


@dataclass(frozen=True)
class Eligibility:
    """Whether a model may run in-process, and if not, each dependency that prevents it."""

    warehouse: bool
    reasons: tuple[str, ...]

    def explain(self) -> str:
        return "; ".join(self.reasons)


def check_warehouse(
    framework_packages: list[str],
    conda_dependencies: list[str] | None,
    pip_requirements: list[str] | None,
    channel: frozenset[str],
) -> Eligibility:
    """Eligibility for WAREHOUSE: every package on ``channel``, no channel prefix, no pip."""
    reasons: list[str] = []
    pip = [str(parse_pip_requirement(p)) for p in pip_requirements or []]
    if pip:
        reasons.append(
            f"pip requirement(s) {', '.join(pip)} are pip-only: the warehouse channel installs "
            "conda packages only"
        )
    prefixed: list[str] = []
    missing: list[str] = []
    for text in conda_dependencies or []:
        dep = parse_conda_dependency(text)
        if dep.channel is not None:
            prefixed.append(dep.raw)
        elif not _on_channel(dep.name, channel):
            missing.append(dep.raw)
    for name in framework_packages:
        if not _on_channel(name, channel) and name not in missing:
            missing.append(name)
    if prefixed:
        reasons.append(
            f"conda dependency(ies) {', '.join(prefixed)} name an explicit channel; only the "
            "default warehouse channel runs in-process"
        )
    if missing:
        reasons.append(f"{', '.join(missing)} not on the warehouse channel")
    return Eligibility(warehouse=not reasons, reasons=tuple(reasons))


def _on_channel(name: str, channel: frozenset[str]) -> bool:
    key = canonicalize_name(name)
    return key in channel or pypi_name(key) in channel


def target_platforms(
    requested: list[str] | str | None, eligibility: Eligibility, *, label: str
) -> list[str]:
    """The platforms a version is logged for. ``label`` names the version in errors."""
    if requested is None:
        return [WAREHOUSE, SERVICE] if eligibility.warehouse else [SERVICE]
    items = [requested] if isinstance(requested, str) else list(requested)
    if not items:
        raise InvalidArgumentError(
            f"{label}: target_platforms is empty; use ['WAREHOUSE'], ['SERVICE'] or both"
        )
    platforms: list[str] = []
    for item in items:
        key = str(getattr(item, "value", item)).strip().upper()
        if key not in PLATFORM_ALIASES:
            raise InvalidArgumentError(
                f"{label}: unknown target platform {item!r}; valid: WAREHOUSE, SERVICE "
                "(or SNOWPARK_CONTAINER_SERVICES)"
            )
        platform = PLATFORM_ALIASES[key]
        if platform not in platforms:
            platforms.append(platform)
    if WAREHOUSE in platforms and not eligibility.warehouse:
        raise InvalidArgumentError(
            f"{label} cannot target WAREHOUSE: {eligibility.explain()}. Log it with "
            "target_platforms=['SERVICE'] (it then runs with create_service), or depend only on "
            "packages of the warehouse channel without pip requirements or channel prefixes"
        )
    return [p for p in (WAREHOUSE, SERVICE) if p in platforms]
