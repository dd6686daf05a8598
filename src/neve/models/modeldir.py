"""The model directory: what the registry writes and every runtime (in-process, server, SQL) loads.

Layout::

    <dir>/manifest.json   model type, handler options, methods with signatures, dependencies
    <dir>/model/          the handler's files
    <dir>/code/           user modules shipped with ``code_paths`` (put on sys.path at load)
    <dir>/user_files/     files shipped with ``user_files`` ({subdirectory: [paths]})

A method is a FUNCTION (one output row per input row) or a TABLE_FUNCTION (a partitioned
method: all rows of one partition in, any number of rows out). A method may declare
parameters (``ModelSignature.params``), given per call and filled from their defaults.

``save_model`` validates everything before it returns; ``load_model`` gives a ``LoadedModel``
whose ``call(method, data)`` is the single way any runtime invokes a model method.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import threading
from collections.abc import Mapping, Sequence
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
from neve.models import frameworks  # noqa: F401  (registers the built-in handlers)
from neve.models.base import ModelHandler, handler_by_type, handler_for_model
from neve.models.signature import (
    ModelSignature,
    coerce_input,
    infer_features,
    infer_params,
    resolve_params,
    to_dataframe,
)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FUNCTION = "FUNCTION"
TABLE_FUNCTION = "TABLE_FUNCTION"


@dataclass
class MethodSpec:
    name: str
    signature: ModelSignature
    options: dict = field(default_factory=dict)  # e.g. {"max_batch_size": 100}
    function_type: str = FUNCTION

    @property
    def partitioned(self) -> bool:
        return self.function_type == TABLE_FUNCTION

    def to_dict(self) -> dict:
        return {
            "signature": self.signature.to_dict(),
            "options": self.options,
            "function_type": self.function_type,
        }


def to_table_frame(raw: Any, names: list[str] | None) -> pd.DataFrame:
    """A table function's raw output as a frame with any number of rows (new index)."""
    if isinstance(raw, pd.DataFrame | pd.Series | dict | np.ndarray | list):
        probe = raw if not isinstance(raw, list) else np.asarray(raw)
        n = len(probe) if not isinstance(probe, dict) else len(pd.DataFrame(probe))
        return to_output_frame(raw, names, pd.RangeIndex(n))
    raise ModelExecutionError(
        f"a partitioned method must return a DataFrame (or columns), got {type(raw).__name__}"
    )


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
    code_paths: Sequence[str | os.PathLike] | None = None,
    python_version: str | None = None,
    dependencies: list[str] | None = None,
    user_files: Mapping[str, Sequence[str | os.PathLike]] | None = None,
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
        _ship_user_files(path, user_files)
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
    code_paths: Sequence[str | os.PathLike] | None,
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

    kinds = handler.function_types(model)
    specs: dict[str, MethodSpec] = {}
    for m in methods:
        kind = kinds.get(m, FUNCTION)
        if signatures and m in signatures:
            sig = signatures[m]
            sig = sig if isinstance(sig, ModelSignature) else ModelSignature.from_dict(sig)
        elif sample_input is not None:
            sig = _infer(handler, model, m, sample_input, partitioned=kind == TABLE_FUNCTION)
        else:
            raise SignatureError(
                f"{handler.model_type} model: no signature for method {m!r}; pass sample_input_data "
                "or signatures"
            )
        declared = infer_params(handler.method_params(model, m))
        undeclared = sorted(set(sig.params) - set(declared))
        if undeclared:
            raise SignatureError(
                f"signature of method {m!r} lists parameter(s) {undeclared} the method does not "
                f"take; it takes {sorted(declared) or 'none'}"
            )
        # The method's own defaults unless the given signature states them.
        sig.params = {**declared, **sig.params}
        specs[m] = MethodSpec(m, sig, dict(method_options.get(m, {})), kind)

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


def _ship_user_files(
    path: Path, user_files: Mapping[str, Sequence[str | os.PathLike]] | None
) -> None:
    for subdir, files in (user_files or {}).items():
        if not isinstance(subdir, str) or subdir in {"", ".", ".."} or "/" in subdir:
            raise InvalidArgumentError(f"user_files: {subdir!r} is not a subdirectory name")
        if isinstance(files, str | Path):
            files = [files]
        for f in files:
            src = Path(f)
            if not src.exists():
                raise InvalidArgumentError(f"user_files[{subdir!r}]: {src} does not exist")
            dst = path / "user_files" / subdir / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, dst)


def _infer(
    handler: type[ModelHandler],
    model: Any,
    method: str,
    sample_input: Any,
    *,
    partitioned: bool = False,
) -> ModelSignature:
    try:
        df = to_dataframe(sample_input)
    except SignatureError as exc:
        raise SignatureError(f"sample_input_data: {exc.message}") from None
    if len(df) == 0:
        raise SignatureError("sample_input_data has no rows: cannot infer a signature")
    inputs = infer_features(df, prefix="input_feature_")
    # A table function sees the whole sample as one partition (it may need every row).
    head = df.reset_index(drop=True) if partitioned else df.head(10).reset_index(drop=True)
    try:
        raw = handler.call(model, method, head)
    except Exception as exc:
        raise SignatureError(
            f"calling {method!r} on sample_input_data failed: {type(exc).__name__}: {exc}"
        ) from exc
    out = to_table_frame(raw, None) if partitioned else to_output_frame(raw, None, head.index)
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
            m: MethodSpec(
                m,
                ModelSignature.from_dict(d["signature"]),
                d.get("options") or {},
                d.get("function_type") or FUNCTION,
            )
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

    def call(self, method: str, data: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Validate ``data`` against the method's signature, call it, return output columns.

        A table function (partitioned method) gets ``data`` as one partition; its output has
        its own rows (a new index). ``params`` are checked against the declared parameters.
        """
        spec = self.method(method)
        values = resolve_params(spec.signature, params, method=spec.name)
        df = data if isinstance(data, pd.DataFrame) else to_dataframe(data)
        df = coerce_input(df, spec.signature, method=spec.name)
        try:
            with self._lock:
                frame = df.reset_index(drop=True)
                if values:
                    raw = self.handler.call_with_params(self.raw, spec.name, frame, values)
                else:
                    raw = self.handler.call(self.raw, spec.name, frame)
        except (SignatureError, ModelExecutionError):
            raise
        except Exception as exc:
            raise ModelExecutionError(
                f"method {spec.name!r} raised {type(exc).__name__}: {exc}"
            ) from exc
        if spec.partitioned:
            return to_table_frame(raw, spec.signature.output_names)
        return to_output_frame(raw, spec.signature.output_names, df.index)

    def call_partitioned(
        self,
        method: str,
        data: pd.DataFrame,
        partition_column: str | None,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """A table function over every partition of ``data`` (by ``partition_column``, in the
        order partitions first appear; all rows are one partition when None). The output is
        the partition column followed by the method's output columns."""
        spec = self.method(method)
        if not spec.partitioned:
            raise InvalidArgumentError(
                f"method {spec.name!r} is not partitioned (a FUNCTION): call it without "
                "partition_column, or mark it @neve.partitioned_api"
            )
        if partition_column is None:
            return self.call(spec.name, data, params)
        key = partition_frames(data, partition_column)
        parts = []
        for value, rows in key:
            out = self.call(spec.name, rows, params)
            if partition_column not in out.columns:
                out.insert(0, partition_column, value)
            parts.append(out)
        if not parts:
            return pd.DataFrame(columns=[partition_column, *spec.signature.output_names])
        return pd.concat(parts, ignore_index=True)


def partition_frames(data: pd.DataFrame, column: str) -> list[tuple[Any, pd.DataFrame]]:
    """``data`` split by ``column`` (matched case-insensitively), partitions in the order they
    first appear, rows in their order."""
    from neve.models.signature import column_lookup

    src = column_lookup(data.columns)(column)
    if src is None:
        raise SignatureError(
            f"partition_column {column!r} is not a column of the input; columns: "
            f"{[str(c) for c in data.columns]}"
        )
    groups = data.groupby(src, sort=False, dropna=False)
    return [(value, rows) for value, rows in groups]


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
