"""Alembic migrations, run programmatically (no alembic.ini needed).

Revisions form one chain (``migrations/versions``), and a revision that has shipped is never
rewritten: a schema change adds a revision on top (``scripts/new_migration.py "message"``).
``migrations/SHIPPED`` records each shipped revision's file hash, and the test suite refuses a
rewritten one, so every catalog a released neve made can be upgraded by every later one.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from neve.errors import InvalidStateError

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the catalog to ``revision``; a catalog stamped with a revision this version does
    not know (made by a newer neve, or by a development build) is refused with a clear error
    instead of Alembic's "Can't locate revision"."""
    cfg = alembic_config(engine)
    known = {rev.revision for rev in ScriptDirectory.from_config(cfg).walk_revisions()}
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_heads()
    unknown = sorted(set(current) - known)
    if unknown:
        raise InvalidStateError(
            f"catalog {engine.url.render_as_string(hide_password=True)} is at revision "
            f"{', '.join(unknown)}, which this neve version does not know (its newest is "
            f"{ScriptDirectory.from_config(cfg).get_current_head()}): it was made by a newer "
            "neve or a development build; open it with that version, or start a new catalog"
        )
    command.upgrade(cfg, revision)
