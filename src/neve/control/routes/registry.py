"""REST routes of the model registry (``neve.registry.manager.RegistryManager`` over HTTP).

Path segments name objects as identifiers: ``ml`` and ``ML`` are the same database, a
double-quoted segment (``%22My%20Model%22``) keeps its case. ``{v}`` is a version name or alias.

    GET    /api/v1/models[?database=&schema=&in_account=true]   SHOW MODELS (rows)
    GET    /api/v1/models/{db}/{schema}                         SHOW MODELS IN SCHEMA db.schema
    GET    /api/v1/models/{db}/{schema}/{model}                 describe the model (SHOW row)
    PATCH  /api/v1/models/{db}/{schema}/{model}                 {"comment"?, "default_version"?}
    DELETE /api/v1/models/{db}/{schema}/{model}[?if_exists=true]
    GET    /api/v1/models/{db}/{schema}/{model}/tags            {tag: value}
    PUT    /api/v1/models/{db}/{schema}/{model}/tags/{tag}      {"value": v}
    DELETE /api/v1/models/{db}/{schema}/{model}/tags/{tag}
    DELETE /api/v1/models/{db}/{schema}/{model}/aliases/{alias}
    GET    /api/v1/models/{db}/{schema}/{model}/versions        SHOW VERSIONS (rows)
    POST   /api/v1/models/{db}/{schema}/{model}/versions        log a version (body below)
    GET    .../versions/{v}                                     SHOW VERSIONS row + platform_reasons
    PATCH  .../versions/{v}                                     {"comment"}
    DELETE .../versions/{v}
    GET    .../versions/{v}/functions                           show_functions rows
    GET    .../versions/{v}/artifact                            the model directory as tar[.gz]
                                                                (header X-Neve-Artifact-Sha256)
    GET    .../versions/{v}/metrics                             {name: value}
    PUT    .../versions/{v}/metrics                             {"name", "value"}
    DELETE .../versions/{v}/metrics?name=NAME
    PUT    .../versions/{v}/aliases/{alias}

Logging a version: the body is a tar or tar.gz (``application/x-tar`` / ``application/gzip``;
small directories are compressed, large weights are not) holding
``model/`` (the directory ``neve.models.save_model`` wrote in the client's process) and
``request.json``: ``{"version_name", "conda_dependencies", "pip_requirements",
"python_version", "comment", "metrics", "options", "target_platforms", "tags"}`` (all optional).
One archive keeps the metadata and the files in one request, so nothing is half-uploaded.

The caller's role comes from the authentication middleware (``X-Neve-Role`` or the
``X-Neve-Context`` header the session sends), as for every route.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from starlette.responses import Response
from starlette.routing import Route

from neve.context import RequestContext
from neve.control.routes._base import Call, endpoint
from neve.errors import InvalidArgumentError
from neve.identifiers import QualifiedName, ident, quote
from neve.registry import archive

PREFIX = "/api/v1/models"
MODEL = PREFIX + "/{db}/{schema}/{model}"
VERSION = MODEL + "/versions/{version}"
SHA_HEADER = "X-Neve-Artifact-Sha256"
REQUEST_FILE = "request.json"
LOG_FIELDS = {
    "version_name",
    "conda_dependencies",
    "pip_requirements",
    "python_version",
    "comment",
    "metrics",
    "options",
    "target_platforms",
    "tags",
}


def _ctx(call: Call) -> RequestContext:
    # The authentication middleware has applied X-Neve-Role / X-Neve-Context already.
    return call.ctx


def _model(call: Call) -> QualifiedName:
    p = call.path
    return QualifiedName(
        ident(p["db"], kind="database name"),
        ident(p["schema"], kind="schema name"),
        ident(p["model"], kind="model name"),
    )


def _body(call: Call) -> dict[str, Any]:
    if call.body is None:
        return {}
    if not isinstance(call.body, dict):
        raise InvalidArgumentError("request body must be a JSON object")
    return call.body


def _flag(call: Call, name: str) -> bool:
    return call.query.get(name, "").lower() in {"1", "true", "yes"}


# -- models ---------------------------------------------------------------------------------------


@endpoint
def show_models(call: Call) -> list[dict]:
    q = call.query
    return call.account.registry.show_models(
        _ctx(call),
        q.get("database") or call.path.get("db"),
        q.get("schema") or call.path.get("schema"),
        in_account=_flag(call, "in_account"),
    )


@endpoint
def describe_model(call: Call) -> dict:
    return call.account.registry.describe_model(_ctx(call), _model(call))


@endpoint
def alter_model(call: Call) -> dict:
    body = _body(call)
    unknown = set(body) - {"comment", "default_version"}
    if unknown:
        raise InvalidArgumentError(
            f"unknown field(s) {', '.join(sorted(unknown))}; allowed: comment, default_version"
        )
    registry, ctx, qn = call.account.registry, _ctx(call), _model(call)
    if "default_version" in body:
        registry.set_default_version(ctx, qn, str(body["default_version"]))
    if "comment" in body:
        registry.set_model_comment(ctx, qn, body["comment"])
    return registry.describe_model(ctx, qn)


@endpoint
def delete_model(call: Call) -> dict:
    deleted = call.account.registry.delete_model(
        _ctx(call), _model(call), if_exists=_flag(call, "if_exists")
    )
    return {"deleted": deleted}


@endpoint
def show_tags(call: Call) -> dict:
    return call.account.registry.show_tags(_ctx(call), _model(call))


@endpoint
def set_tag(call: Call) -> dict:
    body = _body(call)
    if "value" not in body:
        raise InvalidArgumentError('setting a tag needs {"value": ...}')
    call.account.registry.set_tag(_ctx(call), _model(call), call.path["tag"], body["value"])
    return {"status": "ok"}


@endpoint
def unset_tag(call: Call) -> dict:
    call.account.registry.unset_tag(_ctx(call), _model(call), call.path["tag"])
    return {"status": "ok"}


@endpoint
def unset_alias(call: Call) -> dict:
    call.account.registry.unset_alias(_ctx(call), _model(call), call.path["alias"])
    return {"status": "ok"}


# -- versions -------------------------------------------------------------------------------------


@endpoint
def show_versions(call: Call) -> list[dict]:
    return call.account.registry.show_versions(_ctx(call), _model(call))


@endpoint(raw_body=True, status=201)
def log_version(call: Call) -> dict:
    if not call.raw:
        raise InvalidArgumentError(
            "logging a model version needs a tar body with model/ and request.json"
        )
    account = call.account
    ctx, qn = _ctx(call), _model(call)
    work = archive.unpack_temp(
        call.raw, account.settings.home / "tmp" / "uploads", what="model upload"
    )
    try:
        request = _log_request(work)
        model_dir = work / "model"
        if not model_dir.is_dir():
            raise InvalidArgumentError("model upload has no model/ directory")
        return account.registry.log_model(
            ctx,
            quote(qn.database),  # the manager parses names: hand it identifiers, not values
            quote(qn.schema),
            quote(qn.name),
            request.get("version_name"),
            model_dir,
            conda_dependencies=request.get("conda_dependencies"),
            pip_requirements=request.get("pip_requirements"),
            python_version=request.get("python_version"),
            comment=request.get("comment"),
            metrics=request.get("metrics"),
            options=request.get("options"),
            target_platforms=request.get("target_platforms"),
            tags=request.get("tags"),
            move_files=True,
        )
    finally:
        shutil.rmtree(work.parent, ignore_errors=True)


def _log_request(work: Path) -> dict:
    file = work / REQUEST_FILE
    if not file.is_file():
        return {}
    try:
        request = json.loads(file.read_text())
    except ValueError as exc:
        raise InvalidArgumentError(
            f"model upload: {REQUEST_FILE} is not valid JSON: {exc}"
        ) from None
    if not isinstance(request, dict):
        raise InvalidArgumentError(f"model upload: {REQUEST_FILE} must hold a JSON object")
    unknown = set(request) - LOG_FIELDS
    if unknown:
        raise InvalidArgumentError(
            f"model upload: unknown field(s) {', '.join(sorted(unknown))}; allowed: "
            f"{', '.join(sorted(LOG_FIELDS))}"
        )
    return request


@endpoint
def describe_version(call: Call) -> dict:
    return call.account.registry.describe_version(_ctx(call), _model(call), call.path["version"])


@endpoint
def alter_version(call: Call) -> dict:
    body = _body(call)
    unknown = set(body) - {"comment"}
    if unknown:
        raise InvalidArgumentError(
            f"unknown field(s) {', '.join(sorted(unknown))}; allowed: comment"
        )
    registry, ctx, qn = call.account.registry, _ctx(call), _model(call)
    if "comment" in body:
        registry.set_version_comment(ctx, qn, call.path["version"], body["comment"])
    return registry.describe_version(ctx, qn, call.path["version"])


@endpoint
def delete_version(call: Call) -> dict:
    call.account.registry.delete_version(_ctx(call), _model(call), call.path["version"])
    return {"deleted": True}


@endpoint
def show_functions(call: Call) -> list[dict]:
    return call.account.registry.show_functions(_ctx(call), _model(call), call.path["version"])


@endpoint
def download_artifact(call: Call) -> Response:
    registry, ctx, qn = call.account.registry, _ctx(call), _model(call)
    info = registry.describe_version(ctx, qn, call.path["version"])
    directory = registry.version_dir(ctx, qn, info["name"])
    body, media_type = archive.pack_bytes(directory)
    return Response(body, media_type=media_type, headers={SHA_HEADER: info["artifact_sha256"]})


@endpoint
def show_metrics(call: Call) -> dict:
    return call.account.registry.show_metrics(_ctx(call), _model(call), call.path["version"])


@endpoint
def set_metric(call: Call) -> dict:
    body = _body(call)
    if "name" not in body or "value" not in body:
        raise InvalidArgumentError('setting a metric needs {"name": ..., "value": ...}')
    call.account.registry.set_metric(
        _ctx(call), _model(call), call.path["version"], body["name"], body["value"]
    )
    return {"status": "ok"}


@endpoint
def delete_metric(call: Call) -> dict:
    name = call.query.get("name")
    if not name:
        raise InvalidArgumentError("deleting a metric needs ?name=NAME")
    call.account.registry.delete_metric(_ctx(call), _model(call), call.path["version"], name)
    return {"status": "ok"}


@endpoint
def set_alias(call: Call) -> dict:
    call.account.registry.set_alias(
        _ctx(call), _model(call), call.path["version"], call.path["alias"]
    )
    return {"status": "ok"}


routes = [
    Route(PREFIX, show_models, methods=["GET"]),
    Route(PREFIX + "/{db}/{schema}", show_models, methods=["GET"]),
    Route(MODEL, describe_model, methods=["GET"]),
    Route(MODEL, alter_model, methods=["PATCH"]),
    Route(MODEL, delete_model, methods=["DELETE"]),
    Route(MODEL + "/tags", show_tags, methods=["GET"]),
    Route(MODEL + "/tags/{tag}", set_tag, methods=["PUT"]),
    Route(MODEL + "/tags/{tag}", unset_tag, methods=["DELETE"]),
    Route(MODEL + "/aliases/{alias}", unset_alias, methods=["DELETE"]),
    Route(MODEL + "/versions", show_versions, methods=["GET"]),
    Route(MODEL + "/versions", log_version, methods=["POST"]),
    Route(VERSION, describe_version, methods=["GET"]),
    Route(VERSION, alter_version, methods=["PATCH"]),
    Route(VERSION, delete_version, methods=["DELETE"]),
    Route(VERSION + "/functions", show_functions, methods=["GET"]),
    Route(VERSION + "/artifact", download_artifact, methods=["GET"]),
    Route(VERSION + "/metrics", show_metrics, methods=["GET"]),
    Route(VERSION + "/metrics", set_metric, methods=["PUT"]),
    Route(VERSION + "/metrics", delete_metric, methods=["DELETE"]),
    Route(VERSION + "/aliases/{alias}", set_alias, methods=["PUT"]),
]
