"""REST routes of the model registry (``neve.registry.manager.RegistryManager`` over HTTP).

Path segments name objects as identifiers: ``ml`` and ``ML`` are the same database, a
double-quoted segment (``%22My%20Model%22``) keeps its case. ``{v}`` is a version name or alias.

    GET    /api/v1/models[?database=&schema=&in_account=true]   SHOW MODELS (rows)
    GET    /api/v1/models/{db}/{schema}                         SHOW MODELS IN SCHEMA db.schema
    GET    /api/v1/models/{db}/{schema}/{model}                 describe the model (SHOW row)
    PATCH  /api/v1/models/{db}/{schema}/{model}                 {"comment"?, "default_version"?,
                                                                 "name"? (rename)}
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
The body is streamed to a temporary file under ``<NEVE_HOME>/tmp/uploads`` (daemon memory
stays flat whatever the model's size), at most ``max_model_upload_bytes`` (settings; a larger
``Content-Length`` is refused before any byte is read, a longer chunked body as soon as it
passes the limit: 413). With ``X-Neve-Upload-Sha256`` (hex SHA-256 of the archive bytes) a
body that arrives different is refused (400). The temporary files are removed whatever happens.
Names and privileges are checked before the body is read (a caller who may not log the version
is answered 403 at once, not after the upload); the daemon removes uploads a crash left behind
when it starts.
Downloads (``.../artifact``) stream the tar as it is produced.

The caller's role comes from the authentication middleware (``X-Neve-Role`` or the
``X-Neve-Context`` header the session sends), as for every route.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from neve import kinds
from neve.config import Settings
from neve.context import RequestContext
from neve.control.routes._base import (
    Call,
    body_fields,
    endpoint,
    error_response,
    json_body,
    json_response,
    query_flag,
    refusal_response,
)
from neve.errors import InvalidArgumentError, NeveError, PayloadTooLargeError
from neve.identifiers import QualifiedName, ident, quote
from neve.registry import archive

PREFIX = "/api/v1/models"
MODEL = PREFIX + "/{db}/{schema}/{model}"
VERSION = MODEL + "/versions/{version}"
SHA_HEADER = "X-Neve-Artifact-Sha256"
UPLOAD_SHA_HEADER = "X-Neve-Upload-Sha256"
UPLOAD_DIR = "tmp/uploads"  # under the account directory
ARCHIVE_FILE = "upload.tar"
#: Received body bytes are hashed and written in batches of this size, off the event loop.
WRITE_BATCH_BYTES = 1024 * 1024
_HEX_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _ctx(call: Call) -> RequestContext:
    # The authentication middleware has applied X-Neve-Role / X-Neve-Context already.
    return call.ctx


def _model(call: Call) -> QualifiedName:
    return _model_name(call.path)


def _model_name(p: dict[str, Any]) -> QualifiedName:
    return QualifiedName(
        ident(p["db"], kind="database name"),
        ident(p["schema"], kind="schema name"),
        ident(p["model"], kind="model name"),
    )


# -- models ---------------------------------------------------------------------------------------


@endpoint
def show_models(call: Call) -> list[dict]:
    q = call.query
    return call.account.registry.show_models(
        _ctx(call),
        q.get("database") or call.path.get("db"),
        q.get("schema") or call.path.get("schema"),
        in_account=query_flag(call, "in_account"),
    )


@endpoint
def describe_model(call: Call) -> dict:
    return call.account.registry.describe_model(_ctx(call), _model(call))


@endpoint
def alter_model(call: Call) -> dict:
    body = body_fields(call, kinds.MODEL.body_fields("alter", "name"), what="ALTER MODEL")
    registry, ctx, qn = call.account.registry, _ctx(call), _model(call)
    if "name" in body:
        row = registry.rename_model(ctx, qn, str(body["name"]))
        qn = QualifiedName(qn.database, qn.schema, row["name"])
    if "default_version" in body:
        registry.set_default_version(ctx, qn, str(body["default_version"]))
    if "comment" in body:
        registry.set_model_comment(ctx, qn, body["comment"])
    return registry.describe_model(ctx, qn)


@endpoint
def delete_model(call: Call) -> dict:
    deleted = call.account.registry.delete_model(
        _ctx(call), _model(call), if_exists=query_flag(call, "if_exists")
    )
    return {"deleted": deleted}


@endpoint
def show_tags(call: Call) -> dict:
    return call.account.registry.show_tags(_ctx(call), _model(call))


@endpoint
def set_tag(call: Call) -> dict:
    body = json_body(call)
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


async def log_version(request: Request) -> Response:
    """Log a model version from a streamed tar[.gz] body (model/ and request.json)."""
    account = request.app.state.account
    ctx: RequestContext = request.state.ctx
    try:
        qn = _model_name(request.path_params)
        # names and privileges first: a refused caller does not send the body for nothing
        await run_in_threadpool(
            account.registry.check_can_log,
            ctx,
            quote(qn.database),
            quote(qn.schema),
            quote(qn.name),
        )
        work = await _receive_upload(request, account.settings, f"model {qn}")
    except NeveError as err:
        return refusal_response(err)
    except ClientDisconnect:  # the client is gone; _receive_upload removed what it wrote
        return Response(status_code=400)
    try:
        row = await run_in_threadpool(
            account.registry.log_model_archive,
            ctx,
            quote(qn.database),  # the manager parses names: hand it identifiers, not values
            quote(qn.schema),
            quote(qn.name),
            work / ARCHIVE_FILE,
            max_unpacked_bytes=account.settings.control.max_model_upload_bytes,
        )
    except NeveError as err:
        return error_response(err)
    finally:
        await run_in_threadpool(shutil.rmtree, work, True)
    return json_response(row, status=201)


def remove_stale_uploads(home: Path) -> int:
    """Remove what a killed daemon left half-received in ``<home>/tmp/uploads`` (call it holding
    the account's daemon lock: only the lock holder writes there); return how many uploads."""
    uploads = home / UPLOAD_DIR
    stale = len(list(uploads.iterdir())) if uploads.is_dir() else 0
    if stale:
        shutil.rmtree(uploads, ignore_errors=True)
    return stale


def _too_large(label: str, limit: int, size: int | None = None) -> PayloadTooLargeError:
    what = f"is {archive.format_bytes(size)}, over" if size is not None else "is larger than"
    return PayloadTooLargeError(
        f"upload of {label} {what} the account's limit of {archive.format_bytes(limit)}; an "
        "administrator can raise it with max_model_upload_bytes in settings.toml"
    )


async def _receive_upload(request: Request, settings: Settings, label: str) -> Path:
    """Stream the request body into ``<home>/tmp/uploads/upload-*/upload.tar``; return that
    directory (the caller removes it). Size limit and checksum are checked on the way; on any
    failure nothing is left behind."""
    limit = int(settings.control.max_model_upload_bytes)
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidArgumentError(f"invalid Content-Length {declared!r}")
        if int(declared) > limit:  # refused before reading a byte
            raise _too_large(label, limit, int(declared))
    expected = request.headers.get(UPLOAD_SHA_HEADER)
    if expected is not None:
        expected = expected.strip().lower()
        if not _HEX_SHA256.match(expected):
            raise InvalidArgumentError(
                f"{UPLOAD_SHA_HEADER} must be 64 hex digits (SHA-256), got {expected[:80]!r}"
            )
    parent = settings.home / UPLOAD_DIR
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="upload-", dir=parent))
    try:
        size, digest = await _write_body(request, work / ARCHIVE_FILE, limit, label)
        if size == 0:
            raise InvalidArgumentError(
                f"logging a version of {label} needs a tar body with model/ and request.json"
            )
        if expected is not None and digest != expected:
            raise InvalidArgumentError(
                f"upload of {label} arrived damaged: its SHA-256 is {digest}, the client sent "
                f"{expected} ({UPLOAD_SHA_HEADER}); send it again"
            )
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return work


async def _write_body(request: Request, path: Path, limit: int, label: str) -> tuple[int, str]:
    """Write the body to ``path`` in batches (disk and hashing in a worker thread); return its
    size and SHA-256. Past ``limit`` bytes: 413 without reading the rest."""
    sha = hashlib.sha256()
    size = 0
    batch: list[bytes] = []
    batch_len = 0
    with path.open("wb") as fh:
        async for chunk in request.stream():
            if not chunk:
                continue
            size += len(chunk)
            if size > limit:
                raise _too_large(label, limit)
            batch.append(chunk)
            batch_len += len(chunk)
            if batch_len >= WRITE_BATCH_BYTES:
                await run_in_threadpool(_write_batch, fh, sha, batch)
                batch, batch_len = [], 0
        if batch:
            await run_in_threadpool(_write_batch, fh, sha, batch)
    return size, sha.hexdigest()


def _write_batch(fh: IO[bytes], sha: Any, batch: list[bytes]) -> None:
    for chunk in batch:
        sha.update(chunk)
        fh.write(chunk)


@endpoint
def describe_version(call: Call) -> dict:
    return call.account.registry.describe_version(_ctx(call), _model(call), call.path["version"])


@endpoint
def alter_version(call: Call) -> dict:
    body = body_fields(call, {"comment"}, what="ALTER MODEL ... VERSION")
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
    directory = registry.version_dir(ctx, qn, quote(info["name"]))  # a name, not SQL text
    compress = archive.should_compress(directory)
    # produced chunk by chunk as the client reads (starlette iterates it in a worker thread)
    return StreamingResponse(
        archive.iter_pack(directory, compress=compress),
        media_type=archive.media_type(compress),
        headers={SHA_HEADER: info["artifact_sha256"]},
    )


@endpoint
def show_metrics(call: Call) -> dict:
    return call.account.registry.show_metrics(_ctx(call), _model(call), call.path["version"])


@endpoint
def set_metric(call: Call) -> dict:
    body = json_body(call)
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
