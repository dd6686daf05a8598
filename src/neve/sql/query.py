"""Planning a warehouse statement: parse, rewrite names, bind service and model functions.

A statement that is not a management statement is parsed with sqlglot (DuckDB dialect) after
the ``!`` calls were replaced by placeholders. Planning then

1. rewrites table references to the warehouse's DuckDB catalogs and checks that each neve schema
   exists and the role may use it (USAGE to read, CREATE TABLE on the schema for the tables a
   statement changes), and says which schemas the query instance attaches, and how;
2. finds calls of service functions (``svc_predict(a, b)``, ``db.schema.svc_predict(...)``,
   ``svc!predict(...)``) and model functions (``MODEL(m, v1)!predict(...)``), checks USAGE,
   the argument count against the signature, and replaces each by a per-query Arrow UDF name.

These checks give early, precise errors; they are not what keeps a role out of a schema: the
query instance has only the role's schemas attached (``neve.sql.warehouse``), so a name this
parse misses (inside ``query('...')``, a view, a PRAGMA) still cannot reach another schema.

No row is sent anywhere during planning; the argument *types* are checked by DuckDB's binder
against the UDF's typed parameters before execution starts (the engine turns its error into a
``SignatureError`` naming the function, the expected and the given argument types).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlglot
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlglot import exp
from sqlglot.errors import ParseError
from sqlglot.tokens import TokenType

from neve.catalog import lookup
from neve.catalog import models as m
from neve.context import RequestContext
from neve.dataplane.targets import service_method_entries
from neve.errors import (
    InvalidIdentifierError,
    NotSupportedError,
    ObjectNotFoundError,
    SignatureError,
    SqlSyntaxError,
)
from neve.identifiers import QualifiedName, qualify
from neve.models.signature import ModelSignature
from neve.sql import access, external, table_functions
from neve.sql import functions as fns
from neve.sql.duck_names import neve_schema
from neve.sql.lexer import BANG_PREFIX, BangCall, line_col, rewrite_bang_calls, tokenize
from neve.sql.warehouse import rewrite_tables

if TYPE_CHECKING:
    from neve.sql.managers import EngineParts

_QUERY_IDS = itertools.count(1)


@dataclass
class BoundCall:
    """One service/model function call of a query, bound to a UDF name."""

    udf_name: str
    display: str  # how the user wrote the function: FORECAST_SVC_PREDICT, svc!predict, ...
    kind: str  # "SERVICE" | "MODEL"
    signature: ModelSignature
    params: list[str]  # DuckDB parameter types
    return_type: str
    # SERVICE: fully-qualified service name, method, batching options
    service: str | None = None
    method: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    # MODEL: the version row's identity and where its files are
    model_key: str | None = None
    model_loader: Any = None
    #: FUNCTION, or TABLE_FUNCTION for a partitioned method
    function_type: str = "FUNCTION"
    #: method parameters given as ``name => constant`` after the arguments
    call_params: dict[str, Any] = field(default_factory=dict)
    #: EXTERNAL: where the batches go (``neve.sql.external``)
    external: external.ExternalTarget | None = None


@dataclass
class PlannedStatement:
    sql: str
    calls: list[BoundCall]
    returns_rows: bool
    tables: list[tuple[str, str, str]] = field(default_factory=list)
    #: neve schemas the statement names, and those it changes (attached READ_WRITE)
    schemas: set[tuple[str, str]] = field(default_factory=set)
    writes: set[tuple[str, str]] = field(default_factory=set)
    #: it may reach schemas it does not name (catalog and table functions, PRAGMA, ...): attach
    #: every schema the role may read
    wide: bool = False
    #: ``TABLE(f(...) OVER (PARTITION BY k))`` calls, evaluated and registered before it runs
    partitioned_calls: list[table_functions.TableFunctionCall] = field(default_factory=list)


#: Names that reach tables or the catalog without naming a table in the FROM clause.
_WIDE = re.compile(
    r"(?i)\b(query|query_table|duckdb_\w+|pragma_\w+|information_schema|pg_catalog|pg_\w+|"
    r"sqlite_\w+|table_info|storage_info)\b"
)
_READS = (exp.Query, exp.Describe, exp.Summarize, exp.Show, exp.Pragma, exp.Set, exp.Command)
_WRITES = (exp.Insert, exp.Update, exp.Delete, exp.Create, exp.Drop, exp.Alter, exp.Merge)


def _syntax_error(err: ParseError, text: str, offset: int, script: str) -> SqlSyntaxError:
    info = err.errors[0] if err.errors else {}
    desc = str(info.get("description") or err).split("<Token")[0].strip().rstrip(".")
    desc = desc.removesuffix(" but got").strip()
    token = info.get("highlight")
    line, col = info.get("line"), info.get("col")
    if line is not None and col is not None:
        # sqlglot's col is where the token ends; report where it starts, in the whole script.
        start = _offset_of(text, int(line), int(col)) - max(len(token or "") - 1, 0)
        line, col = line_col(script, offset + max(start, 0))
    found = f", found {token!r}" if token else ""
    return SqlSyntaxError(f"{desc}{found}", line=line, col=col)


def _offset_of(text: str, line: int, col: int) -> int:
    lines = text.split("\n")
    return sum(len(x) + 1 for x in lines[: line - 1]) + col - 1


def parse_statement(
    text: str, *, offset: int = 0, script: str | None = None
) -> tuple[exp.Expression | None, dict[str, BangCall]]:
    script = script if script is not None else text
    rewritten, bangs = rewrite_bang_calls(text)
    first = next(iter(tokenize(text)), None)
    if first is not None and first.token_type == TokenType.VAR:
        line, col = line_col(script, offset + first.start)
        raise SqlSyntaxError(f"unknown statement {first.text!r}", line=line, col=col)
    try:
        trees = sqlglot.parse(rewritten, read="duckdb")
    except ParseError as err:
        raise _syntax_error(err, rewritten if not bangs else text, offset, script) from None
    statements = [t for t in trees if isinstance(t, exp.Expression)]
    if len(statements) > 1:
        raise SqlSyntaxError("one statement at a time here (split the script at ';')")
    return (statements[0] if statements else None), bangs


def _dotted_parts(node: exp.Expression) -> list[str] | None:
    """``db.s`` left of a ``Dot`` as raw identifier texts (quoted ones keep their quotes)."""
    if isinstance(node, exp.Identifier):
        return [node.sql(dialect="duckdb")]
    if isinstance(node, exp.Column):
        return [p.sql(dialect="duckdb") for p in node.parts]
    if isinstance(node, exp.Dot):
        left = _dotted_parts(node.this)
        right = _dotted_parts(node.expression)
        if left is None or right is None:
            return None
        return left + right
    return None


def _call_name(node: exp.Anonymous) -> tuple[list[str], exp.Expression]:
    """The name parts of a function call and the node to replace (the outer Dot if qualified)."""
    this = node.args.get("this")
    raw = this.sql(dialect="duckdb") if isinstance(this, exp.Identifier) else node.name
    parent = node.parent
    if isinstance(parent, exp.Dot) and parent.expression is node:
        left = _dotted_parts(parent.this)
        if left is not None:
            return [*left, raw], parent
    return [raw], node


class Planner:
    def __init__(self, engine: EngineParts, ctx: RequestContext) -> None:
        self.engine = engine
        self.account = engine.account
        self.ctx = ctx
        self.query_id = next(_QUERY_IDS)
        self.calls: list[BoundCall] = []

    # -- entry ------------------------------------------------------------------------------------
    def plan(self, tree: exp.Expression, bangs: dict[str, BangCall], text: str) -> PlannedStatement:
        if isinstance(tree, exp.Command):
            # sqlglot did not understand it (PRAGMA, SUMMARIZE, ...): DuckDB runs it as written,
            # on an instance with the role's schemas attached READ_ONLY.
            return PlannedStatement(sql=text, calls=[], returns_rows=True, wide=True)
        tables: list[tuple[str, str, str]] = []
        used = rewrite_tables(tree, self.ctx.database, self.ctx.schema, tables)
        writes = _write_targets(tree, used)
        with self.account.catalog.transaction() as s:
            self._check_schemas(s, used, writes)
            projections = self._projection_names(tree, bangs)
            # Table functions first: their calls leave the tree (a registered table instead).
            partitioned = table_functions.extract(
                tree, lambda fn, n: self._bind_table_call(s, fn, bangs, n), self._new_table_name
            )
            self._bind_functions(s, tree, bangs)
        for db, sch in used:
            self.engine.warehouse.ensure_schema(db, sch)
        self._alias_projections(tree, projections)
        returns_rows = isinstance(tree, exp.Query | exp.Describe | exp.Show | exp.Pragma) or bool(
            tree.args.get("returning")
        )
        return PlannedStatement(
            sql=tree.sql(dialect="duckdb"),
            calls=self.calls,
            returns_rows=returns_rows,
            tables=tables,
            schemas=used,
            writes=writes,
            wide=bool(_WIDE.search(text)) or _has_table_function(tree),
            partitioned_calls=partitioned,
        )

    # -- schemas ----------------------------------------------------------------------------------
    def _check_schemas(
        self, s: Session, used: set[tuple[str, str]], writes: set[tuple[str, str]]
    ) -> None:
        security = self.account.security
        for db, sch in sorted(used):
            schema_row = lookup.schema(s, db, sch)
            privilege = access.WRITE if (db, sch) in writes else access.READ
            security.require(s, self.ctx, privilege, schema_row)

    # -- functions --------------------------------------------------------------------------------
    def _bind_functions(self, s: Session, tree: exp.Expression, bangs: dict[str, BangCall]) -> None:
        for node in list(tree.find_all(exp.Anonymous)):
            parts, target = _call_name(node)
            args = [a for a in node.expressions if not isinstance(a, exp.Kwarg)]
            if len(parts) == 1 and parts[0].upper().startswith(BANG_PREFIX):
                bang = bangs.get(parts[0].upper())
                if bang is None:
                    continue
                call = (
                    self._bind_bang_service(s, bang, len(args))
                    if bang.kind == "SERVICE"
                    else self._bind_model(s, bang, len(args))
                )
            else:
                named = self._bind_named(s, parts, len(args))
                if named is None:
                    continue
                call = named
            if call.function_type == "TABLE_FUNCTION":
                raise SignatureError(
                    f"{call.display} is a table function (a partitioned method: all rows of a "
                    "partition in, any number of rows out), not a function of one row: call it "
                    f"in the FROM clause, FROM <table>, TABLE({call.display}(...) OVER "
                    "(PARTITION BY <column>))"
                )
            call.call_params = _call_params(call, node)
            replacement = exp.Anonymous(this=call.udf_name, expressions=args)
            target.replace(replacement)
            self.calls.append(call)

    def _new_udf_name(self) -> str:
        return f"__neve_udf_{self.query_id}_{len(self.calls)}"

    def _new_table_name(self) -> str:
        self._tables = getattr(self, "_tables", 0) + 1
        return f"__neve_table_{self.query_id}_{self._tables}"

    def _bind_table_call(
        self, s: Session, node: exp.Anonymous, bangs: dict[str, BangCall], nargs: int
    ) -> BoundCall:
        """The function inside ``TABLE(...)``: a service's or a model's partitioned method."""
        parts, _target = _call_name(node)
        call: BoundCall | None
        if len(parts) == 1 and parts[0].upper().startswith(BANG_PREFIX):
            bang = bangs[parts[0].upper()]
            call = (
                self._bind_bang_service(s, bang, nargs)
                if bang.kind == "SERVICE"
                else self._bind_model(s, bang, nargs)
            )
        else:
            call = self._bind_named(s, parts, nargs)
        if call is None:
            raise ObjectNotFoundError(
                f"TABLE({'.'.join(parts)}(...)): no service or model function of that name"
            )
        if call.function_type != "TABLE_FUNCTION":
            raise SignatureError(
                f"{call.display} is not a table function (not a partitioned method): call it "
                "in the select list, or mark the method @neve.partitioned_api"
            )
        call.call_params = _call_params(call, node)
        return call

    def _bind_named(self, s: Session, parts: list[str], nargs: int) -> BoundCall | None:
        raw = ".".join(parts)
        try:
            qn = qualify(raw, database=self.ctx.database, schema=self.ctx.schema, kind="function")
        except InvalidIdentifierError:
            if len(parts) == 1:
                return None  # no current schema: a DuckDB built-in such as list_value()
            raise
        fn = self._find_function(s, qn)
        if fn is None:
            if len(parts) == 1:
                return None  # a DuckDB built-in (or DuckDB reports the unknown function)
            raise ObjectNotFoundError(
                f"function {qn} does not exist or not authorized (looked in schema "
                f"{qn.database}.{qn.schema})"
            )
        return self._bind_service_function(s, fn, display=str(qn.name), nargs=nargs)

    def _find_function(self, s: Session, qn: QualifiedName) -> m.Function | None:
        schema_row = s.scalar(
            select(m.Schema)
            .join(m.Database)
            .where(m.Database.name == qn.database, m.Schema.name == qn.schema)
        )
        if schema_row is None:
            return None
        return s.scalar(
            select(m.Function).where(
                m.Function.schema_id == schema_row.id, m.Function.name == qn.name
            )
        )

    def _bind_bang_service(self, s: Session, bang: BangCall, nargs: int) -> BoundCall:
        qn = qualify(
            bang.target, database=self.ctx.database, schema=self.ctx.schema, kind="service"
        )
        service = lookup.in_schema(s, m.Service, qn, "service")
        method = bang.method
        fns_of = fns.service_functions(s, service)
        fn = next((f for f in fns_of if f.method.upper() == method.upper()), None)
        if fn is None:
            raise ObjectNotFoundError(
                f"service {qn} has no method {method!r}; methods: "
                f"{', '.join(sorted(f.method for f in fns_of)) or 'none'}"
            )
        return self._bind_service_function(s, fn, display=f"{bang.target}!{method}", nargs=nargs)

    def _bind_service_function(
        self, s: Session, fn: m.Function, *, display: str, nargs: int
    ) -> BoundCall:
        if fn.kind == external.KIND_EXTERNAL:
            return self._bind_external(s, fn, display=display, nargs=nargs)
        service = s.get(m.Service, fn.service_id) if fn.service_id is not None else None
        if service is None:
            raise ObjectNotFoundError(f"function {display}: its service no longer exists")
        self.account.security.require(s, self.ctx, "USAGE", service)
        signature = ModelSignature.from_dict(fn.signature)
        _check_arity(display, signature, nargs)
        spec = service_method_entries(s, service).get(fn.method)
        return BoundCall(
            udf_name=self._new_udf_name(),
            display=display,
            kind="SERVICE",
            signature=signature,
            params=[fns.duck_type(f) for f in signature.inputs],
            return_type=fns.return_duck_type(signature),
            service=str(lookup.qualified(s, service.schema_id, service.name)),
            method=fn.method,
            options=fns.effective_options(fn),
            function_type=_function_type(spec),
        )

    def _bind_external(self, s: Session, fn: m.Function, *, display: str, nargs: int) -> BoundCall:
        """An external function: USAGE on it, its API integration enabled and allowing its URL
        (checked now, before any row is sent)."""
        label = str(lookup.qualified(s, fn.schema_id, fn.name))
        target = external.bind(s, self.account, self.ctx, fn, label)
        signature = ModelSignature.from_dict(fn.signature)
        _check_arity(display, signature, nargs)
        return BoundCall(
            udf_name=self._new_udf_name(),
            display=display,
            kind=external.KIND_EXTERNAL,
            signature=signature,
            params=[fns.duck_type(f) for f in signature.inputs],
            return_type=fns.return_duck_type(signature),
            service=target.url,
            method="",
            options=fns.effective_options(fn),
            external=target,
        )

    def _bind_model(self, s: Session, bang: BangCall, nargs: int) -> BoundCall:
        qn = qualify(bang.target, database=self.ctx.database, schema=self.ctx.schema, kind="model")
        model = lookup.in_schema(s, m.Model, qn, "model")
        self.account.security.require(s, self.ctx, "USAGE", model)
        version = lookup.model_version(s, model, qn, bang.version)
        platforms = [str(p).upper() for p in (version.target_platforms or [])]
        if platforms and "WAREHOUSE" not in platforms:
            raise NotSupportedError(
                f"model {qn} version {version.name} cannot run in the warehouse (target platforms: "
                f"{', '.join(platforms)}; it has pip requirements or non-warehouse channels); "
                "deploy it with create_service and call the service function instead"
            )
        methods = version.signatures or {}
        spec = _method_entry(methods, bang.method)
        if spec is None:
            raise ObjectNotFoundError(
                f"model {qn} version {version.name} has no method {bang.method!r}; methods: "
                f"{', '.join(sorted(methods)) or 'none'}"
            )
        method_name, sig_dict = spec
        signature = ModelSignature.from_dict(sig_dict.get("signature", sig_dict))
        display = f"MODEL({bang.target}, {version.name})!{bang.method}"
        _check_arity(display, signature, nargs)
        return BoundCall(
            udf_name=self._new_udf_name(),
            display=display,
            kind="MODEL",
            signature=signature,
            params=[fns.duck_type(f) for f in signature.inputs],
            return_type=fns.return_duck_type(signature),
            method=method_name,
            model_key=version.artifact_sha256,
            model_loader=self.engine.model_loader(version),
            function_type=_function_type(sig_dict),
        )

    # -- output column names ----------------------------------------------------------------------
    def _projection_names(self, tree: exp.Expression, bangs: dict[str, BangCall]) -> dict[int, str]:
        """Unaliased top-level projections that call functions: their text as written."""
        if not isinstance(tree, exp.Select):
            return {}
        names: dict[int, str] = {}
        for i, proj in enumerate(tree.expressions):
            if isinstance(proj, exp.Alias) or not list(proj.find_all(exp.Anonymous)):
                continue
            text = proj.sql(dialect="duckdb")
            for key, bang in bangs.items():
                shown = (
                    f"{bang.target}!{bang.method}"
                    if bang.kind == "SERVICE"
                    else f"MODEL({bang.target}{', ' + bang.version if bang.version else ''})"
                    f"!{bang.method}"
                )
                text = text.replace(key, shown)
            names[i] = text
        return names

    @staticmethod
    def _alias_projections(tree: exp.Expression, names: dict[int, str]) -> None:
        if not names or not isinstance(tree, exp.Select):
            return
        projections = list(tree.expressions)
        for i, text in names.items():
            proj = projections[i]
            if proj.sql(dialect="duckdb") != text:
                proj.replace(exp.alias_(proj.copy(), exp.to_identifier(text, quoted=True)))


def _call_params(call: BoundCall, node: exp.Anonymous) -> dict[str, Any]:
    """``name => constant`` arguments: the method's parameters, checked against its signature
    now (a SignatureError naming the function before any row is sent)."""
    from neve.models.signature import resolve_params

    given: dict[str, Any] = {}
    for kw in node.expressions:
        if not isinstance(kw, exp.Kwarg):
            continue
        name = kw.this.name
        try:
            given[name] = _constant(kw.expression)
        except ValueError:
            raise SignatureError(
                f"function {call.display}: parameter {name} => {kw.expression.sql()} must be a "
                "constant (a number, string, boolean or list of those)"
            ) from None
    if given:
        # parameter names are case-insensitive in SQL: match them to the declared spelling
        declared = {p.upper(): p for p in call.signature.params}
        given = {declared.get(k.upper(), k): v for k, v in given.items()}
        resolve_params(call.signature, given, method=call.display)
    return given


def _constant(node: exp.Expression) -> Any:
    if isinstance(node, exp.Literal):
        if node.is_string:
            return node.this
        text = node.this
        return float(text) if any(c in text for c in ".eE") else int(text)
    if isinstance(node, exp.Boolean):
        return bool(node.this)
    if isinstance(node, exp.Neg):
        return -_constant(node.this)
    if isinstance(node, exp.Array):
        return [_constant(e) for e in node.expressions]
    if isinstance(node, exp.Null):
        return None
    raise ValueError(node)


def _function_type(spec: Any) -> str:
    """FUNCTION or TABLE_FUNCTION, from a version's method entry (older ones have none)."""
    if isinstance(spec, dict):
        return str(spec.get("function_type") or "FUNCTION")
    return "FUNCTION"


def _check_arity(display: str, signature: ModelSignature, nargs: int) -> None:
    if nargs != len(signature.inputs):
        expected = ", ".join(f"{f.name} {fns.duck_type(f)}" for f in signature.inputs)
        raise SignatureError(
            f"function {display} takes {len(signature.inputs)} argument(s) ({expected}) but was "
            f"called with {nargs}"
        )


def _method_entry(methods: dict, name: str) -> tuple[str, dict] | None:
    for key, value in methods.items():
        if key == name or key.upper() == name.upper():
            return key, value
    return None


def _write_targets(tree: exp.Expression, used: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The neve schemas whose tables a (rewritten) statement changes.

    A statement of a kind not known here counts as changing every schema it names: a wrong
    guess costs a privilege check, never access (what is attached READ_ONLY cannot be written).
    """
    if isinstance(tree, _READS):
        return set()
    if not isinstance(tree, _WRITES):
        return set(used)
    target = tree.this
    table = target if isinstance(target, exp.Table) else None
    if table is None and isinstance(target, exp.Expression):
        table = target.find(exp.Table)
    if table is None:
        return set() if isinstance(tree, exp.Create) else set(used)
    catalog = table.args.get("catalog")
    parts = neve_schema(catalog.this) if isinstance(catalog, exp.Identifier) else None
    return {parts} if parts is not None else set()


def _has_table_function(tree: exp.Expression) -> bool:
    return any(not isinstance(t.this, exp.Identifier) for t in tree.find_all(exp.Table))
