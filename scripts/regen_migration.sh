#!/usr/bin/env bash
# Regenerate the catalog's initial Alembic migration from src/neve/catalog/models.py.
# Until the first release there is one migration; this keeps it equal to the models.
# Serialized with flock so concurrent callers do not clobber each other.
set -euo pipefail
cd "$(dirname "$0")/.."
exec 9>/tmp/neve-regen-migration.lock
flock 9
rm -f src/neve/catalog/migrations/versions/*.py
.venv/bin/python scripts/new_migration.py "initial catalog" >/dev/null
.venv/bin/ruff format -q src/neve/catalog/migrations/versions || true
echo "migration regenerated: $(ls src/neve/catalog/migrations/versions)"
