"""Object kinds: each kind's settable fields declared once.

A field has one name in every surface: ``min_nodes`` is the REST body key, the Python
keyword (client and manager), the CLI option ``--min-nodes`` and, upper-cased, the SQL
property ``MIN_NODES``. The SQL parser's property tables, the REST routes' accepted body
fields, the CLI's defaults and help and the client's statement text are all read from here,
so adding a field to a kind is one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from neve.errors import InvalidArgumentError
from neve.identifiers import ident, quote, split_name

#: Value types, as the SQL parser reads them. ``word``: a bare word or a string;
#: ``names``: one name or a parenthesised list of names; ``strs``: a list of strings.
INT, BOOL, STR, WORD, NAMES, STRS, NUM = "int", "bool", "str", "word", "names", "strs", "num"

Stage = Literal["create", "alter"]


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    default: Any = None
    help: str = ""
    create: bool = True
    alter: bool = False
    sql_name: str = ""  # the SQL property when it is not the upper-cased name

    @property
    def sql(self) -> str:
        return self.sql_name or self.name.upper()

    def check(self, value: Any, owner: str) -> Any:
        """The value if its Python type fits this field (None: not set), else a clear error."""
        if value is None:
            return None
        ok = {
            INT: isinstance(value, int) and not isinstance(value, bool),
            NUM: isinstance(value, int | float) and not isinstance(value, bool),
            BOOL: isinstance(value, bool),
            STR: isinstance(value, str),
            WORD: isinstance(value, str),
            NAMES: isinstance(value, list | tuple) and all(isinstance(v, str) for v in value),
            STRS: isinstance(value, list | tuple) and all(isinstance(v, str) for v in value),
        }[self.type]
        if not ok:
            expected = {
                INT: "an integer",
                NUM: "a number",
                BOOL: "true or false",
                STR: "a string",
                WORD: "a string",
                NAMES: "a list of names",
                STRS: "a list of strings",
            }[self.type]
            raise InvalidArgumentError(
                f"{owner}: {self.name} must be {expected}, got {type(value).__name__} {value!r}"
            )
        return value

    def render(self, value: Any) -> str:
        """``KEY = value`` as the SQL parser reads it back."""
        if self.type == BOOL:
            text = "TRUE" if value else "FALSE"
        elif self.type in (INT, NUM):
            text = str(value)
        elif self.type == NAMES:
            text = "(" + ", ".join(_name(v, self.name) for v in value) + ")"
        elif self.type == STRS:
            text = "(" + ", ".join(_string(v) for v in value) + ")"
        else:
            text = _string(str(value))
        return f"{self.sql} = {text}"


def _name(raw: str, field: str) -> str:
    """A (dotted) name, each part quoted, as the parser reads identifiers back."""
    parts = split_name(raw)
    if not 1 <= len(parts) <= 3:
        raise InvalidArgumentError(f"{field}: invalid name {raw!r}")
    return ".".join(quote(ident(p, kind=f"{field} name")) for p in parts)


def _string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class ObjectKind:
    """One kind of object (``COMPUTE POOL``) and the fields CREATE / ALTER ... SET take."""

    name: str
    fields: tuple[Field, ...]

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name}")

    def default(self, name: str) -> Any:
        return self.field(name).default

    def stage_fields(self, stage: Stage) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if (f.create if stage == "create" else f.alter))

    def sql_props(self, stage: Stage) -> dict[str, str]:
        """The SQL property table: property name -> value type."""
        return {f.sql: f.type for f in self.stage_fields(stage)}

    def body_fields(self, stage: Stage, *extra: str) -> set[str]:
        """The REST body keys (and the Python keywords) of that stage, plus ``extra``."""
        return {f.name for f in self.stage_fields(stage)} | set(extra)

    def checked(self, values: Mapping[str, Any], stage: Stage, owner: str) -> dict[str, Any]:
        """``values`` with each declared field's type checked; unknown keys are refused."""
        allowed = {f.name: f for f in self.stage_fields(stage)}
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise InvalidArgumentError(
                f"{owner}: unknown field(s) {', '.join(unknown)}; valid: {', '.join(sorted(allowed))}"
            )
        return {k: allowed[k].check(v, owner) for k, v in values.items()}

    def render(self, values: Mapping[str, Any], stage: Stage = "create") -> str:
        """The SQL property clause of ``values`` (None values left out), e.g.
        ``MIN_NODES = 1 INSTANCE_FAMILY = 'CPU_X64_S'``."""
        fields = {f.name: f for f in self.stage_fields(stage)}
        return " ".join(fields[k].render(v) for k, v in values.items() if v is not None)


def _kind(name: str, *fields: Field) -> ObjectKind:
    return ObjectKind(name, tuple(fields))


def _comment(alter: bool = True) -> Field:
    return Field("comment", STR, help="Comment.", alter=alter)


COMPUTE_POOL = _kind(
    "COMPUTE POOL",
    Field("min_nodes", INT, 1, "Nodes kept when active.", alter=True),
    Field("max_nodes", INT, 1, "Most nodes it may grow to.", alter=True),
    Field("instance_family", WORD, None, "Instance family, e.g. CPU_X64_S."),
    Field("auto_resume", BOOL, True, "Resume on the next placement.", alter=True),
    Field("auto_suspend_secs", INT, 3600, "Suspend after this long idle (0: never).", alter=True),
    Field("initially_suspended", BOOL, False, "Create it suspended."),
    Field("backend", WORD, "local", "local or ray."),
    Field("address", STR, None, "Ray address (backend ray), e.g. ray://head:10001 or auto."),
    _comment(),
)

SERVICE = _kind(
    "SERVICE",
    Field("min_instances", INT, None, "Instances kept running.", alter=True),
    Field("max_instances", INT, None, "Most instances it may scale to.", alter=True),
    Field("auto_resume", BOOL, True, "Wake on the next call when suspended."),
    Field("auto_suspend_secs", INT, None, "Suspend after this long idle (0: never).", alter=True),
    Field("external_access_integrations", NAMES, (), "Integrations the service may reach."),
    _comment(),
)

#: A service deployed from a model version (``mv.create_service``, ``POST /api/v1/services``).
MODEL_SERVICE = _kind(
    "MODEL SERVICE",
    Field("model", WORD, None, "Model name."),
    Field("version", WORD, None, "Version name or alias."),
    Field("service_name", WORD, None, "Service name."),
    Field("compute_pool", WORD, None, "Compute pool the instances run on."),
    Field("image_repo", WORD, None, "Image repository the environment is built into."),
    Field("ingress_enabled", BOOL, False, "Serve it on the ingress (HTTP endpoint)."),
    Field("min_instances", INT, None, "Instances kept running.", alter=True),
    Field("max_instances", INT, 1, "Most instances it may scale to.", alter=True),
    Field("cpu_requests", STR, None, "CPUs per instance, e.g. '2' or '500m'."),
    Field("memory_requests", STR, None, "Memory per instance, e.g. '4Gi'."),
    Field("gpu_requests", STR, None, "GPUs per instance."),
    Field("num_workers", INT, None, "Worker processes per instance."),
    Field("max_batch_rows", INT, None, "Most rows per batch."),
    Field("build_external_access_integrations", NAMES, (), "Integrations the build may reach."),
    Field("image_build_compute_pool", WORD, None, "Pool the image build runs on."),
    Field("force_rebuild", BOOL, False, "Build the image even if one exists."),
    Field("auto_suspend_secs", INT, None, "Suspend after this long idle (0: never).", alter=True),
    _comment(),
)

NETWORK_RULE = _kind(
    "NETWORK RULE",
    Field("mode", WORD, "EGRESS", "EGRESS."),
    Field("type", WORD, "HOST_PORT", "HOST_PORT."),
    Field("value_list", STRS, (), "Hosts (host or host:port) it allows."),
    _comment(alter=False),
)

EXTERNAL_ACCESS_INTEGRATION = _kind(
    "EXTERNAL ACCESS INTEGRATION",
    Field("allowed_network_rules", NAMES, (), "Network rules it allows."),
    Field("enabled", BOOL, True, "Whether it may be used."),
    _comment(alter=False),
)

API_INTEGRATION = _kind(
    "API INTEGRATION",
    Field("api_provider", WORD, None, "NEVE (another neve installation's ingress)."),
    Field(
        "api_allowed_prefixes", STRS, (), "URL prefixes external functions may call.", alter=True
    ),
    Field("api_blocked_prefixes", STRS, (), "URL prefixes they may not call.", alter=True),
    Field("api_key", STR, None, "The token sent to the remote ingress.", alter=True),
    Field("enabled", BOOL, True, "Whether it may be used.", alter=True),
    _comment(),
)

USER = _kind(
    "USER",
    Field("password", STR, None, "Password.", alter=True),
    Field("rsa_public_key", STR, None, "PEM public key for key-pair (JWT) sign-in.", alter=True),
    Field("default_role", WORD, None, "Role a session starts with.", alter=True),
    _comment(),
    Field("disabled", BOOL, False, "Refuse sign-in.", alter=True),
)

MODEL = _kind(
    "MODEL",
    Field("default_version", WORD, None, "Version DEFAULT resolves to.", create=False, alter=True),
    Field("comment", STR, None, "Comment.", create=False, alter=True),
)

#: Objects whose only property is a comment.
COMMENTED = _kind("OBJECT", _comment())

#: ``ALTER USER [u] ADD PROGRAMMATIC ACCESS TOKEN t ...``; ``services`` scopes it to them.
PROGRAMMATIC_ACCESS_TOKEN = _kind(
    "PROGRAMMATIC ACCESS TOKEN",
    Field("role", WORD, None, "Role the token is restricted to.", sql_name="ROLE_RESTRICTION"),
    Field("days_to_expiry", INT, None, "Days until it expires."),
    Field("services", NAMES, None, "Scope it to these services' ingress endpoints."),
    _comment(alter=False),
)

#: Batching options of a service function (CREATE FUNCTION ... SERVICE = s ENDPOINT = m).
FUNCTION_OPTIONS = _kind(
    "FUNCTION",
    Field("max_batch_rows", INT, None, "Most rows per call to the service.", alter=True),
    Field("max_batch_retries", INT, None, "Retries of a failed batch.", alter=True),
    Field("on_batch_failure", WORD, None, "ABORT or RETURN_NULL.", alter=True),
    Field("batch_timeout_secs", NUM, None, "Seconds one batch may take.", alter=True),
)

SERVICE_FUNCTION = _kind(
    "SERVICE FUNCTION",
    Field("service", WORD, None, "The service it calls."),
    Field("endpoint", WORD, None, "The service's method."),
    *FUNCTION_OPTIONS.fields,
)

EXTERNAL_FUNCTION = _kind(
    "EXTERNAL FUNCTION",
    Field("api_integration", WORD, None, "The API integration it calls through."),
    _comment(),
    *FUNCTION_OPTIONS.fields,
)

ALL: tuple[ObjectKind, ...] = (
    COMPUTE_POOL,
    SERVICE,
    MODEL_SERVICE,
    NETWORK_RULE,
    EXTERNAL_ACCESS_INTEGRATION,
    API_INTEGRATION,
    USER,
    MODEL,
    COMMENTED,
    PROGRAMMATIC_ACCESS_TOKEN,
    FUNCTION_OPTIONS,
    SERVICE_FUNCTION,
    EXTERNAL_FUNCTION,
)
