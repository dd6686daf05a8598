"""Where an account lives and how it is configured.

An account is a directory (``NEVE_HOME``, default ``~/.neve``) holding the catalog (SQLite),
the artifact store, image environments, logs and the warehouse. ``settings.toml`` in that
directory may set any key declared in :class:`SettingsFile`, and nothing else: an unknown key
(a misspelling) or a value of the wrong type is refused when the account is opened, with a
message naming the key.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt
from pydantic import ValidationError as _ValidationError

from neve.errors import InvalidArgumentError


def default_home() -> Path:
    return Path(os.environ.get("NEVE_HOME") or Path.home() / ".neve").expanduser().resolve()


@dataclass
class Settings:
    home: Path
    catalog_url: str = ""  # empty: sqlite:///<home>/catalog.db
    artifact_store: str = ""  # empty: <home>/artifacts; an fsspec URL (s3://...) is accepted
    control_host: str = "127.0.0.1"
    control_port: int = 0  # 0: pick a free port, recorded in <home>/control.json
    account_name: str = "local"
    ingress_domain: str = "neve.localhost"
    build_timeout_secs: int = 3600
    token_ttl_secs: int = 4 * 3600
    #: Largest model archive ``log_model`` may upload to the control plane (413 above it).
    max_model_upload_bytes: int = 20 * 1024**3
    #: Largest body of any other REST request (SQL, invoke, write_pandas...; 413 above it), so
    #: no caller can grow the daemon's memory without bound.
    max_request_body_bytes: int = 1024**3
    extra: dict = field(default_factory=dict)

    @property
    def resolved_catalog_url(self) -> str:
        return self.catalog_url or f"sqlite:///{self.home / 'catalog.db'}"

    @property
    def resolved_artifact_store(self) -> str:
        return self.artifact_store or str(self.home / "artifacts")

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def images_dir(self) -> Path:
        return self.home / "images"

    @property
    def warehouse_path(self) -> Path:
        return self.home / "warehouse.duckdb"


class SettingsFile(BaseModel):
    """Every key ``settings.toml`` may hold, with its type. The first block are
    :class:`Settings` fields; the others are read by the component named in their comment, and
    unset ones take that component's default (see the README for each)."""

    model_config = ConfigDict(extra="forbid")

    # Settings fields
    catalog_url: str = ""
    artifact_store: str = ""
    control_host: str = "127.0.0.1"
    control_port: NonNegativeInt = 0
    account_name: str = "local"
    ingress_domain: str = "neve.localhost"
    build_timeout_secs: PositiveInt = 3600
    token_ttl_secs: PositiveInt = 4 * 3600
    max_model_upload_bytes: PositiveInt = 20 * 1024**3
    max_request_body_bytes: PositiveInt = 1024**3
    # control plane (neve.control.serve) and security (neve.security)
    control_access_log: bool | None = None
    control_shutdown_timeout_secs: PositiveFloat | None = None
    local_token_ttl_secs: PositiveInt | None = None
    login_max_failures: PositiveInt | None = None
    login_lockout_secs: PositiveFloat | None = None
    # HTTP servers and TLS (neve.gateway.limits)
    http_header_timeout_secs: PositiveFloat | None = None
    http_keep_alive_secs: PositiveInt | None = None
    http_max_header_bytes: PositiveInt | None = None
    http_limit_concurrency: PositiveInt | None = None
    tls_certfile: str | None = None
    tls_keyfile: str | None = None
    tls_keyfile_password: str | None = None
    # ingress (neve.gateway.limits, neve.dataplane)
    ingress_max_body_bytes: PositiveInt | None = None
    ingress_body_timeout_secs: PositiveFloat | None = None
    ingress_request_timeout_secs: PositiveFloat | None = None
    ingress_wake_timeout_secs: PositiveFloat | None = None
    ingress_auth_cache_secs: float | None = None
    ingress_queue_timeout_secs: PositiveFloat | None = None
    ingress_proxies: NonNegativeInt | None = None
    ingress_host: str | None = None
    ingress_port: NonNegativeInt | None = None
    # V2 gRPC port of the proxies: 0 the last one (else a free one), -1 no gRPC ingress
    ingress_grpc_port: int | None = Field(default=None, ge=-1)
    ingress_proxy_orphan_secs: PositiveFloat | None = None
    ingress_max_inflight: PositiveInt | None = None
    # services (neve.services)
    service_supervisor_interval_secs: PositiveFloat | None = None
    service_start_timeout_secs: PositiveFloat | None = None
    service_resume_timeout_secs: PositiveFloat | None = None
    service_scale_up_queue_rows: PositiveFloat | None = None
    service_scale_down_idle_secs: PositiveFloat | None = None
    # image builds (neve.environments)
    base_images_dir: str | None = None
    base_index_url: str | None = None
    base_frameworks: list[str] | None = None
    find_links: list[str] | str | None = None
    index_urls: list[str] | None = None
    warehouse_channel_file: str | None = None
    # warehouse queries (neve.sql.limits)
    warehouse_query_threads: PositiveInt | None = None
    warehouse_query_memory_limit: str | None = None
    warehouse_query_timeout_secs: PositiveFloat | None = None


def check_settings(values: dict[str, Any], *, source: str = "settings.toml") -> dict[str, Any]:
    """``values`` validated against :class:`SettingsFile` (types coerced), or an
    ``InvalidArgumentError`` naming every bad key and what is wrong with it."""
    try:
        checked = SettingsFile.model_validate(values)
    except _ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(part) for part in err["loc"][:1]) or "?"
            if err["type"] == "extra_forbidden":
                close = difflib.get_close_matches(key, SettingsFile.model_fields, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"unknown setting {key!r}{hint}")
            else:
                problems.append(f"setting {key} = {err.get('input')!r}: {err['msg'].lower()}")
        raise InvalidArgumentError(f"{source}: " + "; ".join(problems)) from None
    return checked.model_dump(include=set(values))


def load_settings(home: str | os.PathLike | None = None) -> Settings:
    root = Path(home).expanduser().resolve() if home else default_home()
    root.mkdir(parents=True, exist_ok=True)
    values: dict = {}
    cfg = root / "settings.toml"
    if cfg.exists():
        with cfg.open("rb") as fh:
            try:
                values = tomllib.load(fh)
            except tomllib.TOMLDecodeError as exc:
                raise InvalidArgumentError(f"{cfg}: not valid TOML: {exc}") from None
    values = check_settings(values, source=str(cfg))
    known = {f.name for f in fields(Settings)} - {"home", "extra"}
    env_url = os.environ.get("NEVE_CATALOG_URL")
    if env_url:
        values.setdefault("catalog_url", env_url)
    kwargs = {k: v for k, v in values.items() if k in known}
    extra = {k: v for k, v in values.items() if k not in known and v is not None}
    return Settings(home=root, extra=extra, **kwargs)
