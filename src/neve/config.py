"""Where an account lives and how it is configured.

An account is a directory (``NEVE_HOME``, default ``~/.neve``) holding the catalog (SQLite),
the artifact store, image environments, logs and the warehouse DuckDB file. ``settings.toml``
in that directory may override any field below.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path


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


def load_settings(home: str | os.PathLike | None = None) -> Settings:
    root = Path(home).expanduser().resolve() if home else default_home()
    root.mkdir(parents=True, exist_ok=True)
    values: dict = {}
    cfg = root / "settings.toml"
    if cfg.exists():
        with cfg.open("rb") as fh:
            values = tomllib.load(fh)
    known = {f.name for f in fields(Settings)} - {"home", "extra"}
    env_url = os.environ.get("NEVE_CATALOG_URL")
    if env_url:
        values.setdefault("catalog_url", env_url)
    kwargs = {k: v for k, v in values.items() if k in known}
    extra = {k: v for k, v in values.items() if k not in known}
    return Settings(home=root, extra=extra, **kwargs)
