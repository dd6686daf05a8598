"""A service's specification as a YAML document: render, parse and validate.

The document has the reference platform's service specification shape::

    spec:
      containers:
      - name: model-inference
        image: <repository_url>/<image_name>:<tag>
        env: {MODEL_REF: ML.REGISTRY.FORECAST/V1, NUM_WORKERS: "3", ...}
        resources: {requests: {cpu: "2", memory: 4Gi, nvidia.com/gpu: 1}, limits: {...}}
        readinessProbe: {port: 5000, path: /ready}
      endpoints:
      - {name: inference, port: 5000, public: true}

It holds everything needed to run the service again, so ``DESCRIBE SERVICE`` shows it and
``CREATE SERVICE ... FROM SPECIFICATION`` takes it back. The inference server's settings are
container env, as the reference's inference server takes them; :func:`launch_settings` turns
them into the server's options for *every* service (model services render their document from
their stored fields), so instances start one way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from neve.catalog import lookup
from neve.catalog import models as m
from neve.errors import InvalidArgumentError, NeveError, ObjectNotFoundError
from neve.identifiers import ident, qualify, quote, split_name
from neve.services.spec import (
    CONTAINER_NAME,
    Resources,
    format_bytes,
    parse_cpu,
    parse_gpu,
    parse_memory,
)

#: The inference server's port inside an instance as the document names it (instances listen
#: on a free port of their node; the document's port names the endpoint, as on the reference).
SERVER_PORT = 5000
READY_PATH = "/ready"
ENDPOINT_NAME = "inference"
GPU_KEY = "nvidia.com/gpu"

# Container env the inference server reads -> (server option, type).
ENV_MODEL_REF = "MODEL_REF"
SERVER_ENV: dict[str, tuple[str, type]] = {
    "NUM_WORKERS": ("num_workers", int),
    "MAX_BATCH_ROWS": ("max_batch_rows", int),
    "MAX_QUEUE_ROWS": ("max_queue_rows", int),
    "QUEUE_TIMEOUT_SECS": ("queue_timeout_s", float),
    "BATCH_TIMEOUT_MS": ("batch_timeout_ms", float),
    "MAX_CONCURRENT_BATCHES": ("max_concurrent_batches", int),
    "THREADS_PER_WORKER": ("threads_per_worker", int),
    "USE_GPU": ("use_gpu", bool),
}
ENV_KEYS = (ENV_MODEL_REF, *SERVER_ENV)

_TOP_KEYS = {"spec"}
_SPEC_KEYS = {"containers", "endpoints"}
_CONTAINER_KEYS = {"name", "image", "env", "resources", "readinessProbe"}
_RESOURCE_KEYS = {"requests", "limits"}
_RESOURCE_ITEMS = {"cpu", "memory", GPU_KEY}
_PROBE_KEYS = {"port", "path"}
_ENDPOINT_KEYS = {"name", "port", "public"}


@dataclass(frozen=True)
class ModelRef:
    """``DB.SCHEMA.MODEL/VERSION``: which model version the server loads."""

    model: str
    version: str

    def __str__(self) -> str:
        return f"{self.model}/{self.version}"

    @classmethod
    def parse(cls, text: Any, *, label: str) -> ModelRef:
        raw = str(text or "").strip()
        model, sep, version = raw.rpartition("/")
        try:  # quoted names may hold dots: count the parts as SQL does
            parts = len(split_name(model)) if model else 0
        except NeveError:
            parts = 0
        if not sep or not version or parts != 3:
            raise InvalidArgumentError(
                f"{label}: env {ENV_MODEL_REF} must be <database>.<schema>.<model>/<version>, "
                f"got {text!r}"
            )
        return cls(model=model, version=version)


@dataclass
class Specification:
    """A validated document, and what neve reads from it."""

    document: dict[str, Any]
    container: str
    image: str
    model_ref: ModelRef
    settings: dict[str, Any]  # server option -> value, from the env
    resources: Resources
    endpoint: str | None = None
    public: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def device(self) -> str:
        return "cuda" if self.settings.get("use_gpu") or self.resources.gpu else "cpu"


# -- render ------------------------------------------------------------------------------------


def render(
    *,
    image: str | None,
    model_ref: str,
    num_workers: int | None,
    max_batch_rows: int | None,
    device: str,
    resources: Resources,
    ingress_enabled: bool,
    server_options: dict[str, Any] | None = None,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The document of a service (``image`` None: not built yet)."""
    env: dict[str, str] = {ENV_MODEL_REF: model_ref}
    if num_workers is not None:
        env["NUM_WORKERS"] = str(num_workers)
    if max_batch_rows is not None:
        env["MAX_BATCH_ROWS"] = str(max_batch_rows)
    by_option = {option: key for key, (option, _) in SERVER_ENV.items()}
    for option, value in (server_options or {}).items():
        if option in by_option and value is not None:
            env[by_option[option]] = _env_text(value)
    env["USE_GPU"] = "true" if device == "cuda" else "false"
    env.update(extra_env or {})
    requests: dict[str, Any] = {}
    if resources.cpu is not None:
        requests["cpu"] = f"{resources.cpu:g}"
    if resources.memory_bytes is not None:
        requests["memory"] = format_bytes(resources.memory_bytes)
    if resources.gpu:
        requests[GPU_KEY] = resources.gpu
    container: dict[str, Any] = {"name": CONTAINER_NAME, "image": image, "env": env}
    if requests:
        container["resources"] = {"requests": requests, "limits": dict(requests)}
    container["readinessProbe"] = {"port": SERVER_PORT, "path": READY_PATH}
    return {
        "spec": {
            "containers": [container],
            "endpoints": [{"name": ENDPOINT_NAME, "port": SERVER_PORT, "public": ingress_enabled}],
        }
    }


def to_yaml(document: dict[str, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def _env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# -- parse and validate ------------------------------------------------------------------------


def load(source: str | dict[str, Any], *, label: str) -> dict[str, Any]:
    """YAML text (or an already-loaded mapping) -> the document mapping."""
    if isinstance(source, dict):
        return source
    if not isinstance(source, str) or not source.strip():
        raise InvalidArgumentError(f"{label}: the specification is empty")
    try:
        document = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidArgumentError(
            f"{label}: the specification is not valid YAML{where}: {problem}"
        ) from None
    if not isinstance(document, dict):
        raise InvalidArgumentError(f"{label}: the specification must be a mapping with key 'spec'")
    return document


def _keys(value: Any, allowed: set[str], path: str, label: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{label}: {path} must be a mapping")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise InvalidArgumentError(
            f"{label}: unknown key {path}.{unknown[0]} in the specification; "
            f"{path} takes {', '.join(sorted(allowed))}"
        )
    return value


def parse(source: str | dict[str, Any], *, label: str, require_image: bool = True) -> Specification:
    """Validate a document; every error names the key (``spec.containers[0].image``).
    ``require_image=False``: a model service's document before its image is built."""
    document = load(source, label=label)
    _keys(document, _TOP_KEYS, "(top level)", label)
    if "spec" not in document:
        raise InvalidArgumentError(f"{label}: the specification has no key spec")
    spec = _keys(document["spec"], _SPEC_KEYS, "spec", label)
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise InvalidArgumentError(f"{label}: spec.containers must list one container")
    if len(containers) != 1:
        raise InvalidArgumentError(
            f"{label}: spec.containers lists {len(containers)} containers; a service runs one "
            f"inference server container ({CONTAINER_NAME})"
        )
    path = "spec.containers[0]"
    container = _keys(containers[0], _CONTAINER_KEYS, path, label)
    name = str(container.get("name") or "").strip()
    if not name:
        raise InvalidArgumentError(f"{label}: {path}.name is required")
    image = container.get("image")
    if not require_image and image is None:
        image = ""
    elif not isinstance(image, str) or not image.strip():
        raise InvalidArgumentError(
            f"{label}: {path}.image is required: the full name of a published image "
            "(SHOW IMAGES IN IMAGE REPOSITORY r)"
        )
    env_raw = container.get("env") or {}
    if not isinstance(env_raw, dict):
        raise InvalidArgumentError(f"{label}: {path}.env must be a mapping of names to values")
    env = {str(k): v for k, v in env_raw.items()}
    if ENV_MODEL_REF not in env:
        raise InvalidArgumentError(
            f"{label}: {path}.env.{ENV_MODEL_REF} is required (the model version the server "
            "loads, <database>.<schema>.<model>/<version>)"
        )
    model_ref = ModelRef.parse(env[ENV_MODEL_REF], label=label)
    settings: dict[str, Any] = {}
    extra: dict[str, str] = {}
    for key, value in env.items():
        if key == ENV_MODEL_REF:
            continue
        if key not in SERVER_ENV:
            extra[key] = "" if value is None else str(value)
            continue
        option, kind = SERVER_ENV[key]
        settings[option] = _typed(value, kind, f"{path}.env.{key}", label)
    resources = _resources(container.get("resources"), f"{path}.resources", label)
    probe = container.get("readinessProbe")
    if probe is not None:
        probe = _keys(probe, _PROBE_KEYS, f"{path}.readinessProbe", label)
        _port(probe.get("port"), f"{path}.readinessProbe.port", label)
        if not str(probe.get("path") or "").startswith("/"):
            raise InvalidArgumentError(
                f"{label}: {path}.readinessProbe.path must be a path such as {READY_PATH}"
            )
    endpoint, public = None, False
    endpoints = spec.get("endpoints") or []
    if not isinstance(endpoints, list):
        raise InvalidArgumentError(f"{label}: spec.endpoints must be a list")
    for i, raw in enumerate(endpoints):
        ep = _keys(raw, _ENDPOINT_KEYS, f"spec.endpoints[{i}]", label)
        if not str(ep.get("name") or "").strip():
            raise InvalidArgumentError(f"{label}: spec.endpoints[{i}].name is required")
        _port(ep.get("port"), f"spec.endpoints[{i}].port", label)
        flag = ep.get("public", False)
        if not isinstance(flag, bool):
            raise InvalidArgumentError(
                f"{label}: spec.endpoints[{i}].public must be true or false, got {flag!r}"
            )
        endpoint = endpoint or str(ep["name"])
        public = public or flag
    return Specification(
        document=document,
        container=name,
        image=image.strip(),
        model_ref=model_ref,
        settings=settings,
        resources=resources,
        endpoint=endpoint,
        public=public,
        extra_env=extra,
    )


def _typed(value: Any, kind: type, path: str, label: str) -> Any:
    if kind is bool:
        text = str(value).strip().lower()
        if isinstance(value, bool) or text in ("true", "false"):
            return value if isinstance(value, bool) else text == "true"
        raise InvalidArgumentError(f"{label}: {path} must be true or false, got {value!r}")
    try:
        if isinstance(value, bool):
            raise ValueError
        number = kind(str(value).strip())
    except ValueError:
        raise InvalidArgumentError(
            f"{label}: {path} must be {'an integer' if kind is int else 'a number'}, got {value!r}"
        ) from None
    if number <= 0:
        raise InvalidArgumentError(f"{label}: {path} must be > 0, got {value!r}")
    return number


def _port(value: Any, path: str, label: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidArgumentError(f"{label}: {path} must be a port number, got {value!r}")
    return value


def _resources(value: Any, path: str, label: str) -> Resources:
    if value is None:
        return Resources()
    value = _keys(value, _RESOURCE_KEYS, path, label)
    parsed: dict[str, Resources] = {}
    for part in ("requests", "limits"):
        items = value.get(part)
        if items is None:
            continue
        items = _keys(items, _RESOURCE_ITEMS, f"{path}.{part}", label)
        where = f"{label} ({path}.{part})"
        parsed[part] = Resources(
            cpu=parse_cpu(items.get("cpu"), service=where),
            memory_bytes=parse_memory(items.get("memory"), service=where),
            gpu=parse_gpu(items.get(GPU_KEY), service=where),
        )
    requests = parsed.get("requests") or parsed.get("limits") or Resources()
    limits = parsed.get("limits")
    if limits is not None:
        for what, ask, cap in (
            ("cpu", requests.cpu, limits.cpu),
            ("memory", requests.memory_bytes, limits.memory_bytes),
        ):
            if ask is not None and cap is not None and ask > cap:
                raise InvalidArgumentError(
                    f"{label}: {path}.requests.{what} is more than {path}.limits.{what}"
                )
        if limits.gpu != requests.gpu:
            raise InvalidArgumentError(
                f"{label}: {path}.requests.{GPU_KEY} and {path}.limits.{GPU_KEY} must be equal"
            )
    return requests


# -- what an instance starts with --------------------------------------------------------------


def launch_settings(document: dict[str, Any], *, label: str) -> dict[str, Any]:
    """``num_workers``, ``max_batch_rows`` and the further server options (device included)
    an instance is started with, read from the document's container env."""
    parsed = parse(document, label=label, require_image=False)
    options = dict(parsed.settings)
    use_gpu = options.pop("use_gpu", None)
    return {
        "num_workers": options.pop("num_workers", None),
        "max_batch_rows": options.pop("max_batch_rows", None),
        "device": "cuda" if use_gpu or parsed.resources.gpu else "cpu",
        "server_options": options,
        "env": parsed.extra_env,
    }


def image_full_name(repository_url: str, image_name: str, tag: str) -> str:
    return f"{repository_url}/{image_name}:{tag}"


def split_image_name(full: str, *, label: str) -> tuple[str, str, str, str]:
    """``host/db/schema/repo/image:tag`` (or ``/db/schema/repo/image:tag``) ->
    (database, schema, repository, tag)."""
    path, sep, tag = full.strip().rpartition(":")
    parts = [p for p in path.split("/") if p]
    if not sep or not tag or len(parts) < 4 or "/" in tag:
        raise InvalidArgumentError(
            f"{label}: spec.containers[0].image {full!r} is not the full name of a published "
            "image (<repository_url>/<image_name>:<tag>, as SHOW IMAGES IN IMAGE REPOSITORY "
            "lists it)"
        )
    db, schema, repo = parts[-4], parts[-3], parts[-2]
    return db, schema, repo, tag


def document_of(spec: dict[str, Any], image: str | None = None) -> dict[str, Any]:
    """A stored service spec's document: the one a service was created from, else the one a
    model service's fields make (``image``: its full name, once built)."""
    document = spec.get("document")
    if document:
        return document
    return render(
        image=image,
        model_ref=str(
            spec.get("model_ref") or f"{spec.get('model')}/{quote(str(spec.get('version')))}"
        ),
        num_workers=spec.get("num_workers"),
        max_batch_rows=spec.get("max_batch_rows"),
        device=spec.get("device") or "cpu",
        resources=Resources.from_dict(spec.get("resources")),
        ingress_enabled=bool(spec.get("ingress_enabled")),
    )


def resolve_model_ref(s: Session, ref: Any, *, label: str) -> m.ModelVersion:
    """The model version a ``MODEL_REF`` names; a clear error naming it once it is dropped."""
    parsed = ModelRef.parse(ref, label=label)
    qn = qualify(parsed.model, database=None, schema=None, kind="model")
    try:
        model = lookup.in_schema(s, m.Model, qn, "model")
    except ObjectNotFoundError:
        raise ObjectNotFoundError(
            f"{label}: model {qn} (env {ENV_MODEL_REF}) does not exist: it was dropped or "
            "never logged"
        ) from None
    name = ident(parsed.version, kind="version name")
    version = s.scalar(
        select(m.ModelVersion).where(
            m.ModelVersion.model_id == model.id, m.ModelVersion.name == name
        )
    )
    if version is None:
        raise ObjectNotFoundError(
            f"{label}: model {qn} has no version {name} (env {ENV_MODEL_REF}): it was dropped "
            "or never logged"
        )
    return version
