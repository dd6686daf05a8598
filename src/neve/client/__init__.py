"""The Python API the user sees: ``connect``, ``Session``, ``Registry``, ``Model``, ``ModelVersion``."""

from neve.client.session import Row, Session, SqlResult, connect

__all__ = ["Row", "Session", "SqlResult", "connect"]
