"""``neve models``: log, list, inspect and delete registered models.

    neve models log model.pkl --name forecast --database ml --schema registry \\
        --conda-dependency xgboost --sample-input train.csv
    neve models list [--database ml [--schema registry]]
    neve models versions ml.registry.forecast
    neve models show ml.registry.forecast [--version v1]
    neve models delete ml.registry.forecast [--version v1] [--yes]

A model is named ``db.schema.name``, or ``name`` with ``--database``/``--schema`` (or the
session's current ones). ``log`` reads a pickled model object (pickle, cloudpickle or joblib)
and, for signature inference, sample input from a .csv, .parquet or .json (records) file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from neve.cli._common import (
    DatabaseOpt,
    SchemaOpt,
    cell,
    fail,
    get_session,
    print_table,
)

app = typer.Typer(
    help="Log, list, inspect and delete models in the registry.", add_completion=False
)
console = Console()


def _split(
    model: str, database: str | None, schema: str | None
) -> tuple[str | None, str | None, str]:
    from neve.errors import InvalidArgumentError
    from neve.identifiers import split_name

    parts = split_name(model)
    if len(parts) > 3:
        raise InvalidArgumentError(f"invalid model name {model!r}: at most database.schema.name")
    name = parts[-1]
    if len(parts) >= 2:
        schema = parts[-2]
    if len(parts) == 3:
        database = parts[0]
    return database, schema, name


def _registry(session: Any, database: str | None, schema: str | None) -> Any:
    import neve

    return neve.Registry(session, database_name=database, schema_name=schema)


def _read_pickle(path: Path) -> Any:
    if path.suffix == ".joblib":
        import joblib

        return joblib.load(path)
    import cloudpickle

    with path.open("rb") as fh:
        return cloudpickle.load(fh)  # reads plain pickles too


def _read_frame(path: Path) -> Any:
    import pandas as pd

    from neve.errors import InvalidArgumentError

    if path.suffix == ".csv":
        return pd.read_csv(path)
    if path.suffix in {".parquet", ".pq"}:
        return pd.read_parquet(path)
    if path.suffix == ".json":
        return pd.read_json(path, orient="records")
    raise InvalidArgumentError(f"sample input {path}: use a .csv, .parquet or .json file")


def _metrics(items: list[str]) -> dict[str, Any]:
    from neve.errors import InvalidArgumentError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgumentError(f"metric {item!r}: write NAME=VALUE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


@app.command("log")
def log(
    ctx: typer.Context,
    model_file: Annotated[Path, typer.Argument(help="Pickled model object (.pkl/.joblib).")],
    name: Annotated[str, typer.Option("--name", "-n", help="Model name (db.schema.name ok).")],
    version: Annotated[str | None, typer.Option("--version", "-v", help="Version name.")] = None,
    database: DatabaseOpt = None,
    schema: SchemaOpt = None,
    conda_dependency: Annotated[
        list[str] | None, typer.Option("--conda-dependency", "-c", help="Repeatable.")
    ] = None,
    pip_requirement: Annotated[
        list[str] | None, typer.Option("--pip-requirement", "-p", help="Repeatable.")
    ] = None,
    sample_input: Annotated[
        Path | None, typer.Option("--sample-input", help=".csv/.parquet/.json sample rows.")
    ] = None,
    target_platform: Annotated[
        list[str] | None, typer.Option("--target-platform", help="WAREHOUSE and/or SERVICE.")
    ] = None,
    target_method: Annotated[
        list[str] | None, typer.Option("--target-method", help="Methods to expose.")
    ] = None,
    comment: Annotated[str | None, typer.Option("--comment")] = None,
    metric: Annotated[list[str] | None, typer.Option("--metric", help="NAME=VALUE.")] = None,
    python_version: Annotated[str | None, typer.Option("--python-version")] = None,
    relax_version: Annotated[
        bool, typer.Option("--relax-version", help="Pin >=X.Y,<X+1 instead of ==installed.")
    ] = False,
) -> None:
    """Log a pickled model as a new version."""
    from neve.errors import NeveError

    try:
        database, schema, model_name = _split(name, database, schema)
        model = _read_pickle(model_file)
        sample = _read_frame(sample_input) if sample_input is not None else None
        options: dict[str, Any] = {"relax_version": relax_version} if relax_version else {}
        if target_method:
            options["target_methods"] = list(target_method)
        session = get_session(ctx)
        mv = _registry(session, database, schema).log_model(
            model,
            model_name=model_name,
            version_name=version,
            conda_dependencies=conda_dependency or None,
            pip_requirements=pip_requirement or None,
            python_version=python_version,
            sample_input_data=sample,
            target_platforms=target_platform or None,
            comment=comment,
            metrics=_metrics(metric or []),
            options=options,
        )
    except (NeveError, OSError) as exc:
        raise fail(exc) from None
    console.print(
        f"logged [bold]{mv.fully_qualified_model_name}[/bold] version "
        f"[bold]{mv.version_name}[/bold] (target platforms: {', '.join(mv.target_platforms)})"
    )


@app.command("list")
def list_models(ctx: typer.Context, database: DatabaseOpt = None, schema: SchemaOpt = None) -> None:
    """SHOW MODELS: in a schema, a database, or (neither given) every one you may use."""
    from neve.errors import NeveError

    try:
        session = get_session(ctx)
        params = {k: v for k, v in (("database", database), ("schema", schema)) if v}
        if not params:
            params["in_account"] = "true"
        rows = session._transport.call("GET", "/api/v1/models", params=params)
    except NeveError as exc:
        raise fail(exc) from None
    for row in rows:
        row["model"] = ".".join(_quoted(row[k]) for k in ("database_name", "schema_name", "name"))
        row["default"] = row.get("default_version_name")
    print_table(rows, ["model", "default", "versions", "owner", "created_on", "comment"])


def _quoted(name: str) -> str:
    from neve.identifiers import quote

    return quote(name)


@app.command("versions")
def versions(
    ctx: typer.Context,
    model: str,
    database: DatabaseOpt = None,
    schema: SchemaOpt = None,
) -> None:
    """SHOW VERSIONS IN MODEL."""
    from neve.errors import NeveError

    try:
        database, schema, name = _split(model, database, schema)
        frame = _registry(get_session(ctx), database, schema).get_model(name).show_versions()
    except NeveError as exc:
        raise fail(exc) from None
    rows = frame.to_dict("records")
    for row in rows:
        row["default"] = "yes" if row.get("is_default_version") else ""
    print_table(rows, ["name", "default", "aliases", "functions", "target_platforms", "created_on"])


@app.command("show")
def show(
    ctx: typer.Context,
    model: str,
    version: Annotated[
        str | None, typer.Option("--version", "-v", help="Version or alias (default: DEFAULT).")
    ] = None,
    database: DatabaseOpt = None,
    schema: SchemaOpt = None,
) -> None:
    """A version's details: platforms, dependencies, metrics, functions and signatures."""
    from neve.errors import NeveError

    try:
        database, schema, name = _split(model, database, schema)
        m = _registry(get_session(ctx), database, schema).get_model(name)
        mv = m.version(version or "DEFAULT")
        info = mv._describe()
        functions = [{**f, "signature": f["signature"].to_dict()} for f in mv.show_functions()]
    except NeveError as exc:
        raise fail(exc) from None
    console.print(
        f"[bold]{mv.fully_qualified_model_name}[/bold] version [bold]{mv.version_name}[/bold]"
    )
    for key in (
        "model_type",
        "created_on",
        "is_default_version",
        "aliases",
        "comment",
        "target_platforms",
        "platform_reasons",
        "python_version",
        "dependencies",
        "metadata",
        "inference_services",
        "artifact_sha256",
    ):
        console.print(f"  {key}: {cell(info.get(key))}")
    rows = [
        {
            "name": f["name"],
            "target_method": f["target_method"],
            "inputs": ", ".join(_feature(x) for x in f["signature"]["inputs"]),
            "outputs": ", ".join(_feature(x) for x in f["signature"]["outputs"]),
        }
        for f in functions
    ]
    print_table(rows, ["name", "target_method", "inputs", "outputs"], title="functions")


def _feature(spec: dict) -> str:
    shape = f"{spec['shape']}" if spec.get("shape") else ""
    return f"{spec['name']} {spec['type']}{shape}"


@app.command("delete")
def delete(
    ctx: typer.Context,
    model: str,
    version: Annotated[
        str | None, typer.Option("--version", "-v", help="Delete only this version.")
    ] = None,
    database: DatabaseOpt = None,
    schema: SchemaOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a model (every version and its files) or one version."""
    from neve.errors import NeveError

    what = f"version {version} of model {model}" if version else f"model {model}"
    if not yes and not typer.confirm(f"Delete {what}?"):
        raise typer.Exit(code=1)
    try:
        database, schema, name = _split(model, database, schema)
        registry = _registry(get_session(ctx), database, schema)
        if version:
            registry.get_model(name).delete_version(version)
        else:
            registry.delete_model(name)
    except NeveError as exc:
        raise fail(exc) from None
    console.print(f"deleted {what}")
