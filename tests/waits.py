"""``wait_for``: poll a condition until it holds, or fail naming what was awaited.

One helper for every test that waits on real processes (instances starting, nodes lost,
supervisors restarting things). It returns the predicate's first truthy value, so a test can
wait for and use a result in one step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    what: str = "the condition",
    *,
    interval: float = 0.1,
    detail: Callable[[], object] | None = None,
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something truthy and
    return that; after ``timeout`` seconds raise ``AssertionError`` naming ``what`` (and
    ``detail()``, evaluated only then, e.g. the processes still running)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f": {detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{extra}")
        time.sleep(interval)
