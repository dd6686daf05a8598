"""The Python API the user sees: ``connect``, ``Session``, ``Registry``, ``Model``, ``ModelVersion``."""

from neve.client.results import Row, SqlResult
from neve.client.session import Session, connect

__all__ = ["Row", "Session", "SqlResult", "connect"]
