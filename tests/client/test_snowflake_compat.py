"""Code written for snowflake-ml-python's registry runs on neve unchanged.

``REFERENCE`` lists, from that library's documented 1.x API, every public method and property
of ``Registry``, ``Model`` and ``ModelVersion`` with its parameters and defaults. The first
tests check neve's classes against it with ``inspect.signature``; the live walk then makes each
call as a user of that library writes it, on a real account, and reports every call: it either
works (with the documented return shape) or raises ``NotSupportedError`` naming the feature and
what to use instead.
"""

from __future__ import annotations

import enum
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import neve
from neve.errors import NotSupportedError, ObjectNotFoundError

pytestmark = pytest.mark.e2e  # starts a control plane daemon

REQUIRED = object()  # a parameter without a default

#: {class: {method: [(parameter, default)]}}; properties are listed as ("property", None).
REFERENCE: dict[str, dict[str, Any]] = {
    "Registry": {
        "__init__": [
            ("session", REQUIRED),
            ("database_name", None),
            ("schema_name", None),
            ("options", None),
        ],
        "location": "property",
        "log_model": [
            ("model", REQUIRED),
            ("model_name", REQUIRED),
            ("version_name", None),
            ("comment", None),
            ("metrics", None),
            ("conda_dependencies", None),
            ("pip_requirements", None),
            ("artifact_repository_map", None),
            ("resource_constraint", None),
            ("target_platforms", None),
            ("python_version", None),
            ("signatures", None),
            ("sample_input_data", None),
            ("user_files", None),
            ("code_paths", None),
            ("ext_modules", None),
            ("task", "UNKNOWN"),
            ("options", None),
        ],
        "get_model": [("model_name", REQUIRED)],
        "models": [],
        "show_models": [],
        "delete_model": [("model_name", REQUIRED)],
        "add_monitor": [
            ("name", REQUIRED),
            ("source_config", REQUIRED),
            ("model_monitor_config", REQUIRED),
        ],
        "get_monitor": [("name", None), ("model_version", None)],
        "show_model_monitors": [],
        "delete_monitor": [("name", REQUIRED)],
    },
    "Model": {
        "name": "property",
        "fully_qualified_name": "property",
        "description": "property",
        "comment": "property",
        "default": "property",
        "first": [],
        "last": [],
        "version": [("version_or_alias", REQUIRED)],
        "versions": [],
        "show_versions": [],
        "delete_version": [("version_name", REQUIRED)],
        "show_tags": [],
        "get_tag": [("tag_name", REQUIRED)],
        "set_tag": [("tag_name", REQUIRED), ("tag_value", REQUIRED)],
        "unset_tag": [("tag_name", REQUIRED)],
        "rename": [("model_name", REQUIRED)],
    },
    "ModelVersion": {
        "model_name": "property",
        "version_name": "property",
        "fully_qualified_model_name": "property",
        "description": "property",
        "comment": "property",
        "show_metrics": [],
        "get_metric": [("metric_name", REQUIRED)],
        "set_metric": [("metric_name", REQUIRED), ("value", REQUIRED)],
        "delete_metric": [("metric_name", REQUIRED)],
        "set_alias": [("alias_name", REQUIRED)],
        "unset_alias": [("version_or_alias", REQUIRED)],
        "get_model_task": [],
        "show_functions": [],
        "run": [
            ("X", REQUIRED),
            ("service_name", None),
            ("function_name", None),
            ("partition_column", None),
            ("strict_input_validation", False),
            ("params", None),
        ],
        "run_batch": [("X", None), ("compute_pool", REQUIRED)],
        "export": [("target_path", REQUIRED), ("export_mode", "model")],
        "load": [("force", False), ("options", None)],
        "create_service": [
            ("service_name", REQUIRED),
            ("image_build_compute_pool", None),
            ("service_compute_pool", REQUIRED),
            ("image_repo", None),
            ("ingress_enabled", False),
            ("min_instances", 0),
            ("max_instances", 1),
            ("cpu_requests", None),
            ("memory_requests", None),
            ("gpu_requests", None),
            ("num_workers", None),
            ("max_batch_rows", None),
            ("force_rebuild", False),
            ("build_external_access_integration", None),
            ("build_external_access_integrations", None),
            ("block", True),
            ("autocapture", None),
            ("inference_engine_options", None),
            ("experimental_options", None),
            ("feature_sources_per_function", None),
        ],
        "list_services": [],
        "delete_service": [("service_name", REQUIRED)],
    },
}

#: Defaults neve keeps on purpose, and why (the README's "Coming from snowflake-ml-python").
DIFFERENT_DEFAULTS = {
    # max_instances=n alone gives a fixed size n (min = max); pass min_instances=0 to let an
    # idle service suspend itself, as the reference's default does.
    ("ModelVersion", "create_service", "min_instances"): None,
}

CLASSES = {"Registry": neve.Registry, "Model": neve.Model, "ModelVersion": neve.ModelVersion}


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def _entries() -> list[tuple[str, str, Any]]:
    return [(c, m, spec) for c, methods in REFERENCE.items() for m, spec in methods.items()]


@pytest.mark.parametrize(
    ("cls", "member", "spec"), _entries(), ids=[f"{c}.{m}" for c, m, _ in _entries()]
)
def test_member_has_the_reference_shape(cls: str, member: str, spec: Any) -> None:
    obj = getattr(CLASSES[cls], member, None)
    assert obj is not None, f"{cls}.{member} is missing"
    if spec == "property":
        assert isinstance(obj, property), f"{cls}.{member} is not a property"
        return
    params = inspect.signature(obj).parameters
    for name, default in spec:
        assert name in params, f"{cls}.{member} has no parameter {name!r}"
        p = params[name]
        assert p.kind not in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL), f"{cls}.{member}({name})"
        expected = DIFFERENT_DEFAULTS.get((cls, member, name), default)
        if expected is REQUIRED:
            assert p.default is p.empty, f"{cls}.{member}({name}) should be required"
        else:
            assert p.default is not p.empty, f"{cls}.{member}({name}) should be optional"
            assert _plain(p.default) == expected, f"{cls}.{member}({name}={p.default!r})"
    # Nothing neve adds is required: reference code never passes it.
    extra_required = [
        n
        for n, p in params.items()
        if n not in {"self", *(name for name, _ in spec)}
        and p.default is p.empty
        and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]
    assert not extra_required, f"{cls}.{member} requires {extra_required}"


# -- the live walk ----------------------------------------------------------------------------


class Seasonal(neve.CustomModel):
    """A method with a parameter and a table function, as reference code declares them."""

    @neve.inference_api
    def predict(self, X: pd.DataFrame, *, scale: float = 1.0) -> pd.DataFrame:
        return pd.DataFrame({"y": X["a"] * 2 * scale})

    @neve.partitioned_api
    def forecast(self, X: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"mean": [X["a"].mean()], "rows": [len(X)]})


@pytest.fixture(scope="module")
def walk(served_account, tmp_path_factory) -> dict[str, Any]:
    from sklearn.linear_model import LinearRegression

    session, _account = served_account
    session.sql("CREATE DATABASE IF NOT EXISTS ml").collect()
    session.sql("CREATE SCHEMA IF NOT EXISTS ml.registry").collect()
    session.sql("CREATE SCHEMA IF NOT EXISTS ml.other").collect()
    rng = np.random.default_rng(1)
    train = pd.DataFrame({"a": rng.normal(size=40), "b": rng.normal(size=40)})
    lin = LinearRegression().fit(train, 2 * train.a + train.b)
    return {
        "session": session,
        "train": train,
        "lin": lin,
        "tmp": tmp_path_factory.mktemp("compat"),
        "report": [],
    }


def call(walk: dict[str, Any], label: str, fn: Any) -> Any:
    """Make one call; record 'ok' or the NotSupportedError's message (must say what to use)."""
    try:
        value = fn()
    except NotSupportedError as exc:
        assert "not supported by neve; " in exc.message, f"{label}: unhelpful: {exc.message}"
        walk["report"].append((label, "NotSupported: " + exc.message))
        return exc
    walk["report"].append((label, "ok"))
    return value


def test_registry_calls_as_reference_code_writes_them(walk: dict[str, Any], capsys) -> None:
    session, train, lin = walk["session"], walk["train"], walk["lin"]
    reg = neve.Registry(session=session, database_name="ml", schema_name="registry", options={})
    assert call(walk, "Registry.location", lambda: reg.location) == "ML.REGISTRY"

    mv = call(
        walk,
        "log_model(fully qualified name, task, user_files)",
        lambda: reg.log_model(
            lin,
            model_name="ml.registry.lin",
            version_name="v1",
            comment="first",
            metrics={"r2": 1.0},
            conda_dependencies=["scikit-learn"],
            sample_input_data=train,
            user_files={"notes": [str(_notes(walk["tmp"]))]},
            task=neve.Task.TABULAR_REGRESSION,
            options={"relax_version": False},
        ),
    )
    assert isinstance(mv, neve.ModelVersion) and mv.version_name == "V1"
    assert isinstance(
        call(walk, "get_model(qualified)", lambda: reg.get_model("ml.registry.lin")), neve.Model
    )
    assert call(walk, "get_model(schema.name)", lambda: reg.get_model("registry.lin")).name == "LIN"
    with pytest.raises(ValueError):  # the reference raises ValueError for a missing model
        reg.get_model("ml.registry.nosuch")
    walk["report"].append(("get_model(missing) raises ValueError", "ok"))
    assert "LIN" in set(call(walk, "show_models", reg.show_models)["name"])
    assert [m.name for m in call(walk, "models", reg.models)] == ["LIN"]

    m = reg.get_model("lin")
    assert call(walk, "Model.name", lambda: m.name) == "LIN"
    assert (
        call(walk, "Model.fully_qualified_name", lambda: m.fully_qualified_name)
        == "ML.REGISTRY.LIN"
    )
    m.description = "linear"
    assert call(walk, "Model.description", lambda: m.description) == "linear"
    assert m.comment == "linear"
    assert call(walk, "Model.default", lambda: m.default).version_name == "V1"
    assert call(walk, "Model.first", m.first) == call(walk, "Model.last", m.last)
    assert call(walk, "Model.version", lambda: m.version("v1")) == mv
    assert [v.version_name for v in call(walk, "Model.versions", m.versions)] == ["V1"]
    assert list(call(walk, "Model.show_versions", m.show_versions)["name"]) == ["V1"]
    call(walk, "Model.set_tag", lambda: m.set_tag("stage", "prod"))
    assert call(walk, "Model.get_tag", lambda: m.get_tag("stage")) == "prod"
    assert call(walk, "Model.show_tags", m.show_tags) == {"STAGE": "prod"}
    call(walk, "Model.unset_tag", lambda: m.unset_tag("stage"))
    assert m.get_tag("stage") is None

    # ModelVersion
    assert call(walk, "mv.model_name", lambda: mv.model_name) == "LIN"
    assert (
        call(walk, "mv.fully_qualified_model_name", lambda: mv.fully_qualified_model_name)
        == "ML.REGISTRY.LIN"
    )
    mv.description = "v1 notes"
    assert call(walk, "mv.description", lambda: mv.description) == "v1 notes" == mv.comment
    call(walk, "mv.set_metric", lambda: mv.set_metric(metric_name="mae", value=0.1))
    assert call(walk, "mv.get_metric", lambda: mv.get_metric("mae")) == 0.1
    assert call(walk, "mv.show_metrics", mv.show_metrics) == {"r2": 1.0, "mae": 0.1}
    call(walk, "mv.delete_metric", lambda: mv.delete_metric("mae"))
    call(walk, "mv.set_alias", lambda: mv.set_alias("champion"))
    assert m.version("champion") == mv
    call(
        walk,
        "mv.unset_alias(version_or_alias=)",
        lambda: mv.unset_alias(version_or_alias="champion"),
    )
    with pytest.raises(ValueError):
        m.version("champion")
    assert call(walk, "mv.get_model_task", mv.get_model_task) is neve.Task.TABULAR_REGRESSION
    functions = call(walk, "mv.show_functions", mv.show_functions)
    assert [f["name"] for f in functions] == ["PREDICT"]
    f = functions[0]
    assert {
        "name",
        "target_method",
        "target_method_function_type",
        "signature",
        "is_partitioned",
    } <= set(f)
    assert f["signature"].input_names == ["a", "b"] and f["is_partitioned"] is False

    out = call(
        walk,
        "mv.run(strict_input_validation=True, params=None)",
        lambda: mv.run(
            train.head(5), function_name="predict", strict_input_validation=True, params=None
        ),
    )
    np.testing.assert_allclose(out["output_feature_0"], lin.predict(train.head(5)), rtol=1e-12)
    with pytest.raises(ValueError, match="strict_input_validation"):
        mv.run(train.head(2).astype({"a": str}), strict_input_validation=True)
    export_dir = walk["tmp"] / "export"
    call(
        walk,
        "mv.export(export_mode=FULL)",
        lambda: mv.export(export_dir, export_mode=neve.ExportMode.FULL),
    )
    assert (export_dir / "manifest.json").is_file() and (export_dir / "requirements.txt").is_file()
    assert (export_dir / "user_files" / "notes" / "notes.txt").read_text() == "hello"
    loaded = call(
        walk, "mv.load(force=False, options=None)", lambda: mv.load(force=False, options=None)
    )
    np.testing.assert_allclose(loaded.predict(train), lin.predict(train), rtol=1e-12)
    call(walk, "mv.load(force=True)", lambda: mv.load(force=True))
    assert call(walk, "mv.list_services", mv.list_services).empty

    # copying a version into another schema's registry, by its qualified name
    copy = call(
        walk,
        "log_model(model_version, ...)",
        lambda: reg.log_model(mv, model_name="ml.other.lin_copy", version_name="c1"),
    )
    assert copy.fully_qualified_model_name == "ML.OTHER.LIN_COPY"
    np.testing.assert_allclose(
        copy.run(train.head(3))["output_feature_0"], out["output_feature_0"][:3]
    )
    assert (
        copy.show_metrics() == {"r2": 1.0} and copy.get_model_task() is neve.Task.TABULAR_REGRESSION
    )

    # rename: versions and files follow
    call(walk, "Model.rename", lambda: reg.get_model("ml.other.lin_copy").rename("lin_renamed"))
    other = neve.Registry(session, database_name="ml", schema_name="other")
    assert [x.name for x in other.models()] == ["LIN_RENAMED"]
    assert other.get_model("lin_renamed").version("c1").run(train.head(1)).shape == (1, 3)
    with pytest.raises(ObjectNotFoundError):
        other.get_model("lin_copy")
    call(walk, "delete_model(qualified)", lambda: reg.delete_model("ml.other.lin_renamed"))
    assert other.models() == []

    # not offered: each says what to use instead
    for label, fn in (
        ("run_batch", lambda: mv.run_batch(train, compute_pool="p", output_spec=None)),
        ("add_monitor", lambda: reg.add_monitor("m", None, None)),
        ("get_monitor", lambda: reg.get_monitor(name="m")),
        ("show_model_monitors", reg.show_model_monitors),
        ("delete_monitor", lambda: reg.delete_monitor("m")),
        (
            "log_model(artifact_repository_map)",
            lambda: reg.log_model(lin, model_name="x", artifact_repository_map={"pip": "r"}),
        ),
        (
            "log_model(resource_constraint)",
            lambda: reg.log_model(lin, model_name="x", resource_constraint={"architecture": "x86"}),
        ),
        (
            "create_service(autocapture=True)",
            lambda: mv.create_service(service_name="s", service_compute_pool="p", autocapture=True),
        ),
        ("Model.rename to another schema", lambda: m.rename("ml.other.lin")),
    ):
        assert isinstance(call(walk, label, fn), NotSupportedError), label

    with capsys.disabled():
        print("\nsnowflake-ml-python call shapes on neve:")
        for label, result in walk["report"]:
            print(f"  {label:55s} {result}")


def _notes(tmp: Path) -> Path:
    path = tmp / "notes.txt"
    path.write_text("hello")
    return path


def test_params_and_table_functions_in_process(walk: dict[str, Any]) -> None:
    session = walk["session"]
    reg = neve.Registry(session, database_name="ml", schema_name="registry")
    data = pd.DataFrame({"store": [1, 1, 2, 2, 2], "a": [1.0, 3.0, 2.0, 4.0, 6.0]})
    mv = reg.log_model(Seasonal(), model_name="seasonal", version_name="v1", sample_input_data=data)
    functions = {f["name"]: f for f in mv.show_functions()}
    assert functions["FORECAST"]["target_method_function_type"] == "TABLE_FUNCTION"
    assert functions["FORECAST"]["is_partitioned"] is True
    assert functions["PREDICT"]["signature"].params["scale"] == {
        "type": "DOUBLE",
        "default": 1.0,
        "shape": None,
    }

    assert list(mv.run(data, function_name="predict")["y"]) == [2.0, 6.0, 4.0, 8.0, 12.0]
    scaled = mv.run(data, function_name="predict", params={"scale": 0.5})
    assert list(scaled["y"]) == [1.0, 3.0, 2.0, 4.0, 6.0]
    with pytest.raises(ValueError, match="no parameter"):
        mv.run(data, function_name="predict", params={"temperature": 1})
    with pytest.raises(ValueError, match="expects DOUBLE"):
        mv.run(data, function_name="predict", params={"scale": "big"})

    out = mv.run(data, function_name="forecast", partition_column="store")
    assert out.to_dict("list") == {"store": [1, 2], "mean": [2.0, 4.0], "rows": [2, 3]}
    with pytest.raises(ValueError, match="not partitioned"):
        mv.run(data, function_name="predict", partition_column="store")
