"""Where an account lives and how it is configured: every setting, its type and default, once.

An account is a directory (``NEVE_HOME``, default ``~/.neve``) holding the catalog (SQLite),
the artifact store, image environments, logs and the warehouse. Its settings come from
``<home>/settings.toml`` and from ``NEVE_<KEY>`` environment variables (which win), and are
typed sections: ``settings.ingress.max_body_bytes``, ``settings.service.start_timeout_secs``...

A setting has two spellings, both accepted in the file: its section as a TOML table
(``[ingress]`` then ``max_body_bytes = 1000``) or its flat key at the top level
(``ingress_max_body_bytes = 1000``), which is also its environment variable
(``NEVE_INGRESS_MAX_BODY_BYTES``). The flat key is ``<section>_<field>`` unless the section
names another one (``Section.flat``). An unknown key (a misspelling) or a value of the wrong type
is refused when the account is opened, with a message naming the key and where it was set.

Why plain pydantic models and this loader rather than pydantic-settings: the file's location is
known only at run time (the account's home), flat and sectioned spellings are both accepted, and
an error names the key as the user spelt it (file key or environment variable).
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
)
from pydantic import ValidationError as _ValidationError

from neve.errors import InvalidArgumentError

ENV_PREFIX = "NEVE_"
PYPI_INDEX = "https://pypi.org/simple"


def default_home() -> Path:
    return Path(os.environ.get("NEVE_HOME") or Path.home() / ".neve").expanduser().resolve()


class Section(BaseModel):
    """One group of settings, read by one component."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    #: field -> flat key, for fields whose flat key is not ``<section>_<field>``.
    flat: ClassVar[dict[str, str]] = {}


class ControlSettings(Section):
    """The control plane's HTTP server (``neve.control.serve``)."""

    host: str = "127.0.0.1"
    #: 0: pick a free port, recorded in ``<home>/control.json``.
    port: NonNegativeInt = 0
    access_log: bool = False
    shutdown_timeout_secs: PositiveFloat = 15.0
    #: Largest model archive ``log_model`` may upload (413 above it).
    max_model_upload_bytes: PositiveInt = 20 * 1024**3
    #: Largest body of any other REST request (SQL, invoke, write_pandas...; 413 above it), so
    #: no caller can grow the daemon's memory without bound.
    max_request_body_bytes: PositiveInt = 1024**3
    flat = {
        "max_model_upload_bytes": "max_model_upload_bytes",
        "max_request_body_bytes": "max_request_body_bytes",
    }


class HttpSettings(Section):
    """Every HTTP server that faces callers: control plane and ingress (``neve.gateway.limits``)."""

    header_timeout_secs: PositiveFloat = 10.0
    keep_alive_secs: PositiveInt = 5
    max_header_bytes: PositiveInt = 16 * 1024
    limit_concurrency: PositiveInt = 1000


class TlsSettings(Section):
    """TLS of those servers: on when ``certfile`` is set (``keyfile`` unless the certificate
    file holds the key)."""

    certfile: str | None = None
    keyfile: str | None = None
    keyfile_password: str | None = None


class IngressSettings(Section):
    """Service endpoints (``neve.gateway``, ``neve.dataplane``)."""

    domain: str = "neve.localhost"
    max_body_bytes: PositiveInt = 32 * 1024 * 1024
    body_timeout_secs: PositiveFloat = 30.0
    request_timeout_secs: PositiveFloat = 300.0
    wake_timeout_secs: PositiveFloat = 120.0
    #: How long a token / privilege look-up is reused (0: never).
    auth_cache_secs: NonNegativeFloat = 1.0
    queue_timeout_secs: PositiveFloat = 10.0
    max_inflight: PositiveInt = 1000
    #: Proxy processes on the embedded default (unset: sized to the machine; 0: none).
    proxies: NonNegativeInt | None = None
    #: Address the proxies listen on (unset: the control plane's host).
    host: str | None = None
    #: 0: the last one used, else a free one.
    port: NonNegativeInt = 0
    #: V2 gRPC port of the proxies: 0 the last one (else a free one), -1 no gRPC ingress.
    grpc_port: int = Field(default=0, ge=-1)
    #: A proxy that cannot reach its control plane for this long exits.
    proxy_orphan_secs: PositiveFloat = 900.0


class ServiceSettings(Section):
    """Services and their supervisor (``neve.services``)."""

    supervisor_interval_secs: PositiveFloat = 1.0
    start_timeout_secs: PositiveFloat = 300.0
    resume_timeout_secs: PositiveFloat = 120.0
    scale_up_queue_rows: PositiveFloat = 64.0
    scale_down_idle_secs: PositiveFloat = 30.0


class SecuritySettings(Section):
    """Tokens and logins (``neve.security``)."""

    token_ttl_secs: PositiveInt = 4 * 3600
    #: Lifetime of the token the local CLI / client is issued for the account's owner.
    local_token_ttl_secs: PositiveInt = 30 * 24 * 3600
    login_max_failures: PositiveInt = 5
    login_lockout_secs: PositiveFloat = 60.0
    flat = {
        "token_ttl_secs": "token_ttl_secs",
        "local_token_ttl_secs": "local_token_ttl_secs",
        "login_max_failures": "login_max_failures",
        "login_lockout_secs": "login_lockout_secs",
    }


class BuildSettings(Section):
    """Image builds (``neve.environments``)."""

    timeout_secs: PositiveInt = 3600
    #: A directory of prebuilt base environments (the environment variable
    #: ``NEVE_BASE_IMAGES_DIR`` wins, also for accounts built from a ``Settings`` object).
    base_images_dir: str | None = None
    base_index_url: str = PYPI_INDEX
    #: Frameworks installed into the shared base environment.
    base_frameworks: list[str] | None = None
    find_links: list[str] | str | None = None
    #: host -> index URL, for a host an external access integration allows whose index is not
    #: ``https://<host>/simple``.
    index_urls: dict[str, str] | None = None
    flat = {
        "base_images_dir": "base_images_dir",
        "base_index_url": "base_index_url",
        "base_frameworks": "base_frameworks",
        "find_links": "find_links",
        "index_urls": "index_urls",
    }


def _default_query_threads() -> int:
    return max(4, os.cpu_count() or 2)


class WarehouseSettings(Section):
    """The warehouse's queries (``neve.sql``)."""

    query_threads: PositiveInt = Field(default_factory=_default_query_threads)
    query_memory_limit: str = Field(default="4GB", min_length=1)
    query_timeout_secs: PositiveFloat = 3600.0
    #: The package channel warehouse functions may use (default: the one shipped with neve).
    channel_file: str | None = None


class Settings(BaseModel):
    """An account's settings. ``home`` and the catalog / artifact locations, then one section
    per component."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    home: Path
    #: Empty: ``sqlite:///<home>/catalog.db``.
    catalog_url: str = ""
    #: Empty: ``<home>/artifacts``; an fsspec URL (``s3://...``) is accepted.
    artifact_store: str = ""
    account_name: str = "local"
    control: ControlSettings = Field(default_factory=ControlSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    ingress: IngressSettings = Field(default_factory=IngressSettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    build: BuildSettings = Field(default_factory=BuildSettings)
    warehouse: WarehouseSettings = Field(default_factory=WarehouseSettings)

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

    def configured(self) -> dict[str, Any]:
        """What was set (not left at its default), by section: what ``settings_from_values``
        takes to make these settings again elsewhere (a proxy on another machine)."""
        return self.model_dump(mode="json", exclude_unset=True, exclude={"home"})


ROOT_KEYS = ("catalog_url", "artifact_store", "account_name")
SECTIONS: dict[str, type[Section]] = {
    name: info.annotation  # type: ignore[misc]
    for name, info in Settings.model_fields.items()
    if isinstance(info.annotation, type) and issubclass(info.annotation, Section)
}


def flat_keys() -> dict[str, tuple[str | None, str]]:
    """Every flat key -> (section or None for a root key, field)."""
    keys: dict[str, tuple[str | None, str]] = {k: (None, k) for k in ROOT_KEYS}
    for section, model in SECTIONS.items():
        for name in model.model_fields:
            keys[model.flat.get(name, f"{section}_{name}")] = (section, name)
    return keys


def settings_from_values(
    values: Mapping[str, Any],
    *,
    home: Path,
    source: str = "settings.toml",
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from a file's ``values`` (flat keys and/or section tables) and ``NEVE_<KEY>``
    variables of ``environ`` (which win); an ``InvalidArgumentError`` names every bad key."""
    keys = flat_keys()
    # (section or None, field) -> (value, where it was set)
    given: dict[tuple[str | None, str], tuple[Any, str]] = {}
    problems: list[str] = []
    for key, value in values.items():
        if key in SECTIONS and isinstance(value, dict):
            for name, inner in value.items():
                if name in SECTIONS[key].model_fields:
                    given[(key, name)] = (inner, f"[{key}] {name}")
                else:
                    problems.append(_unknown(f"[{key}] {name}", name, SECTIONS[key].model_fields))
        elif key in keys:
            given[keys[key]] = (value, key)
        else:
            problems.append(_unknown(key, key, [*keys, *SECTIONS]))
    for key, target in keys.items():
        raw = (environ or {}).get(ENV_PREFIX + key.upper())
        if raw is not None:
            given[target] = (_env_value(raw), ENV_PREFIX + key.upper())
    root: dict[str, Any] = {"home": home}
    sections: dict[str, dict[str, Any]] = {}
    for (section, name), (value, _where) in given.items():
        if section is None:
            root[name] = value
        else:
            sections.setdefault(section, {})[name] = value
    where = {(s, n): w for (s, n), (_v, w) in given.items()}
    try:
        settings = Settings.model_validate({**root, **sections})
    except _ValidationError as exc:
        for err in exc.errors():
            loc = [str(part) for part in err["loc"]]
            target = (loc[0], loc[1]) if loc[0] in SECTIONS and len(loc) > 1 else (None, loc[0])
            label = where.get(target, ".".join(loc))
            problems.append(f"setting {label} = {err.get('input')!r}: {err['msg'].lower()}")
    if problems:
        raise InvalidArgumentError(f"{source}: " + "; ".join(problems))
    return settings


def _unknown(label: str, key: str, choices: Any) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1)
    return f"unknown setting {label!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def _env_value(raw: str) -> Any:
    """An environment variable's value: JSON when it reads as a list or an object, else the
    string (pydantic coerces it to the declared type)."""
    text = raw.strip()
    if text.startswith(("[", "{")):
        try:
            return json.loads(text)
        except ValueError:
            return raw
    return raw


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
    return settings_from_values(values, home=root, source=str(cfg), environ=os.environ)
