"""Autogenerate a catalog migration from the SQLAlchemy models: python scripts/new_migration.py "msg"."""

import sys
import tempfile
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine

from neve.catalog.migrate import alembic_config, upgrade

with tempfile.TemporaryDirectory() as tmp:
    engine = create_engine(f"sqlite:///{Path(tmp) / 'c.db'}")
    upgrade(engine)
    command.revision(alembic_config(engine), message=sys.argv[1], autogenerate=True)
