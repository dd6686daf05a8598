"""The worker supervisor: uvicorn's multi-process supervisor with one listening socket per worker.

uvicorn's own supervisor shares one listening socket among all workers. With asyncio every
worker wakes up for a new connection and the first one accepts *all* pending connections, so a
burst of keep-alive clients (a load balancer's pool, a benchmark) lands on a single worker while
the others idle. Here every worker gets its own ``SO_REUSEPORT`` socket on the same port and
the kernel spreads new connections over the workers that are listening.

The supervisor binds each worker's socket but never listens on it: the worker starts listening
only after its model has loaded, so a connection never waits for a loading worker, and when a
worker dies its socket closes with it and leaves the group (the supervisor keeps no copy).
A bound, non-listening "anchor" socket holds the port while workers come and go.

Restarting dead workers, stopping on a worker's startup failure and the signal handling are
uvicorn's (``uvicorn.supervisors.Multiprocess``); only how a worker process is created differs.
"""

from __future__ import annotations

import logging
import socket
import sys

from uvicorn.config import Config
from uvicorn.supervisors.multiprocess import Multiprocess, Process

STARTUP_FAILURE = 3  # uvicorn's exit status for a worker that could not start
logger = logging.getLogger("uvicorn.error")

REUSE_PORT = hasattr(socket, "SO_REUSEPORT") and sys.platform.startswith("linux")


def bind_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not listening yet).

    Created with ``proto=IPPROTO_TCP`` (uvicorn's own ``bind_socket`` passes 0): asyncio sets
    TCP_NODELAY only on accepted sockets whose ``proto`` says TCP, and without it every
    response written in two parts (headers, body) waits ~40 ms for the client's delayed ACK.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def bind_anchor(host: str, port: int) -> socket.socket:
    """The socket that holds the server's port (a free one for ``port=0``).

    Binding first without ``SO_REUSEPORT`` proves the port is not in use: two servers started
    on one fixed port must fail, not silently share connections through ``SO_REUSEPORT``.
    """
    probe = bind_socket(host, port, reuse_port=False)
    port = probe.getsockname()[1]
    if not REUSE_PORT:
        return probe
    probe.close()
    return bind_socket(host, port, reuse_port=True)


class ReusePortSupervisor(Multiprocess):
    """``Multiprocess`` whose every worker listens on a socket of its own (see module doc)."""

    def __init__(self, config: Config, anchor: socket.socket) -> None:
        super().__init__(config, sockets=[])
        self.anchor = anchor
        self.host, self.port = anchor.getsockname()[:2]

    def spawn(self) -> Process:
        sock = bind_socket(self.host, self.port, reuse_port=True)
        try:
            process = Process(self.config, [sock])
            process.start()
        finally:
            sock.close()  # the worker holds its own copy; the socket dies with the worker
        return process

    def init_processes(self) -> None:
        for _ in range(self.processes_num):
            self.processes.append(self.spawn())

    def keep_subprocess_alive(self) -> None:
        # uvicorn's loop, with spawn() for the replacement
        if self.should_exit.is_set():
            return
        for idx, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                logger.error(f"Child process [{process.pid}] failed to start, stopping.")
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            logger.info(f"Child process [{process.pid}] died")
            self.processes[idx] = self.spawn()

    def restart_all(self) -> None:
        # SIGHUP: bring each replacement up before retiring the worker it replaces
        for idx, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = self.spawn()
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                new.kill()
                new.join()
                logger.error(f"New child process [{new.pid}] was not ready; aborting the restart.")
                return
            old.terminate()
            old.join()
            self.processes[idx] = new

    def handle_ttin(self) -> None:
        logger.info("Received SIGTTIN, increasing the number of processes.")
        self.processes_num += 1
        self.processes.append(self.spawn())

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.anchor.close()


def failed_to_start(supervisor: Multiprocess) -> bool:
    """Whether the supervisor stopped because a worker could not start."""
    return any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes)
