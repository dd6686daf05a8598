"""``stop_account_processes``: stop an account's daemon and everything still working for it.

Service instances, build jobs and ingress proxies outlive the daemon on purpose, so every test
fixture that starts a daemon ends with this (importable from any test module, also under xdist,
where ``from conftest import ...`` may find another directory's conftest).
"""

from __future__ import annotations

import os
from pathlib import Path


def stop_account_processes(home: Path, timeout_s: float = 20.0) -> None:
    """Stop the control plane of ``home`` and kill any process still working for that account
    (service instances and build jobs are detached on purpose, so a failed test could leave
    them behind). Use it in the teardown of every fixture that starts a daemon."""
    import psutil

    from neve.control import daemon

    home = Path(home).resolve()
    daemon.stop(home, timeout_s=timeout_s)
    needle = str(home) + os.sep  # "/x/home-1/" must not match "/x/home-10"
    me = os.getpid()
    leftovers = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.info["pid"] == me:
            continue
        try:
            mine = any(needle in part + os.sep for part in proc.info["cmdline"] or []) or (
                (proc.environ().get("NEVE_HOME", "") + os.sep).startswith(needle)
            )
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if mine:
            leftovers.append(proc)
    for proc in leftovers:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(leftovers, timeout=10)
