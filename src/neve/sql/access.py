"""Which neve schemas a role may read and write in the warehouse.

Tables carry no privileges of their own: reading a schema's tables and views needs USAGE on its
database and on the schema; changing them (INSERT, UPDATE, DELETE, CREATE, DROP, ALTER, and
writes from Python) needs CREATE TABLE on the schema. A query instance attaches exactly these
schemas (``neve.sql.warehouse``), so this is the whole of what a statement can reach.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from neve.catalog import models as m
from neve.context import RequestContext

if TYPE_CHECKING:
    from neve.security.manager import SecurityManager

READ = "USAGE"
WRITE = "CREATE TABLE"


@dataclass
class SchemaAccess:
    read: set[tuple[str, str]] = field(default_factory=set)
    write: set[tuple[str, str]] = field(default_factory=set)


def schema_access(security: SecurityManager, s: Session, ctx: RequestContext) -> SchemaAccess:
    """Every (database, schema) the role of ``ctx`` may read, and those it may write."""
    access = SchemaAccess()
    for sch, db in s.execute(select(m.Schema, m.Database).join(m.Database)):
        key = (db.name, sch.name)
        if security.has_privilege(s, ctx, READ, sch):
            access.read.add(key)
            if security.has_privilege(s, ctx, WRITE, sch):
                access.write.add(key)
    return access
