"""Catalog rows for console tests and the page-time benchmark: a database, a pool, an image
repository, a model version and N services with READY instance rows, written straight to the
catalog (no image build, no process), as tests/gateway's harness does for the ingress."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from neve.catalog import models as m

DB, SCHEMA, POOL = "ML", "APPS", "CPU_POOL"
SIGNATURES = {
    "predict": {
        "signature": {
            "inputs": [{"name": "A", "type": "DOUBLE"}, {"name": "B", "type": "DOUBLE"}],
            "outputs": [{"name": "OUTPUT_FEATURE_0", "type": "DOUBLE"}],
        }
    }
}


def add_services(
    account: Any,
    count: int,
    *,
    prefix: str = "SVC",
    owner_role: str = "SYSADMIN",
    comment: str | None = None,
    instances: int = 2,
) -> list[str]:
    """``count`` RUNNING services in ML.APPS (created if needed); their qualified names."""
    account.security.bootstrap()
    names = []
    with account.catalog.transaction() as s:
        db = s.scalar(select(m.Database).where(m.Database.name == DB))
        if db is None:
            db = m.Database(name=DB, owner_role="SYSADMIN")
            s.add(db)
            s.flush()
            s.add(m.Schema(database_id=db.id, name=SCHEMA, owner_role="SYSADMIN"))
            s.add(
                m.ComputePool(
                    name=POOL,
                    instance_family="CPU_X64_S",
                    min_nodes=1,
                    max_nodes=2,
                    owner_role="SYSADMIN",
                )
            )
            s.flush()
        sch = s.scalar(select(m.Schema).where(m.Schema.database_id == db.id))
        pool = s.scalar(select(m.ComputePool).where(m.ComputePool.name == POOL))
        model = m.Model(schema_id=sch.id, name=f"{prefix}_MODEL", owner_role=owner_role)
        s.add(model)
        s.flush()
        version = m.ModelVersion(
            model_id=model.id,
            name="V1",
            model_type="custom",
            artifact_uri="(test)",
            artifact_sha256="0" * 64,
            python_version="3.11",
            signatures=SIGNATURES,
        )
        s.add(version)
        s.flush()
        for i in range(count):
            name = f"{prefix}_{i:03d}"
            svc = m.Service(
                schema_id=sch.id,
                name=name,
                pool_id=pool.id,
                model_version_id=version.id,
                status="RUNNING",
                ingress_enabled=True,
                owner_role=owner_role,
                comment=comment,
                min_instances=instances,
                max_instances=instances,
                spec={"model": f"{DB}.{SCHEMA}.{prefix}_MODEL", "version": "V1"},
            )
            s.add(svc)
            s.flush()
            for index in range(instances):
                s.add(
                    m.ServiceInstance(
                        service_id=svc.id,
                        instance_index=index,
                        status="READY",
                        host="127.0.0.1",
                        port=9,  # nothing listens: a scrape reports the instance down
                        node="local-0",
                    )
                )
            names.append(f"{DB}.{SCHEMA}.{name}")
    return names
