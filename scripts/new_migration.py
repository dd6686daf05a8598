"""Autogenerate a catalog migration from the SQLAlchemy models: python scripts/new_migration.py "msg"."""

import hashlib
import sys
import tempfile
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine

from neve.catalog.migrate import alembic_config, upgrade

with tempfile.TemporaryDirectory() as tmp:
    engine = create_engine(f"sqlite:///{Path(tmp) / 'c.db'}")
    upgrade(engine)
    script = command.revision(alembic_config(engine), message=sys.argv[1], autogenerate=True)

# Shipped revisions are never rewritten (neve.catalog.migrate): record this one's hash.
path = Path(script.path)
digest = hashlib.sha256(path.read_bytes()).hexdigest()
with (path.parent.parent / "SHIPPED").open("a") as fh:
    fh.write(f"{script.revision} {digest}\n")
print(f"new revision {script.revision} ({path.name}), recorded in migrations/SHIPPED")
