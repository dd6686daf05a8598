"""SQLAlchemy models of every catalog object.

Names are stored normalized (see ``neve.identifiers``). Account-level objects (compute pools,
integrations, users, roles) have unique names per account; schema-level objects are unique per
schema. JSON columns hold structured specs that are read whole and never queried by field.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict: JSON, list: JSON}


class UtcDateTime(TypeDecorator):
    """A timestamp stored with its time zone and always read back as an aware UTC datetime.

    SQLite keeps no zone (PostgreSQL does): without this, rows read from SQLite came back naive
    and every reader had to re-attach UTC. Naive values written are taken as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Name = String(255)
Created = UtcDateTime()


class Database(Base):
    __tablename__ = "databases"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(Name, unique=True)
    owner_role: Mapped[str] = mapped_column(Name)
    comment: Mapped[str | None] = mapped_column(Text)
    created_on: Mapped[datetime] = mapped_column(Created, default=utcnow)
    schemas: Mapped[list[Schema]] = relationship(
        back_populates="database", cascade="all, delete-orphan"
    )


class Schema(Base):
    __tablename__ = "schemas"
    __table_args__ = (UniqueConstraint("database_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    database_id: Mapped[int] = mapped_column(ForeignKey("databases.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Name)
    owner_role: Mapped[str] = mapped_column(Name)
    comment: Mapped[str | None] = mapped_column(Text)
    created_on: Mapped[datetime] = mapped_column(Created, default=utcnow)
    database: Mapped[Database] = relationship(back_populates="schemas")


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("schema_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    schema_id: Mapped[int] = mapped_column(ForeignKey("schemas.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Name)
    owner_role: Mapped[str] = mapped_column(Name)
    comment: Mapped[str | None] = mapped_column(Text)
    default_version: Mapped[str | None] = mapped_column(Name)
    tags: Mapped[dict] = mapped_column(default=dict)
    created_on: Mapped[datetime] = mapped_column(Created, default=utcnow)
    schema: Mapped[Schema] = relationship()
    versions: Mapped[list[ModelVersion]] = relationship(
        back_populates="model", cascade="all, delete-orphan", order_by="ModelVersion.id"
    )


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Name)
    comment: Mapped[str | None] = mapped_column(Text)
    model_type: Mapped[str] = mapped_column(String(64))
    # Where the version directory lives in the artifact store, and the checksum of its manifest.
    artifact_uri: Mapped[str] = mapped_column(Text)
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    python_version: Mapped[str] = mapped_column(String(16))
    conda_dependencies: Mapped[list] = mapped_column(default=list)
    pip_requirements: Mapped[list] = mapped_column(default=list)
    # Resolved, pinned dependency list the image is built from.
    dependencies: Mapped[list] = mapped_column(default=list)
    target_platforms: Mapped[list] = mapped_column(default=list)
    signatures: Mapped[dict] = mapped_column(default=dict)
    options: Mapped[dict] = mapped_column(default=dict)
    metrics: Mapped[dict] = mapped_column(default=dict)
    tags: Mapped[dict] = mapped_column(default=dict)
    aliases: Mapped[list] = mapped_column(default=list)
    gpu_capable: Mapped[bool] = mapped_column(Boolean, default=False)
    created_on: Mapped[datetime] = mapped_column(Created, default=utcnow)
    model: Mapped[Model] = relationship(back_populates="versions")


class Function(Base):
    """A SQL-callable function in a schema: a service function (<SERVICE>_<METHOD>), one created
    on a service's endpoint (ENDPOINT) or an external function calling a URL (EXTERNAL)."""

    __tablename__ = "functions"
    __table_args__ = (UniqueConstraint("schema_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    schema_id: Mapped[int] = mapped_column(ForeignKey("schemas.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Name)
    kind: Mapped[str] = mapped_column(String(16), default="SERVICE")
    service_id: Mapped[int | None] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"))
    method: Mapped[str] = mapped_column(Name)
    signature: Mapped[dict] = mapped_column(default=dict)
    options: Mapped[dict] = mapped_column(default=dict)
    created_on: Mapped[datetime] = mapped_column(Created, default=utcnow)
    # EXTERNAL functions: {"api_integration", "url", "returns", "comment"}
    details: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # The role that created an EXTERNAL function; other functions are owned through their service
    owner_role: Mapped[str | None] = mapped_column(Name, nullable=True)


class ComputePool(Base):
    __tablename__ = "compute_pools"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(Name, unique=True)
    instance_family: Mapped[str] = mapped_column(String(64))
    min_nodes: Mapped[int] = mapped_column(Integer)
    max_nodes: Mapped[int] = mapped_column(Integer)
    auto_resume: Mapped[bool] = mapped_column(Boolean, default=True)
    auto_suspend_secs: Mapped[int] = mapped_column(Integer, default=3600)
    state: Mapped[str] = mapped_column(String(16), default="STARTING")
    backend: Mapped[str] = mapped_column(String(16), default="local")
    address: Mapped[str | None] = mapped_column(Text)
    owner_role: Mapped[str] = mapped_column(Name)
    comment: Mapped[str | None] = mapped_column(Text)
    created_on: Mapped[datetime] = mapped_column(Created, default=utcnow)
    resumed_on: Mapped[datetime | None] = mapped_column(Created)
    updated_on: Mapped[datetime | None] = mapped_column(Created, default=utcnow, onupdate=utcnow)
    # When the pool last became idle (no allocation): AUTO_SUSPEND_SECS counts from here.
    idle_since: Mapped[datetime | None] = mapped_column(Created)


class PoolNode(Base):
    __tablename__ = "pool_nodes"
    __table_args__ = (UniqueConstraint("pool_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("compute_pools.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Name)
    state: Mapped[str] = mapped_column(String(16), default="ACTIVE")
    backend_ref: Mapped[str | None] = mapped_column(Text)
    created_on: Mapped[datetime] = mapped_column(Created, default=utcnow)


class PoolAllocation(Base):
    """Resources of one pool node held by one holder (a service instance, a build job)."""

    __tablename__ = "pool_allocations"
    __table_args__ = (UniqueConstraint("pool_id", "holder"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("compute_pools.id", ondelete="CASCADE"))
    node_id: Mapped[int] = mapped_column(ForeignKey("pool_nodes.id", ondelete="CASCADE"))
    holder: Mapped[str] = mapped_column(String(512))
    cpu: Mapped[float] = mapped_column(Float)
    memory_gb: Mapped[float] = mapped_column(Float)
    gpu: Mapped[int] = mapped_column(Integer, default=0)
    gpu_ids: Mapped[list] = mapped_column(default=list)
    created_on: Mapped[datetime] = mapped_column(Created, default=utcnow)


class ImageRepository(Base):
    __tablename__ = "image_repositories"
    __table_args__ = (UniqueConstraint("schema_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    schema_id: Mapped[int] = mapped_column(ForeignKey("schemas.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Name)
    owner_role: Mapped[str] = mapped_column(Name)
    comment: Mapped[str | None] = mapped_column(Text)
    created_on: Mapped[datetime] = mapped_column(Created, default=utcnow)


class Image(Base):
    """A built model environment, content-addressed by the digest of its inputs."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("repository_id", "digest"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    repository_id: Mapped[int] = mapped_column(
        ForeignKey("image_repositories.id", ondelete="CASCADE")
    )
    digest: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="BUILDING")  # BUILDING | READY | FAILED
    inputs: Mapped[dict] = mapped_column(default=dict)
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    build_seconds: Mapped[float | None] = mapped_column(Float)
    created_on: Mapped[datetime] = mapped_column(Created, default=utcnow)


class NetworkRule(Base):
    __tablename__ = "network_rules"
    __table_args__ = (UniqueConstraint("schema_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    schema_id: Mapped[int] = mapped_column(ForeignKey("schemas.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Name)
    mode: Mapped[str] = mapped_column(String(16), default="EGRESS")
    type: Mapped[str] = mapped_column(String(16), default="HOST_PORT")
    value_list: Mapped[list] = mapped_column(default=list)
    owner_role: Mapped[str] = mapped_column(Name)
    comment: Mapped[str | None] = mapped_column(Text)
    created_on: Mapped[datetime] = mapped_column(Created, default=utcnow)


class ExternalAccessIntegration(Base):
    __tablename__ = "external_access_integrations"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(Name, unique=True)
    # Fully-qualified names of network rules, resolved when the integration is created.
    allowed_network_rules: Mapped[list] = mapped_column(default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    owner_role: Mapped[str] = mapped_column(Name)
    comment: Mapped[str | None] = mapped_column(Text)
    created_on: Mapped[datetime] = mapped_column(Created, default=utcnow)
    # Integrations share one namespace and one grant type (INTEGRATION): EXTERNAL_ACCESS (builds
    # and services reach the hosts of network rules) or API (external functions call a URL).
    integration_type: Mapped[str] = mapped_column(
        String(32), default="EXTERNAL_ACCESS", server_default="EXTERNAL_ACCESS"
    )
    # API: {"api_provider", "api_allowed_prefixes", "api_blocked_prefixes"}
    details: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # API: the key sent to the remote, sealed with the account's key (neve.security.sealed);
    # never shown
    secret: Mapped[str | None] = mapped_column(Text)


class Service(Base):
    __tablename__ = "services"
    __table_args__ = (UniqueConstraint("schema_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    schema_id: Mapped[int] = mapped_column(ForeignKey("schemas.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Name)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    pool_id: Mapped[int] = mapped_column(ForeignKey("compute_pools.id"))
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"))
    status: Mapped[str] = mapped_column(String(16), default="PENDING")
    status_reason: Mapped[str | None] = mapped_column(Text)
    # The immutable spec: model version, image repo, resources, workers, batching, ingress.
    spec: Mapped[dict] = mapped_column(default=dict)
    min_instances: Mapped[int] = mapped_column(Integer, default=1)
    max_instances: Mapped[int] = mapped_column(Integer, default=1)
    auto_suspend_secs: Mapped[int | None] = mapped_column(Integer)
    ingress_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    ingress_host: Mapped[str | None] = mapped_column(String(255), unique=True)
    owner_role: Mapped[str] = mapped_column(Name)
    comment: Mapped[str | None] = mapped_column(Text)
    created_on: Mapped[datetime] = mapped_column(Created, default=utcnow)
    updated_on: Mapped[datetime] = mapped_column(Created, default=utcnow, onupdate=utcnow)
    last_request_on: Mapped[datetime | None] = mapped_column(Created)
    instances: Mapped[list[ServiceInstance]] = relationship(
        back_populates="service",
        cascade="all, delete-orphan",
        order_by="ServiceInstance.instance_index",
    )


class ServiceInstance(Base):
    __tablename__ = "service_instances"
    __table_args__ = (UniqueConstraint("service_id", "instance_index"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"))
    instance_index: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="PENDING")
    status_reason: Mapped[str | None] = mapped_column(Text)
    node: Mapped[str | None] = mapped_column(Name)
    host: Mapped[str | None] = mapped_column(String(255))
    port: Mapped[int | None] = mapped_column(Integer)
    pid: Mapped[int | None] = mapped_column(Integer)
    backend_ref: Mapped[str | None] = mapped_column(Text)
    restart_count: Mapped[int] = mapped_column(Integer, default=0)
    started_on: Mapped[datetime | None] = mapped_column(Created)
    service: Mapped[Service] = relationship(back_populates="instances")


class Job(Base):
    """A background job such as an image build (MODEL_BUILD_<random>)."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(Name, unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="PENDING")
    status_reason: Mapped[str | None] = mapped_column(Text)
    schema_id: Mapped[int | None] = mapped_column(ForeignKey("schemas.id", ondelete="SET NULL"))
    service_id: Mapped[int | None] = mapped_column(ForeignKey("services.id", ondelete="SET NULL"))
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"))
    pool_id: Mapped[int | None] = mapped_column(ForeignKey("compute_pools.id", ondelete="SET NULL"))
    log_path: Mapped[str | None] = mapped_column(Text)
    owner_role: Mapped[str] = mapped_column(Name)
    # What the job works on, for SHOW/DESCRIBE (e.g. model, version, digest, timings).
    details: Mapped[dict] = mapped_column(default=dict)
    created_on: Mapped[datetime] = mapped_column(Created, default=utcnow)
    started_on: Mapped[datetime | None] = mapped_column(Created)
    finished_on: Mapped[datetime | None] = mapped_column(Created)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(Name, unique=True)
    password_hash: Mapped[str | None] = mapped_column(Text)
    rsa_public_key: Mapped[str | None] = mapped_column(Text)
    default_role: Mapped[str | None] = mapped_column(Name)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # The role that created the user (may alter or drop it); NULL for the bootstrap admin.
    owner_role: Mapped[str | None] = mapped_column(Name)
    comment: Mapped[str | None] = mapped_column(Text)
    created_on: Mapped[datetime] = mapped_column(Created, default=utcnow)


class Role(Base):
    __tablename__ = "roles"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(Name, unique=True)
    owner_role: Mapped[str | None] = mapped_column(Name)
    comment: Mapped[str | None] = mapped_column(Text)
    created_on: Mapped[datetime] = mapped_column(Created, default=utcnow)


class RoleGrant(Base):
    """Role ``role`` granted to a user or to another role (the role hierarchy)."""

    __tablename__ = "role_grants"
    __table_args__ = (UniqueConstraint("role", "grantee_type", "grantee"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    role: Mapped[str] = mapped_column(Name)
    grantee_type: Mapped[str] = mapped_column(String(8))  # USER | ROLE
    grantee: Mapped[str] = mapped_column(Name)
    granted_by: Mapped[str | None] = mapped_column(Name)
    created_on: Mapped[datetime] = mapped_column(Created, default=utcnow)


class Grant(Base):
    """A privilege on an object granted to a role. Ownership lives on the object itself."""

    __tablename__ = "grants"
    __table_args__ = (UniqueConstraint("privilege", "object_type", "object_id", "grantee_role"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    privilege: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[int] = mapped_column(Integer)  # 0 for the account itself
    grantee_role: Mapped[str] = mapped_column(Name)
    granted_by: Mapped[str | None] = mapped_column(Name)
    grant_option: Mapped[bool] = mapped_column(Boolean, default=False)
    created_on: Mapped[datetime] = mapped_column(Created, default=utcnow)


class Token(Base):
    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(Name)
    kind: Mapped[str] = mapped_column(String(16))  # SESSION | PAT
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str | None] = mapped_column(Name)
    expires_on: Mapped[datetime] = mapped_column(Created)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_on: Mapped[datetime] = mapped_column(Created, default=utcnow)
    # A token scoped to services: the ids of the only services whose ingress endpoints it may
    # call (it can do nothing else); NULL for an unscoped token
    services: Mapped[list | None] = mapped_column(JSON, nullable=True)
    comment: Mapped[str | None] = mapped_column(Text)
