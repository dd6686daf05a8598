"""The model directory: what the registry writes and every runtime (in-process, server, SQL) loads.

Layout::

    <dir>/manifest.json   model type, handler options, methods with signatures, dependencies
    <dir>/model/          the handler's files
    <dir>/code/           user modules shipped with ``code_paths`` (put on sys.path at load)

``save_model`` validates everything before it returns; ``load_model`` gives a ``LoadedModel``
whose ``call(method, data)`` is the single way any runtime invokes a model method.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neve.errors import (
    InvalidArgumentError,
    ModelExecutionError,
    ModelSerializationError,
    NeveError,
    ObjectNotFoundError,
    SignatureError,
)
from neve.models.base import ModelHandler, handler_by_type, handler_for_model
from neve.models.signature import ModelSignature, coerce_input, infer_features, to_dataframe

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass
class MethodSpec:
    name: str
    signature: ModelSignature
    options: dict = field(default_factory=dict)  # e.g. {"max_batch_size": 100}

    def to_dict(self) -> dict:
        return {"signature": self.signature.to_dict(), "options": self.options}


def to_output_frame(raw: Any, names: list[str] | None, index: pd.Index) -> pd.DataFrame:
    """Turn a method's raw output into a DataFrame of output columns aligned with ``index``."""
    if isinstance(raw, pd.Series):
        raw = raw.to_frame(name=names[0] if names else "output_feature_0")
    if isinstance(raw, pd.DataFrame):
        out = raw.reset_index(drop=True)
        if names and len(names) == len(out.columns) and list(map(str, out.columns)) != names:
            out.columns = names
        out.columns = [str(c) for c in out.columns]
    elif isinstance(raw, dict):
        out = pd.DataFrame({str(k): _column(v) for k, v in raw.items()})
    else:
        arr = raw if isinstance(raw, np.ndarray) else np.asarray(raw)
        if arr.ndim == 1:
            out = pd.DataFrame({(names[0] if names else "output_feature_0"): arr})
        elif arr.ndim == 2:
            cols = (
                names
                if names and len(names) == arr.shape[1]
                else [f"output_feature_{i}" for i in range(arr.shape[1])]
            )
            out = pd.DataFrame(arr, columns=cols)
        else:  # higher-rank: one tensor-valued column
            out = pd.DataFrame({(names[0] if names else "output_feature_0"): list(arr)})
    if len(out) != len(index):
        raise ModelExecutionError(f"model returned {len(out)} rows for {len(index)} input rows")
    out.index = index
    return out


def _column(v: Any) -> Any:
    arr = v if isinstance(v, np.ndarray) else None
    if arr is not None and arr.ndim > 1:
        return list(arr)
    return v


def save_model(
    model: Any,
    path: str | Path,
    *,
    sample_input: Any = None,
    signatures: dict[str, ModelSignature | dict] | None = None,
    target_methods: list[str] | None = None,
    method_options: dict[str, dict] | None = None,
    code_paths: list[str | Path] | None = None,
    python_version: str | None = None,
    dependencies: list[str] | None = None,
) -> dict:
    """Save ``model`` to the new directory ``path`` and return its manifest.

    Signatures come from ``signatures`` when given, otherwise they are inferred by calling each
    target method on ``sample_input``. On any error the directory is removed.
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise InvalidArgumentError(f"model directory {path} is not empty")
    handler = handler_for_model(model)
    handler.validate(model)
    try:
        manifest = _save(
            handler,
            model,
            path,
            sample_input,
            signatures,
            target_methods,
            method_options,
            code_paths,
            python_version,
            dependencies,
        )
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return manifest


def _save(
    handler: type[ModelHandler],
    model: Any,
    path: Path,
    sample_input: Any,
    signatures: dict | None,
    target_methods: list[str] | None,
    method_options: dict[str, dict] | None,
    code_paths: list | None,
    python_version: str | None,
    dependencies: list[str] | None,
) -> dict:
    available = handler.methods(model)
    methods = (
        list(target_methods) if target_methods else (list(signatures) if signatures else available)
    )
    unknown = [m for m in methods if m not in available]
    if unknown:
        raise InvalidArgumentError(
            f"{handler.model_type} model has no method(s) {unknown}; available: {available}"
        )
    method_options = method_options or {}
    bad_opts = [m for m in method_options if m not in methods]
    if bad_opts:
        raise InvalidArgumentError(
            f"method_options name unknown method(s) {bad_opts}; target methods: {methods}"
        )

    specs: dict[str, MethodSpec] = {}
    for m in methods:
        if signatures and m in signatures:
            sig = signatures[m]
            sig = sig if isinstance(sig, ModelSignature) else ModelSignature.from_dict(sig)
        elif sample_input is not None:
            sig = _infer(handler, model, m, sample_input)
        else:
            raise SignatureError(
                f"{handler.model_type} model: no signature for method {m!r}; pass sample_input_data "
                "or signatures"
            )
        specs[m] = MethodSpec(m, sig, dict(method_options.get(m, {})))

    path.mkdir(parents=True, exist_ok=True)
    try:
        options = handler.save(model, path / "model")
    except NeveError:
        raise  # already names the object and the problem
    except Exception as exc:
        raise ModelSerializationError(f"cannot save {handler.model_type} model: {exc}") from exc

    shipped: list[str] = []
    for cp in code_paths or []:
        src = Path(cp)
        if not src.exists():
            raise InvalidArgumentError(f"code path {src} does not exist")
        dst = path / "code" / src.name
        dst.parent.mkdir(exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dst)
        shipped.append(src.name)

    manifest = {
        "format_version": FORMAT_VERSION,
        "model_type": handler.model_type,
        "handler_options": options,
        "methods": {m: s.to_dict() for m, s in specs.items()},
        "gpu_capable": handler.gpu_capable,
        # The framework's own distributions (unpinned); the registry pins and merges them.
        "framework_packages": handler.requirements(model),
        "python_version": python_version or f"{sys.version_info.major}.{sys.version_info.minor}",
        "dependencies": dependencies or [],
        "code_paths": shipped,
    }
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def _infer(
    handler: type[ModelHandler], model: Any, method: str, sample_input: Any
) -> ModelSignature:
    try:
        df = to_dataframe(sample_input)
    except SignatureError as exc:
        raise SignatureError(f"sample_input_data: {exc.message}") from None
    if len(df) == 0:
        raise SignatureError("sample_input_data has no rows: cannot infer a signature")
    inputs = infer_features(df, prefix="input_feature_")
    head = df.head(10).reset_index(drop=True)
    try:
        raw = handler.call(model, method, head)
    except Exception as exc:
        raise SignatureError(
            f"calling {method!r} on sample_input_data failed: {type(exc).__name__}: {exc}"
        ) from exc
    out = to_output_frame(raw, None, head.index)
    return ModelSignature(inputs=inputs, outputs=infer_features(out, prefix="output_feature_"))


def read_manifest(path: str | Path) -> dict:
    file = Path(path) / MANIFEST
    if not file.exists():
        raise ObjectNotFoundError(f"{path} is not a neve model directory (no {MANIFEST})")
    return json.loads(file.read_text())


def directory_digest(path: str | Path) -> str:
    """SHA-256 over every file's relative path and content (the artifact checksum)."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


class LoadedModel:
    """A model loaded from a model directory, callable by method name on tabular input."""

    def __init__(self, path: Path, manifest: dict, raw: Any, handler: type[ModelHandler]) -> None:
        self.path = path
        self.manifest = manifest
        self.raw = raw
        self.handler = handler
        self.methods: dict[str, MethodSpec] = {
            m: MethodSpec(m, ModelSignature.from_dict(d["signature"]), d.get("options") or {})
            for m, d in manifest["methods"].items()
        }
        # Frameworks such as torch are thread-safe for inference but some (custom models) may
        # not be; one lock per model keeps concurrent callers from interleaving inside it.
        self._lock = threading.Lock()

    @property
    def model_type(self) -> str:
        return self.manifest["model_type"]

    def method(self, name: str) -> MethodSpec:
        spec = self.methods.get(name) or self.methods.get(name.lower())
        if spec is None:
            by_upper = {m.upper(): s for m, s in self.methods.items()}
            spec = by_upper.get(name.upper().replace("-", "_"))
        if spec is None:
            raise ObjectNotFoundError(
                f"model has no method {name!r}; methods: {sorted(self.methods)}"
            )
        return spec

    def call(self, method: str, data: Any) -> pd.DataFrame:
        """Validate ``data`` against the method's signature, call it, return output columns."""
        spec = self.method(method)
        df = data if isinstance(data, pd.DataFrame) else to_dataframe(data)
        df = coerce_input(df, spec.signature, method=spec.name)
        try:
            with self._lock:
                raw = self.handler.call(self.raw, spec.name, df.reset_index(drop=True))
        except (SignatureError, ModelExecutionError):
            raise
        except Exception as exc:
            raise ModelExecutionError(
                f"method {spec.name!r} raised {type(exc).__name__}: {exc}"
            ) from exc
        return to_output_frame(raw, spec.signature.output_names, df.index)


def load_model(path: str | Path, *, device: str = "cpu") -> LoadedModel:
    root = Path(path)
    manifest = read_manifest(root)
    handler = handler_by_type(manifest["model_type"])
    code = root / "code"
    if code.is_dir() and str(code) not in sys.path:
        sys.path.insert(0, str(code))
    try:
        raw = handler.load(root / "model", manifest.get("handler_options") or {}, device=device)
    except Exception as exc:
        raise ModelSerializationError(
            f"cannot load {manifest['model_type']} model from {root}: {exc}"
        ) from exc
    return LoadedModel(root, manifest, raw, handler)
