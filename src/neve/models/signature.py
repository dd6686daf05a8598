"""Model method signatures: named, typed inputs and outputs, inferred from sample data.

A signature is stored as JSON in the catalog and in the model directory's manifest:
``{"inputs": [{"name": "A", "type": "DOUBLE", "shape": null, "nullable": true}], "outputs": [...]}``.
Types follow the reference platform's DataType names. ``shape`` is set for tensor features
(an embedding output has shape ``[384]``) and values are then JSON lists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from neve.errors import SignatureError

# Type name -> numpy dtype used when coercing input columns.
DTYPES: dict[str, Any] = {
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FLOAT": np.float32,
    "DOUBLE": np.float64,
    "BOOL": np.bool_,
    "STRING": object,
    "BYTES": object,
    "TIMESTAMP_NTZ": "datetime64[ns]",
}
NUMERIC = {k for k in DTYPES if k.startswith(("INT", "UINT")) or k in {"FLOAT", "DOUBLE"}}


@dataclass
class FeatureSpec:
    name: str
    type: str
    shape: list[int] | None = None
    nullable: bool = True

    def __post_init__(self) -> None:
        if self.type not in DTYPES:
            raise SignatureError(
                f"feature {self.name!r}: unknown type {self.type!r}; valid: {sorted(DTYPES)}"
            )


@dataclass
class ModelSignature:
    inputs: list[FeatureSpec]
    outputs: list[FeatureSpec]
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "inputs": [asdict(f) for f in self.inputs],
            "outputs": [asdict(f) for f in self.outputs],
            "params": self.params,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ModelSignature:
        params = d.get("params") or {}
        if isinstance(params, list):  # [{"name", "type", "default", "shape"}], as written by hand
            params = {p["name"]: {k: v for k, v in p.items() if k != "name"} for p in params}
        return cls(
            inputs=[FeatureSpec(**f) for f in d["inputs"]],
            outputs=[FeatureSpec(**f) for f in d["outputs"]],
            params={name: _stored_param(name, spec) for name, spec in params.items()},
        )

    @property
    def input_names(self) -> list[str]:
        return [f.name for f in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [f.name for f in self.outputs]


def _type_of_values(values: Any, name: str) -> tuple[str, list[int] | None]:
    """Infer (type, shape) of a column or array of values."""
    arr = values if isinstance(values, np.ndarray) else None
    if isinstance(values, pd.Series):
        if values.dtype == object or pd.api.types.is_string_dtype(values.dtype):
            first = next(
                (v for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))),
                None,
            )
            if isinstance(first, list | tuple | np.ndarray):
                inner = np.asarray(first)
                return _numpy_type(inner.dtype, name), _common_shape(values, inner.shape)
            if isinstance(first, bytes):
                return "BYTES", None
            if first is None or isinstance(first, str):
                return "STRING", None
            if isinstance(first, bool):
                return "BOOL", None
            if isinstance(first, int):
                return "INT64", None
            if isinstance(first, float):
                return "DOUBLE", None
            raise SignatureError(
                f"column {name!r}: cannot infer a type from values of type {type(first).__name__}"
            )
        if pd.api.types.is_datetime64_any_dtype(values.dtype):
            return "TIMESTAMP_NTZ", None
        if isinstance(values.dtype, pd.CategoricalDtype):
            return "STRING", None
        arr = values.to_numpy()
    if arr is None:
        arr = np.asarray(values)
    if arr.ndim > 1:
        return _numpy_type(arr.dtype, name), list(arr.shape[1:])
    return _numpy_type(arr.dtype, name), None


def _common_shape(values: pd.Series, first: tuple[int, ...], limit: int = 100) -> list[int]:
    """Shape shared by the first ``limit`` tensor values; a dimension that varies is -1.

    Token-level outputs (e.g. a feature-extraction pipeline) have one row per token, so their
    length differs from row to row while the hidden size stays fixed: shape ``[-1, 384]``.
    """
    shape = list(first)
    for v in values.head(limit):
        if not isinstance(v, list | tuple | np.ndarray):
            continue
        try:
            other = np.shape(v)
        except ValueError:  # ragged nested lists have no shape at all
            return [-1] * len(shape)
        if len(other) != len(shape):
            return [-1] * len(shape)
        shape = [d if d == o else -1 for d, o in zip(shape, other, strict=True)]
    return shape


def _numpy_type(dtype: np.dtype, name: str) -> str:
    dtype = np.dtype(dtype) if not isinstance(dtype, np.dtype) else dtype
    if dtype.kind == "b":
        return "BOOL"
    if dtype.kind in "iu":
        return f"{'U' if dtype.kind == 'u' else ''}INT{dtype.itemsize * 8}"
    if dtype.kind == "f":
        return "FLOAT" if dtype.itemsize <= 4 else "DOUBLE"
    if dtype.kind in "OUS":
        return "STRING"
    if dtype.kind == "M":
        return "TIMESTAMP_NTZ"
    raise SignatureError(f"column {name!r}: unsupported dtype {dtype}")


def to_dataframe(data: Any, *, feature_prefix: str = "input_feature_") -> pd.DataFrame:
    """Turn supported sample/input data into a DataFrame with string column names.

    Accepts a pandas DataFrame or Series, a numpy array (1-D or 2-D), a list of strings
    (one STRING column), a list of dicts (records) or a list of lists (rows).
    """
    if isinstance(data, pd.DataFrame):
        df = data
        if not all(isinstance(c, str) for c in df.columns):
            df = df.copy()
            df.columns = [
                c if isinstance(c, str) else f"{feature_prefix}{i}"
                for i, c in enumerate(df.columns)
            ]
        return df
    if isinstance(data, pd.Series):
        return data.to_frame(name=str(data.name) if data.name is not None else f"{feature_prefix}0")
    if isinstance(data, np.ndarray):
        if data.ndim == 1:
            return pd.DataFrame({f"{feature_prefix}0": data})
        if data.ndim == 2:
            return pd.DataFrame(
                data, columns=[f"{feature_prefix}{i}" for i in range(data.shape[1])]
            )
        raise SignatureError(f"numpy input must be 1-D or 2-D, got shape {data.shape}")
    if isinstance(data, list | tuple):
        if not data:
            raise SignatureError("input data is empty")
        first = data[0]
        if isinstance(first, str | bytes):
            return pd.DataFrame({f"{feature_prefix}0": list(data)})
        if isinstance(first, dict):
            return pd.DataFrame.from_records(list(data))
        if isinstance(first, list | tuple | np.ndarray):
            return pd.DataFrame(
                [list(r) for r in data], columns=[f"{feature_prefix}{i}" for i in range(len(first))]
            )
        return pd.DataFrame({f"{feature_prefix}0": list(data)})
    raise SignatureError(
        f"unsupported input data type {type(data).__name__}: use a pandas DataFrame, numpy array, "
        "list of strings or list of dicts"
    )


def infer_features(data: Any, *, prefix: str) -> list[FeatureSpec]:
    df = to_dataframe(data, feature_prefix=prefix)
    if len(df) == 0:
        raise SignatureError("sample data has no rows: cannot infer a signature")
    feats = []
    for col in df.columns:
        t, shape = _type_of_values(df[col], str(col))
        feats.append(
            FeatureSpec(
                name=str(col), type=t, shape=shape, nullable=bool(df[col].isna().any()) or True
            )
        )
    return feats


def infer_signature(sample_input: Any, sample_output: Any) -> ModelSignature:
    """Infer a signature from sample input and the output a method returned for it."""
    inputs = infer_features(sample_input, prefix="input_feature_")
    outputs = infer_features(sample_output, prefix="output_feature_")
    return ModelSignature(inputs=inputs, outputs=outputs)


def column_lookup(columns: Iterable[Any]) -> Callable[[str], Any | None]:
    """A finder of signature names among ``columns``: the exact name, else the one that matches
    case-insensitively (SQL callers upper-case names); None when absent."""
    present = list(columns)
    exact = set(present)
    by_upper = {str(c).upper(): c for c in present}
    return lambda name: name if name in exact else by_upper.get(name.upper())


def coerce_input(df: pd.DataFrame, sig: ModelSignature, *, method: str) -> pd.DataFrame:
    """Validate ``df`` against ``sig.inputs`` and return it with signature column order and dtypes.

    Column names match case-insensitively (SQL callers upper-case them). Raises ``SignatureError``
    naming the method, the column and (for a bad value) the row.
    """
    if _already_typed(df, sig.inputs):
        # Every column exists under its exact name with its exact numeric dtype (the inference
        # server and SQL UDFs build such frames): nothing to convert, and rebuilding the frame
        # costs about 1.4 ms per 2048 x 20 call.
        names = sig.input_names
        return df if list(df.columns) == names else df[names]
    find = column_lookup(df.columns)
    cols: dict[str, Any] = {}
    missing = []
    for feat in sig.inputs:
        src = find(feat.name)
        if src is None:
            missing.append(feat.name)
            continue
        cols[feat.name] = _coerce_column(df[src], feat, method=method)
    if missing:
        raise SignatureError(
            f"method {method!r}: input is missing column(s) {missing}; expected {sig.input_names}, "
            f"got {[str(c) for c in df.columns]}"
        )
    return pd.DataFrame(cols, index=df.index)


def _already_typed(df: pd.DataFrame, inputs: list[FeatureSpec]) -> bool:
    dtypes = df.dtypes
    for feat in inputs:
        if feat.shape or (feat.type not in NUMERIC and feat.type != "BOOL"):
            return False
        if feat.name not in dtypes.index or dtypes[feat.name] != np.dtype(DTYPES[feat.type]):
            return False
    return df.columns.is_unique


def _coerce_column(col: pd.Series, feat: FeatureSpec, *, method: str) -> pd.Series:
    if feat.shape:
        return col
    if feat.type in NUMERIC or feat.type == "BOOL":
        if col.dtype == object or pd.api.types.is_string_dtype(col.dtype):
            for i, v in zip(col.index, col, strict=True):
                if v is None:
                    continue
                if isinstance(v, str | bytes | list | dict) or (
                    feat.type != "BOOL" and isinstance(v, bool)
                ):
                    raise SignatureError(
                        f"method {method!r}: row {i}, column {feat.name!r}: expected {feat.type}, "
                        f"got {type(v).__name__} {v!r}"
                    )
        try:
            if col.isna().any():
                return col.astype(np.float64) if feat.type != "BOOL" else col
            return col.astype(DTYPES[feat.type])
        except (TypeError, ValueError) as exc:
            raise SignatureError(
                f"method {method!r}: column {feat.name!r}: cannot convert to {feat.type}: {exc}"
            ) from None
    if feat.type == "STRING":
        for i, v in zip(col.index, col, strict=True):
            if (
                v is not None
                and not isinstance(v, str)
                and not (isinstance(v, float) and np.isnan(v))
            ):
                raise SignatureError(
                    f"method {method!r}: row {i}, column {feat.name!r}: expected STRING, got {type(v).__name__} {v!r}"
                )
        return col.astype(object)
    return col


# -- method parameters ----------------------------------------------------------------------------
# ``ModelSignature.params`` is {name: {"type": T, "default": value, "shape": [..] | None}}:
# per-call options such as a temperature, given as ``params={"temperature": 0.2}`` and filled
# from the defaults when absent.


def _stored_param(name: str, spec: Any) -> dict[str, Any]:
    """A params entry as stored: a full spec, or just a default (its type inferred)."""
    if not isinstance(spec, dict):
        return param_spec(name, spec)
    if "type" not in spec:
        return param_spec(name, spec.get("default"))
    if spec["type"] not in DTYPES:
        raise SignatureError(f"parameter {name!r}: unknown type {spec['type']!r}")
    return {"shape": None, "default": None, **spec}


def param_spec(name: str, default: Any) -> dict[str, Any]:
    """The stored spec of a parameter inferred from its default value."""
    if isinstance(default, list | tuple | np.ndarray):
        arr = np.asarray(default)
        kind = _numpy_type(arr.dtype, name) if arr.size else "DOUBLE"
        return {"type": kind, "default": arr.tolist(), "shape": [-1] * max(arr.ndim, 1)}
    if isinstance(default, bool | np.bool_):
        kind = "BOOL"
    elif isinstance(default, int | np.integer):
        kind = "INT64"
    elif isinstance(default, float | np.floating):
        kind = "DOUBLE"
    elif isinstance(default, str) or default is None:
        kind = "STRING"
    else:
        raise SignatureError(
            f"parameter {name!r}: default {default!r} ({type(default).__name__}) is not a bool, "
            "number, string or list of those"
        )
    value = default.item() if isinstance(default, np.generic) else default
    return {"type": kind, "default": value, "shape": None}


def infer_params(defaults: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: param_spec(name, value) for name, value in defaults.items()}


def resolve_params(sig: ModelSignature, given: dict[str, Any] | None, *, method: str) -> dict:
    """Every declared parameter's value for one call: ``given`` checked and converted to the
    declared type, the default where absent. An undeclared name is a ``SignatureError``."""
    given = dict(given or {})
    declared = sig.params or {}
    unknown = [k for k in given if k not in declared]
    if unknown:
        raise SignatureError(
            f"method {method!r} has no parameter(s) {unknown}; parameters: "
            f"{sorted(declared) or 'none'}"
        )
    out: dict[str, Any] = {}
    for name, spec in declared.items():
        out[name] = (
            _param_value(given[name], spec, name, method) if name in given else spec["default"]
        )
    return out


def _param_value(value: Any, spec: dict[str, Any], name: str, method: str) -> Any:
    kind = spec["type"]
    if spec.get("shape"):
        if not isinstance(value, list | tuple | np.ndarray):
            raise SignatureError(
                f"method {method!r}: parameter {name!r} expects a list of {kind}, got {value!r}"
            )
        return [_param_value(v, {"type": kind}, name, method) for v in np.asarray(value).tolist()]
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    ok = {
        "BOOL": isinstance(value, bool),
        "STRING": isinstance(value, str),
    }.get(kind)
    if ok is None and kind in NUMERIC:
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if kind in {"FLOAT", "DOUBLE"} and (is_int or isinstance(value, float)):
            return float(value)
        if is_int or (isinstance(value, float) and value.is_integer()):
            return int(value)
        ok = False
    if not ok:
        raise SignatureError(
            f"method {method!r}: parameter {name!r} expects {kind}, got "
            f"{type(value).__name__} {value!r}"
        )
    return value
