"""Catalog objects for security tests, created as rows (the managers that own them are others')."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from neve.catalog import models as m
from neve.context import admin_context


@dataclass
class Objects:
    database: str
    schema: str
    service: str  # qualified db.schema.name
    pool: str
    repo: str  # qualified


@pytest.fixture
def sec(account):
    account.security.bootstrap()
    return account.security


@pytest.fixture
def admin():
    return admin_context()


@pytest.fixture
def objects(account, sec) -> Objects:
    """ML database, ML.APPS schema, pool CPU_POOL, repo ML.APPS.IMAGES, service ML.APPS.SVC.

    Everything is owned by SYSADMIN, as when SYSADMIN creates it.
    """
    with account.catalog.transaction() as s:
        db = m.Database(name="ML", owner_role="SYSADMIN")
        s.add(db)
        s.flush()
        sch = m.Schema(database_id=db.id, name="APPS", owner_role="SYSADMIN")
        s.add(sch)
        pool = m.ComputePool(
            name="CPU_POOL",
            instance_family="CPU_X64_S",
            min_nodes=1,
            max_nodes=1,
            owner_role="SYSADMIN",
        )
        s.add(pool)
        s.flush()
        s.add(m.ImageRepository(schema_id=sch.id, name="IMAGES", owner_role="SYSADMIN"))
        s.add(
            m.Service(
                schema_id=sch.id,
                name="SVC",
                pool_id=pool.id,
                status="RUNNING",
                ingress_enabled=True,
                owner_role="SYSADMIN",
            )
        )
    return Objects("ML", "ML.APPS", "ML.APPS.SVC", "CPU_POOL", "ML.APPS.IMAGES")
