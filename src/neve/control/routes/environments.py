"""REST routes for image repositories, network rules, external access integrations and builds.

Names are ``db.schema.name`` or relative to the request's current database and schema.

    GET    /api/v1/image-repositories[?database=&schema=&like=]   SHOW IMAGE REPOSITORIES
    POST   /api/v1/image-repositories     {"name", "if_not_exists"?, "comment"?} (201)
    GET    /api/v1/image-repositories/{name}                      DESCRIBE
    DELETE /api/v1/image-repositories/{name}[?if_exists=true]     DROP
    GET    /api/v1/image-repositories/{name}/images[?like=]      SHOW IMAGES IN IMAGE REPOSITORY
    GET    /api/v1/network-rules[?database=&schema=&like=]
    POST   /api/v1/network-rules          {"name", "value_list", "mode"?, "type"?, "comment"?,
                                           "if_not_exists"?} (201)
    GET    /api/v1/network-rules/{name}   DELETE /api/v1/network-rules/{name}[?if_exists=true]
    GET    /api/v1/integrations[?like=]
    POST   /api/v1/integrations           {"name", "allowed_network_rules", "enabled"?,
                                           "comment"?, "if_not_exists"?} (201)
    GET    /api/v1/integrations/{name}    DELETE /api/v1/integrations/{name}[?if_exists=true]
    POST   /api/v1/image-builds           {"model", "version"?, "repo",
                                           "external_access_integrations"?, "force_rebuild"?,
                                           "gpu"?, "timeout_s"?, "pool"?} -> the job (202)
    GET    /api/v1/jobs[?like=]           build jobs
    GET    /api/v1/jobs/{name}            one job: status, reason, timings, image
    GET    /api/v1/jobs/{name}/logs[?last_n=]   {"text": ...}
    POST   /api/v1/jobs/{name}/cancel     stop a running build
"""

from __future__ import annotations

from typing import Any

from starlette.routing import Route

from neve.control.routes._base import Call, body_fields, endpoint, query_flag
from neve.errors import InvalidArgumentError
from neve.kinds import EXTERNAL_ACCESS_INTEGRATION, NETWORK_RULE


def _required(body: dict[str, Any], key: str, what: str) -> Any:
    value = body.pop(key, None)
    if value in (None, ""):
        raise InvalidArgumentError(f"{what}: the field {key!r} is required")
    return value


def _scope(call: Call) -> dict[str, Any]:
    return {
        "in_database": call.query.get("database") or None,
        "in_schema": call.query.get("schema") or None,
        "like": call.query.get("like") or None,
    }


# -- image repositories ---------------------------------------------------------------------------
@endpoint
def show_repositories(call: Call) -> list[dict]:
    return call.account.environments.show_image_repositories(call.ctx, **_scope(call))


@endpoint(status=201)
def create_repository(call: Call) -> dict:
    what = "CREATE IMAGE REPOSITORY"
    body = body_fields(call, {"name", "if_not_exists", "comment"}, what=what)
    name = _required(body, "name", what)
    return call.account.environments.create_image_repository(call.ctx, name, **body)


@endpoint
def describe_repository(call: Call) -> dict:
    return call.account.environments.describe_image_repository(call.ctx, call.path["name"])


@endpoint
def drop_repository(call: Call) -> dict:
    dropped = call.account.environments.drop_image_repository(
        call.ctx, call.path["name"], if_exists=query_flag(call, "if_exists")
    )
    return {"dropped": dropped}


@endpoint
def show_images(call: Call) -> list[dict]:
    return call.account.environments.show_images(
        call.ctx, call.path["name"], like=call.query.get("like") or None
    )


# -- network rules --------------------------------------------------------------------------------
@endpoint
def show_rules(call: Call) -> list[dict]:
    return call.account.environments.show_network_rules(call.ctx, **_scope(call))


@endpoint(status=201)
def create_rule(call: Call) -> dict:
    what = "CREATE NETWORK RULE"
    fields = NETWORK_RULE.body_fields("create", "name", "if_not_exists")
    body = body_fields(call, fields, what=what)
    name = _required(body, "name", what)
    return call.account.environments.create_network_rule(call.ctx, name, **body)


@endpoint
def describe_rule(call: Call) -> dict:
    return call.account.environments.describe_network_rule(call.ctx, call.path["name"])


@endpoint
def drop_rule(call: Call) -> dict:
    dropped = call.account.environments.drop_network_rule(
        call.ctx, call.path["name"], if_exists=query_flag(call, "if_exists")
    )
    return {"dropped": dropped}


# -- integrations ---------------------------------------------------------------------------------
@endpoint
def show_integrations(call: Call) -> list[dict]:
    return call.account.environments.show_external_access_integrations(
        call.ctx, like=call.query.get("like") or None
    )


@endpoint(status=201)
def create_integration(call: Call) -> dict:
    what = "CREATE EXTERNAL ACCESS INTEGRATION"
    fields = EXTERNAL_ACCESS_INTEGRATION.body_fields("create", "name", "if_not_exists")
    body = body_fields(call, fields, what=what)
    name = _required(body, "name", what)
    return call.account.environments.create_external_access_integration(call.ctx, name, **body)


@endpoint
def describe_integration(call: Call) -> dict:
    return call.account.environments.describe_external_access_integration(
        call.ctx, call.path["name"]
    )


@endpoint
def drop_integration(call: Call) -> dict:
    dropped = call.account.environments.drop_external_access_integration(
        call.ctx, call.path["name"], if_exists=query_flag(call, "if_exists")
    )
    return {"dropped": dropped}


# -- builds ---------------------------------------------------------------------------------------
BUILD_FIELDS = {
    "model",
    "version",
    "repo",
    "external_access_integrations",
    "force_rebuild",
    "gpu",
    "timeout_s",
    "pool",
}


@endpoint(status=202)
def start_build(call: Call) -> dict:
    what = "image build"
    body = body_fields(call, BUILD_FIELDS, what=what)
    model = _required(body, "model", what)
    repo = _required(body, "repo", what)
    version = body.pop("version", None)
    integrations = body.pop("external_access_integrations", None) or ()
    if isinstance(integrations, str):
        integrations = [integrations]
    return call.account.environments.build_model_image(
        call.ctx,
        model,
        version,
        repo=repo,
        external_access_integrations=tuple(integrations),
        **body,
    )


@endpoint
def show_jobs(call: Call) -> list[dict]:
    return call.account.environments.show_jobs(call.ctx, like=call.query.get("like") or None)


@endpoint
def get_job(call: Call) -> dict:
    return call.account.environments.get_job(call.ctx, call.path["name"])


@endpoint
def job_logs(call: Call) -> dict:
    raw = call.query.get("last_n")
    try:
        last_n = int(raw) if raw not in (None, "") else None
    except ValueError:
        raise InvalidArgumentError(f"last_n must be an integer, got {raw!r}") from None
    return {"text": call.account.environments.job_logs(call.ctx, call.path["name"], last_n)}


@endpoint
def cancel_job(call: Call) -> dict:
    return call.account.environments.cancel_job(call.ctx, call.path["name"])


routes = [
    Route("/api/v1/image-repositories", show_repositories, methods=["GET"]),
    Route("/api/v1/image-repositories", create_repository, methods=["POST"]),
    Route("/api/v1/image-repositories/{name}", describe_repository, methods=["GET"]),
    Route("/api/v1/image-repositories/{name}", drop_repository, methods=["DELETE"]),
    Route("/api/v1/image-repositories/{name}/images", show_images, methods=["GET"]),
    Route("/api/v1/network-rules", show_rules, methods=["GET"]),
    Route("/api/v1/network-rules", create_rule, methods=["POST"]),
    Route("/api/v1/network-rules/{name}", describe_rule, methods=["GET"]),
    Route("/api/v1/network-rules/{name}", drop_rule, methods=["DELETE"]),
    Route("/api/v1/integrations", show_integrations, methods=["GET"]),
    Route("/api/v1/integrations", create_integration, methods=["POST"]),
    Route("/api/v1/integrations/{name}", describe_integration, methods=["GET"]),
    Route("/api/v1/integrations/{name}", drop_integration, methods=["DELETE"]),
    Route("/api/v1/image-builds", start_build, methods=["POST"]),
    Route("/api/v1/jobs", show_jobs, methods=["GET"]),
    Route("/api/v1/jobs/{name}", get_job, methods=["GET"]),
    Route("/api/v1/jobs/{name}/logs", job_logs, methods=["GET"]),
    Route("/api/v1/jobs/{name}/cancel", cancel_job, methods=["POST"]),
]
