"""Artifact stores other than the default directory: an fsspec URL, and a PostgreSQL catalog."""

from __future__ import annotations

import uuid
from pathlib import Path

import fsspec
import pytest
from sqlalchemy import func, select, text

from neve.catalog import models as m
from neve.config import Settings
from neve.control.account import Account
from neve.errors import InvalidStateError
from neve.models import directory_digest


@pytest.fixture
def memory_account(neve_home: Path):
    # fsspec's in-memory filesystem is a real (non-local) fsspec implementation: the store goes
    # through the same URL code path as s3:// would.
    root = f"memory://neve-{uuid.uuid4().hex[:8]}/artifacts"
    account = Account(Settings(home=neve_home, artifact_store=root))
    account.security.bootstrap()
    yield account
    account.close()
    fs, path = fsspec.core.url_to_fs(root)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def test_fsspec_store_round_trip_cache_and_checksum(memory_account, admin, saved):
    registry = memory_account.registry
    assert registry.store.local_root is None
    source = saved()
    row = registry.log_model(admin, "ml", "r", "forecast", None, source)
    assert len(registry.store.keys()) == 1
    assert row["artifact_sha256"] == directory_digest(source)

    local = registry.version_dir(admin, "ml.r.forecast", "v1")
    assert local == memory_account.settings.home / "cache" / "artifacts" / row["artifact_sha256"]
    assert directory_digest(local) == row["artifact_sha256"]

    # a corrupted stored file is detected when the files are fetched again
    fs, _ = fsspec.core.url_to_fs(registry.store.root)
    key = registry.store.keys()[0]
    manifest = f"{registry.store._remote(key)}/manifest.json"
    fs.pipe_file(manifest, fs.cat_file(manifest) + b"\n")
    import shutil

    shutil.rmtree(local)
    with pytest.raises(InvalidStateError, match="is corrupt: checksum"):
        registry.version_dir(admin, "ml.r.forecast", "v1")

    registry.delete_model(admin, "ml.r.forecast")
    assert registry.store.keys() == []


def test_fsspec_store_failed_log_leaves_nothing(memory_account, admin, saved):
    registry = memory_account.registry
    with memory_account.catalog.engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TRIGGER refuse_versions BEFORE INSERT ON model_versions "
                "BEGIN SELECT RAISE(ABORT, 'catalog refused'); END"
            )
        )
    with pytest.raises(Exception, match="catalog refused"):
        registry.log_model(admin, "ml", "r", "forecast", None, saved())
    assert registry.store.keys() == []


@pytest.mark.postgres
def test_registry_on_postgresql(postgres_catalog_url, tmp_path: Path, admin, saved):
    account = Account(Settings(home=tmp_path / "pg-home", catalog_url=postgres_catalog_url))
    try:
        account.security.bootstrap()
        registry = account.registry
        registry.log_model(admin, "ml", "registry", "forecast", None, saved(), metrics={"r2": 1})
        registry.log_model(admin, "ml", "registry", "forecast", "v7", saved())
        registry.set_alias(admin, "ml.registry.forecast", "v7", "prod")
        assert registry.describe_version(admin, "ml.registry.forecast", "prod")["name"] == "V7"
        assert registry.show_models(admin, "ml", "registry")[0]["versions"] == ["V1", "V7"]

        # a failure at the last step rolls everything back, files included
        with account.catalog.engine.begin() as conn:
            conn.execute(
                text(
                    "ALTER TABLE model_versions ADD CONSTRAINT refuse_broken "
                    "CHECK (name <> 'BROKEN')"
                )
            )
        keys = registry.store.keys()
        with pytest.raises(Exception, match="refuse_broken"):
            registry.log_model(admin, "new_db", "s", "other", "broken", saved())
        assert registry.store.keys() == keys
        with account.catalog.transaction() as s:
            assert s.scalar(select(func.count()).select_from(m.Database)) == 1

        registry.set_default_version(admin, "ml.registry.forecast", "v7")
        registry.delete_version(admin, "ml.registry.forecast", "v1")
        registry.delete_model(admin, "ml.registry.forecast")
        assert registry.store.keys() == []
    finally:
        account.close()
