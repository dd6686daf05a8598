"""Moved to ``neve.dataplane.balancer`` (kept importable from here)."""

from neve.dataplane.balancer import Address, LeastOutstanding

__all__ = ["Address", "LeastOutstanding"]
