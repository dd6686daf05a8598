"""``stop_account_processes``: stop an account's daemon and everything still working for it.

Service instances, build jobs and ingress proxies outlive the daemon on purpose, so every test
fixture that starts a daemon ends with this (importable from any test module, also under xdist,
where ``from conftest import ...`` may find another directory's conftest).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from neve.client.session import Session


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


@contextmanager
def daemon_session(home: Path, *, settings: str | None = None) -> Iterator[Session]:
    """A real control plane for ``home`` (``settings`` written to its settings.toml first) and
    an admin session on it, with ``NEVE_HOME`` pointing there meanwhile (CLI commands run in
    this process find it). At the end: every service dropped, the daemon and everything still
    working for the account stopped, ``NEVE_HOME`` restored."""
    import neve
    from neve.identifiers import quote

    if settings is not None:
        (home / "settings.toml").write_text(settings)
    saved = os.environ.get("NEVE_HOME")
    os.environ["NEVE_HOME"] = str(home)
    sess = neve.connect(str(home))
    try:
        yield sess
    finally:
        try:
            # Services outlive the daemon on purpose: drop what a failed test left running.
            for row in sess.sql("SHOW SERVICES IN ACCOUNT").collect():
                name = ".".join(quote(row[k]) for k in ("database_name", "schema_name", "name"))
                sess.sql(f"DROP SERVICE IF EXISTS {name}").collect()
            sess.close()
        finally:
            stop_account_processes(home)
            if saved is None:
                os.environ.pop("NEVE_HOME", None)
            else:
                os.environ["NEVE_HOME"] = saved
