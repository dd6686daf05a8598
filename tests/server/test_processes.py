"""pid_alive on real processes: running, exited but not reaped (zombie), reaped, invalid."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from neve.server.processes import pid_alive


def test_running_zombie_and_reaped_processes() -> None:
    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert pid_alive(child.pid)
        child.kill()
        deadline = time.monotonic() + 10
        while pid_alive(child.pid):  # exited, not yet reaped: a zombie is not alive
            assert time.monotonic() < deadline, "a killed, unreaped child still counts as alive"
            time.sleep(0.02)
        assert child.poll() is not None  # it was a zombie until now
    finally:
        child.kill()
        child.wait(10)
    assert not pid_alive(child.pid)
    assert not pid_alive(0) and not pid_alive(-1)
