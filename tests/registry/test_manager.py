"""RegistryManager against a real SQLite catalog and a real artifact directory."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import func, select, text

from neve.catalog import models as m
from neve.context import RequestContext
from neve.errors import (
    InvalidArgumentError,
    InvalidIdentifierError,
    InvalidStateError,
    ObjectExistsError,
    ObjectInUseError,
    ObjectNotFoundError,
    PermissionDeniedError,
)
from neve.models import directory_digest, load_model

MODEL = "ml.registry.forecast"


def count(account, cls) -> int:
    with account.catalog.transaction() as s:
        return s.scalar(select(func.count()).select_from(cls))


def leftovers(registry) -> list[str]:
    """Everything in the local artifact store except committed version directories."""
    root = registry.store.local_root
    staging = root / ".staging"
    return [str(p) for p in staging.iterdir()] if staging.exists() else []


def test_log_model_creates_database_schema_and_first_default_version(
    account, registry, admin, saved, features, regressor
):
    row = registry.log_model(
        admin, "ml", "registry", "forecast", None, saved(), comment="first", metrics={"r2": 0.9}
    )
    assert row["name"] == "V1" and row["is_default_version"] is True
    assert (row["database_name"], row["schema_name"], row["model_name"]) == (
        "ML",
        "REGISTRY",
        "FORECAST",
    )
    assert row["functions"] == ["PREDICT"] and row["model_type"] == "sklearn"
    assert row["metadata"] == {"metrics": {"r2": 0.9}} and row["comment"] == "first"
    assert row["target_platforms"] == ["WAREHOUSE", "SERVICE"]

    second = registry.log_model(admin, "ML", "REGISTRY", "FORECAST", None, saved())
    assert second["name"] == "V2" and second["is_default_version"] is False

    # the database got its PUBLIC schema too, as CREATE DATABASE does
    with account.catalog.transaction() as s:
        schemas = set(s.scalars(select(m.Schema.name)))
    assert schemas == {"PUBLIC", "REGISTRY"}

    models = registry.show_models(admin, "ml", "registry")
    assert [r["name"] for r in models] == ["FORECAST"]
    assert set(models[0]) >= {
        "created_on",
        "name",
        "database_name",
        "schema_name",
        "comment",
        "owner",
        "default_version_name",
        "versions",
        "aliases",
    }
    assert models[0]["versions"] == ["V1", "V2"] and models[0]["default_version_name"] == "V1"
    assert models[0]["aliases"] == {"DEFAULT": "V1", "FIRST": "V1", "LAST": "V2"}
    assert models[0]["owner"] == "ACCOUNTADMIN"

    versions = registry.show_versions(admin, MODEL)
    assert [v["name"] for v in versions] == ["V1", "V2"]
    assert set(versions[0]) >= {
        "created_on",
        "name",
        "aliases",
        "comment",
        "database_name",
        "schema_name",
        "model_name",
        "is_default_version",
        "functions",
        "metadata",
        "user_data",
        "model_type",
        "target_platforms",
    }

    # the stored files are the saved directory, byte for byte (same checksum), and load back
    directory = registry.version_dir(admin, MODEL, "v1")
    assert directory_digest(directory) == row["artifact_sha256"]
    loaded = load_model(directory)
    np.testing.assert_allclose(
        loaded.call("predict", features)["output_feature_0"], regressor.predict(features)
    )
    assert type(registry.load(admin, MODEL, "LAST")).__name__ == "LinearRegression"

    functions = registry.show_functions(admin, MODEL, "v1")
    assert functions[0]["name"] == "PREDICT" and functions[0]["target_method"] == "predict"
    assert functions[0]["is_partitioned"] is False
    assert [f["name"] for f in functions[0]["signature"]["inputs"]] == ["a", "b"]


def test_explicit_and_auto_version_names(registry, admin, saved):
    registry.log_model(admin, "ml", "registry", "forecast", "v3", saved())
    assert registry.log_model(admin, "ml", "registry", "forecast", None, saved())["name"] == "V4"
    assert (
        registry.log_model(admin, "ml", "registry", "forecast", '"Mixed"', saved())["name"]
        == "Mixed"
    )
    assert registry.describe_version(admin, MODEL, '"Mixed"')["name"] == "Mixed"
    with pytest.raises(ObjectNotFoundError, match="no version or alias MIXED"):
        registry.describe_version(admin, MODEL, "mixed")


def test_duplicate_version_is_refused_and_leaves_nothing(account, registry, admin, saved):
    registry.log_model(admin, "ml", "registry", "forecast", "v1", saved())
    keys = registry.store.keys()
    with pytest.raises(ObjectExistsError, match=r"ML\.REGISTRY\.FORECAST already has a version V1"):
        registry.log_model(admin, "ml", "registry", "forecast", "V1", saved())
    assert registry.store.keys() == keys and leftovers(registry) == []
    assert count(account, m.ModelVersion) == 1


@pytest.mark.parametrize(
    ("database", "model", "version", "match"),
    [
        ("ml", "bad name", None, "invalid model name 'bad name'"),
        ("ml", "forecast", "1st", "invalid version name '1st'"),
        ("m l", "forecast", None, "invalid database name 'm l'"),
        ("ml", "forecast", "default", "reserved"),
    ],
)
def test_invalid_names_are_refused_before_anything_is_written(
    account, registry, admin, saved, database, model, version, match
):
    with pytest.raises((InvalidIdentifierError, InvalidArgumentError), match=match):
        registry.log_model(admin, database, "registry", model, version, saved())
    assert count(account, m.Database) == 0 and registry.store.keys() == []


def test_failure_inside_the_transaction_leaves_no_row_and_no_files(account, registry, admin, saved):
    # A real failure at the last step: the catalog refuses the version row.
    with account.catalog.engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TRIGGER refuse_versions BEFORE INSERT ON model_versions "
                "BEGIN SELECT RAISE(ABORT, 'disk quota exceeded'); END"
            )
        )
    source = saved()
    with pytest.raises(Exception, match="disk quota exceeded"):
        registry.log_model(admin, "ml", "registry", "forecast", "v1", source)
    assert count(account, m.Database) == 0
    assert count(account, m.Schema) == 0
    assert count(account, m.Model) == 0
    assert registry.store.keys() == [] and leftovers(registry) == []
    assert source.exists()  # copied, not moved: the caller's directory is untouched
    with account.catalog.engine.begin() as conn:
        conn.execute(text("DROP TRIGGER refuse_versions"))
    assert registry.log_model(admin, "ml", "registry", "forecast", "v1", source)["name"] == "V1"


def test_move_files_moves_the_directory_into_the_store(registry, admin, saved):
    source = saved()
    digest = directory_digest(source)
    row = registry.log_model(admin, "ml", "registry", "forecast", None, source, move_files=True)
    assert not source.exists()
    assert directory_digest(registry.version_dir(admin, MODEL, row["name"])) == digest


def test_not_a_model_directory(registry, admin, tmp_path):
    with pytest.raises(InvalidArgumentError, match=r"cannot log model ML\.REGISTRY\.FORECAST"):
        registry.log_model(admin, "ml", "registry", "forecast", None, tmp_path)


def test_unknown_option_and_bad_metrics(registry, admin, saved):
    with pytest.raises(InvalidArgumentError, match="unknown option.*relax_versions"):
        registry.log_model(admin, "ml", "r", "f", None, saved(), options={"relax_versions": True})
    with pytest.raises(InvalidArgumentError, match="metrics is not JSON-serializable"):
        registry.log_model(admin, "ml", "r", "f", None, saved(), metrics={"x": object()})
    assert registry.store.keys() == []


def test_aliases_resolve_are_unique_and_cannot_shadow(registry, admin, saved):
    for _ in range(2):
        registry.log_model(admin, "ml", "registry", "forecast", None, saved())
    registry.set_alias(admin, MODEL, "v2", "production")
    assert registry.describe_version(admin, MODEL, "Production")["name"] == "V2"
    assert registry.describe_version(admin, MODEL, "first")["name"] == "V1"
    assert registry.describe_version(admin, MODEL, "default")["name"] == "V1"
    assert registry.describe_model(admin, MODEL)["aliases"]["PRODUCTION"] == "V2"
    assert registry.show_versions(admin, MODEL)[1]["aliases"] == ["PRODUCTION"]

    with pytest.raises(ObjectExistsError, match="alias PRODUCTION .* already names version V2"):
        registry.set_alias(admin, MODEL, "v1", "production")
    with pytest.raises(InvalidArgumentError, match="system alias"):
        registry.set_alias(admin, MODEL, "v1", "last")
    with pytest.raises(InvalidArgumentError, match="shadow"):
        registry.set_alias(admin, MODEL, "v1", "v2")
    with pytest.raises(ObjectExistsError, match="already an alias of version V2"):
        registry.log_model(admin, "ml", "registry", "forecast", "production", saved())

    registry.unset_alias(admin, MODEL, "PRODUCTION")
    with pytest.raises(ObjectNotFoundError, match="no version or alias PRODUCTION"):
        registry.describe_version(admin, MODEL, "production")
    with pytest.raises(ObjectNotFoundError, match="no alias PRODUCTION"):
        registry.unset_alias(admin, MODEL, "production")
    registry.set_alias(admin, MODEL, "v1", "production")  # free again
    assert registry.describe_version(admin, MODEL, "production")["name"] == "V1"


def test_default_version_and_deletion_rules(registry, admin, saved):
    keys = []
    for _ in range(3):
        registry.log_model(admin, "ml", "registry", "forecast", None, saved())
        keys = registry.store.keys()
    assert len(keys) == 3

    with pytest.raises(InvalidStateError, match="V1 is the default version"):
        registry.delete_version(admin, MODEL, "v1")
    registry.set_default_version(admin, MODEL, "v3")
    assert registry.describe_version(admin, MODEL, "default")["name"] == "V3"
    assert registry.describe_model(admin, MODEL)["default_version_name"] == "V3"

    registry.delete_version(admin, MODEL, "v1")
    assert [v["name"] for v in registry.show_versions(admin, MODEL)] == ["V2", "V3"]
    remaining = registry.store.keys()
    assert len(remaining) == 2 and not any("/V1-" in k for k in remaining)

    registry.delete_version(admin, MODEL, "v2")
    with pytest.raises(InvalidStateError, match="only version .* delete the model"):
        registry.delete_version(admin, MODEL, "v3")

    assert registry.delete_model(admin, MODEL) is True
    assert registry.store.keys() == []
    assert registry.show_models(admin, "ml", "registry") == []
    assert registry.delete_model(admin, MODEL, if_exists=True) is False
    with pytest.raises(ObjectNotFoundError, match=r"model ML\.REGISTRY\.FORECAST does not exist"):
        registry.delete_model(admin, MODEL)


def test_metrics_tags_and_comments(registry, admin, saved):
    registry.log_model(admin, "ml", "registry", "forecast", None, saved(), metrics={"rmse": 1.5})
    registry.set_metric(admin, MODEL, "v1", "mae", np.float32(0.25))
    registry.set_metric(admin, MODEL, "v1", "confusion", [[1, 2], [3, 4]])
    assert registry.show_metrics(admin, MODEL, "v1") == {
        "rmse": 1.5,
        "mae": 0.25,
        "confusion": [[1, 2], [3, 4]],
    }
    assert registry.get_metric(admin, MODEL, "v1", "mae") == 0.25
    registry.delete_metric(admin, MODEL, "v1", "rmse")
    with pytest.raises(ObjectNotFoundError, match="no metric 'rmse'"):
        registry.get_metric(admin, MODEL, "v1", "rmse")
    with pytest.raises(ObjectNotFoundError, match="no metric 'rmse'"):
        registry.delete_metric(admin, MODEL, "v1", "rmse")
    with pytest.raises(InvalidArgumentError, match="not JSON-serializable"):
        registry.set_metric(admin, MODEL, "v1", "bad", {1, 2})

    registry.set_tag(admin, MODEL, "stage", "prod")
    registry.set_tag(admin, MODEL, "owner_team", {"name": "forecasting"})
    assert registry.show_tags(admin, MODEL) == {
        "STAGE": "prod",
        "OWNER_TEAM": {"name": "forecasting"},
    }
    registry.unset_tag(admin, MODEL, "stage")
    assert registry.show_tags(admin, MODEL) == {"OWNER_TEAM": {"name": "forecasting"}}
    with pytest.raises(ObjectNotFoundError, match="no tag STAGE"):
        registry.unset_tag(admin, MODEL, "stage")

    registry.set_model_comment(admin, MODEL, "daily sales")
    registry.set_version_comment(admin, MODEL, "v1", "baseline")
    assert registry.describe_model(admin, MODEL)["comment"] == "daily sales"
    assert registry.describe_version(admin, MODEL, "v1")["comment"] == "baseline"


def _add_service(account, version_name: str, status: str, name: str = "FORECAST_SVC") -> None:
    """A service row as the services component writes it (its manager is not this test's)."""
    with account.catalog.transaction() as s:
        version = s.scalar(select(m.ModelVersion).where(m.ModelVersion.name == version_name))
        model = s.get(m.Model, version.model_id)
        pool = s.scalar(select(m.ComputePool).where(m.ComputePool.name == "CPU_POOL"))
        if pool is None:
            pool = m.ComputePool(
                name="CPU_POOL", instance_family="CPU_X64_S", min_nodes=1, max_nodes=1,
                owner_role="SYSADMIN",
            )  # fmt: skip
            s.add(pool)
            s.flush()
        s.add(
            m.Service(
                schema_id=model.schema_id,
                name=name,
                model_version_id=version.id,
                pool_id=pool.id,
                status=status,
                owner_role="SYSADMIN",
            )
        )


def test_versions_used_by_a_service_cannot_be_deleted(account, registry, admin, saved):
    for _ in range(2):
        registry.log_model(admin, "ml", "registry", "forecast", None, saved())
    _add_service(account, "V2", "SUSPENDED")
    assert registry.describe_version(admin, MODEL, "v2")["inference_services"] == [
        "ML.REGISTRY.FORECAST_SVC"
    ]
    with pytest.raises(
        ObjectInUseError,
        match=r"V2 cannot be deleted: used by service\(s\) ML\.REGISTRY\.FORECAST_SVC",
    ):
        registry.delete_version(admin, MODEL, "v2")
    with pytest.raises(ObjectInUseError, match=r"FORECAST_SVC \(SUSPENDED, version V2\)"):
        registry.delete_model(admin, MODEL)
    assert len(registry.store.keys()) == 2

    with account.catalog.transaction() as s:
        s.scalar(select(m.Service)).status = "DELETED"
    registry.delete_version(admin, MODEL, "v2")  # a deleted service no longer holds it
    with account.catalog.transaction() as s:
        assert s.scalar(select(m.Service)).model_version_id is None
    assert registry.delete_model(admin, MODEL)
    assert registry.store.keys() == []


def test_privileges(account, registry, admin, saved):
    sec = account.security
    sec.create_role(admin, "scientist")
    sec.create_role(admin, "analyst")
    for role in ("scientist", "analyst"):
        sec.create_user(admin, f"{role}_user", password=f"{role} password!")
        sec.grant_role(admin, role, to_user=f"{role}_user")
    registry.log_model(admin, "ml", "registry", "forecast", None, saved())
    scientist = RequestContext(user="SCIENTIST_USER", role="SCIENTIST")
    analyst = RequestContext(user="ANALYST_USER", role="ANALYST")

    with pytest.raises(PermissionDeniedError, match="needs USAGE on DATABASE ML"):
        registry.log_model(scientist, "ml", "registry", "churn", None, saved())
    with pytest.raises(PermissionDeniedError, match="needs CREATE DATABASE"):
        registry.log_model(scientist, "other", "registry", "churn", None, saved())
    for role in ("scientist", "analyst"):
        sec.grant(admin, "USAGE", "DATABASE", "ml", role)
        sec.grant(admin, "USAGE", "SCHEMA", "ml.registry", role)
    with pytest.raises(PermissionDeniedError, match="needs CREATE MODEL on SCHEMA ML.REGISTRY"):
        registry.log_model(scientist, "ml", "registry", "churn", None, saved())
    sec.grant(admin, "CREATE MODEL", "SCHEMA", "ml.registry", "scientist")
    row = registry.log_model(scientist, "ml", "registry", "churn", None, saved())
    assert row["owner"] == "SCIENTIST"

    # a model someone else owns: no new versions, no reading without USAGE
    with pytest.raises(PermissionDeniedError, match="does not own MODEL ML.REGISTRY.FORECAST"):
        registry.log_model(scientist, "ml", "registry", "forecast", None, saved())
    assert [r["name"] for r in registry.show_models(analyst, "ml", "registry")] == []
    with pytest.raises(PermissionDeniedError, match="needs USAGE on MODEL ML.REGISTRY.CHURN"):
        registry.show_versions(analyst, "ml.registry.churn")

    sec.grant(admin, "USAGE", "MODEL", "ml.registry.churn", "analyst")
    assert [r["name"] for r in registry.show_models(analyst, "ml", "registry")] == ["CHURN"]
    assert registry.version_dir(analyst, "ml.registry.churn", "v1").is_dir()
    with pytest.raises(PermissionDeniedError, match="does not own MODEL ML.REGISTRY.CHURN"):
        registry.set_metric(analyst, "ml.registry.churn", "v1", "x", 1)
    with pytest.raises(PermissionDeniedError, match="does not own"):
        registry.delete_model(analyst, "ml.registry.churn")
    assert registry.show_models(admin, "ml", "registry")[0]["name"] == "CHURN"


def test_show_models_scopes(registry, admin, saved):
    registry.log_model(admin, "ml", "registry", "forecast", None, saved())
    registry.log_model(admin, "ml", "staging", "churn", None, saved())
    registry.log_model(admin, "other", "registry", "ranker", None, saved())
    names = lambda rows: [r["name"] for r in rows]  # noqa: E731
    assert names(registry.show_models(admin, in_account=True)) == ["FORECAST", "CHURN", "RANKER"]
    assert names(registry.show_models(admin, in_database="ml")) == ["FORECAST", "CHURN"]
    assert names(registry.show_models(admin, in_schema="ml.staging")) == ["CHURN"]
    assert names(registry.show_models(admin.with_(database="OTHER"))) == ["RANKER"]
    assert names(registry.show_models(admin)) == ["FORECAST", "CHURN", "RANKER"]
    with pytest.raises(ObjectNotFoundError, match="schema ML.NOPE does not exist"):
        registry.show_models(admin, in_schema="ml.nope")
