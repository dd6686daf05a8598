"""Service and instance statuses, and which transitions each operation makes.

Service: PENDING -> BUILDING -> STARTING -> RUNNING <-> SUSPENDING -> SUSPENDED -> STARTING ...
FAILED (with ``status_reason``) from any of them; DELETING while DROP SERVICE stops processes.
Instance: PENDING (not placed / waiting) -> STARTING (process launched) -> READY (``/ready``
answered) ; FAILED (exited or unhealthy, restart scheduled with backoff).
"""

from __future__ import annotations

PENDING = "PENDING"
BUILDING = "BUILDING"
STARTING = "STARTING"
RUNNING = "RUNNING"
SUSPENDING = "SUSPENDING"
SUSPENDED = "SUSPENDED"
FAILED = "FAILED"
DELETING = "DELETING"

SERVICE_STATUSES = (
    PENDING,
    BUILDING,
    STARTING,
    RUNNING,
    SUSPENDING,
    SUSPENDED,
    FAILED,
    DELETING,
)
#: Statuses in which the service should have processes (the supervisor keeps them healthy).
ACTIVE = frozenset({STARTING, RUNNING})
#: Statuses in which a call may resume the service.
RESUMABLE = frozenset({SUSPENDED, SUSPENDING})
#: Statuses a ``block=True`` create waits through.
IN_PROGRESS = frozenset({PENDING, BUILDING, STARTING})

INSTANCE_PENDING = "PENDING"
INSTANCE_STARTING = "STARTING"
INSTANCE_READY = "READY"
INSTANCE_FAILED = "FAILED"
INSTANCE_STATUSES = (INSTANCE_PENDING, INSTANCE_STARTING, INSTANCE_READY, INSTANCE_FAILED)
