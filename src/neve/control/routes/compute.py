"""REST routes for compute pools.

GET    /api/v1/compute-pools[?like=]          SHOW COMPUTE POOLS rows
POST   /api/v1/compute-pools                  CREATE COMPUTE POOL {"name", "instance_family",
                                              "min_nodes"?, "max_nodes"?, "auto_resume"?,
                                              "auto_suspend_secs"?, "initially_suspended"?,
                                              "backend"?, "address"?, "comment"?,
                                              "if_not_exists"?} -> DESCRIBE row (201)
GET    /api/v1/compute-pools/{name}           DESCRIBE COMPUTE POOL (with nodes)
PATCH  /api/v1/compute-pools/{name}           ALTER: {"suspend": true} | {"resume": true} |
                                              {"stop_all": true} | {"min_nodes", "max_nodes",
                                              "auto_resume", "auto_suspend_secs", "comment"}
DELETE /api/v1/compute-pools/{name}[?if_exists=true]   DROP COMPUTE POOL
GET    /api/v1/instance-families              the instance family table
"""

from __future__ import annotations

from starlette.routing import Route

from neve.compute.families import FAMILIES
from neve.control.routes._base import Call, body_fields, endpoint, query_flag
from neve.errors import InvalidArgumentError
from neve.kinds import COMPUTE_POOL

CREATE_FIELDS = COMPUTE_POOL.body_fields("create", "name", "if_not_exists")
ALTER_FIELDS = COMPUTE_POOL.body_fields("alter", "suspend", "resume", "stop_all", "if_exists")


@endpoint
def show_pools(call: Call) -> list[dict]:
    return call.account.compute.show_pools(call.ctx, like=call.query.get("like") or None)


@endpoint(status=201)
def create_pool(call: Call) -> dict:
    body = body_fields(call, CREATE_FIELDS, what="CREATE COMPUTE POOL")
    if not body.get("name"):
        raise InvalidArgumentError("CREATE COMPUTE POOL: the field 'name' is required")
    name = body.pop("name")
    return call.account.compute.create_pool(call.ctx, name, **body)


@endpoint
def describe_pool(call: Call) -> dict:
    return call.account.compute.describe_pool(call.ctx, call.path["name"])


@endpoint
def alter_pool(call: Call) -> dict | None:
    body = body_fields(call, ALTER_FIELDS, what="ALTER COMPUTE POOL")
    return call.account.compute.alter_pool(call.ctx, call.path["name"], **body)


@endpoint
def drop_pool(call: Call) -> dict:
    dropped = call.account.compute.drop_pool(
        call.ctx, call.path["name"], if_exists=query_flag(call, "if_exists")
    )
    return {"dropped": dropped}


@endpoint
def show_families(call: Call) -> list[dict]:
    return [family.to_dict() for family in FAMILIES.values()]


routes = [
    Route("/api/v1/compute-pools", show_pools, methods=["GET"]),
    Route("/api/v1/compute-pools", create_pool, methods=["POST"]),
    Route("/api/v1/compute-pools/{name}", describe_pool, methods=["GET"]),
    Route("/api/v1/compute-pools/{name}", alter_pool, methods=["PATCH"]),
    Route("/api/v1/compute-pools/{name}", drop_pool, methods=["DELETE"]),
    Route("/api/v1/instance-families", show_families, methods=["GET"]),
]
