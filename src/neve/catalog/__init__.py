"""The catalog: every neve object in one metadata store (SQLAlchemy; SQLite or PostgreSQL)."""

from neve.catalog import models
from neve.catalog.store import Catalog

__all__ = ["Catalog", "models"]
