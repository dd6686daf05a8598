"""The Ray actor that runs one inference-server instance on a Ray node (this code runs ON the node).

Each service instance is one detached, named actor. The actor does not serve requests itself: it
starts ``<image python> -m neve.server --model-dir ... --port 0`` on its node, reports where the
server listens, and watches it. Clients (the gateway, SQL service functions, ``mv.run``) talk to
the server over HTTP exactly as on the ``local`` backend; Ray only decides where the instance
runs, reserves its CPUs / GPUs / memory there and tells the control plane whether it still runs.

This module imports only the standard library and ``ray_trees`` (Ray is imported inside the
methods that run in a Ray worker). The backend registers both to be pickled *by value*, so nodes
need neither neve nor any of the control plane's packages: the image environment brings
``neve.server``.

Model environments on nodes: every path the server needs (the image venv, directories its
``.pth`` files point to, the model directory) is a *tree* with a fingerprint. ``prepare()``
answers which trees this node lacks: a tree is used in place when the node has it at the same
path with the same fingerprint (one machine, a shared filesystem, or nodes built from one machine
image); otherwise the backend ships it (a tar in the object store, once per content) and
``start()`` unpacks it into the node's cache, keyed by its content key, rewriting absolute paths
in ``.pth`` files to the unpacked copies.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

# By name (not the module): the backend pickles this module and that one by value, so these
# travel with the actor class to nodes that have no neve installed.
from neve.compute.backends.ray_trees import (
    COMPLETE_MARKER,
    rewrite_pth_files,
    site_dirs,
    tree_fingerprint,
)

#: Variables of the launching process (control plane or Ray worker) that must not leak into an
#: image's python: they would make it import the launcher's packages instead of the image's.
SCRUBBED_ENV = (
    "PYTHONPATH",
    "PYTHONHOME",
    "VIRTUAL_ENV",
    "PYTHONSTARTUP",
    "PROMETHEUS_MULTIPROC_DIR",
    # Instances write the bytecode caches of their image, so only an image's first start
    # compiles numpy, pandas, the framework... (a worker imports in ~1.9 s instead of ~6.6 s).
    "PYTHONDONTWRITEBYTECODE",
)
#: The control plane's own settings and credentials (NEVE_HOME, NEVE_CATALOG_URL, NEVE_TOKEN,
#: NEVE_PASSWORD, ...) are not the model's business: an instance runs user code and must not
#: learn how to reach the catalog or act as the caller. It gets only the NEVE_* its launcher sets.
SCRUBBED_PREFIX = "NEVE_"


#: An instance's log is rotated when it starts with more than this (one older file is kept), so
#: a service that restarts for weeks does not fill the disk.
LOG_ROTATE_BYTES = 64 * 1024 * 1024


def rotate_log(path: Path, max_bytes: int = LOG_ROTATE_BYTES) -> bool:
    """Move ``path`` to ``path.1`` (replacing it) when it is over ``max_bytes``; True if moved."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
        os.replace(path, path.with_name(path.name + ".1"))
    except OSError:  # missing or unreadable: nothing to rotate
        return False
    return True


def instance_environment(environ: dict[str, str] | os._Environ) -> dict[str, str]:
    """The environment an instance's server starts from: the launcher's, scrubbed."""
    return {
        k: v
        for k, v in environ.items()
        if k not in SCRUBBED_ENV and not k.startswith(SCRUBBED_PREFIX)
    }


#: Runs in the image's python before ``neve.server``: the server gets SIGTERM when the actor's
#: process dies (node lost, actor killed), so no server outlives its actor; then exec.
LAUNCHER = (
    "import ctypes,os,signal,sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGTERM)\n"  # PR_SET_PDEATHSIG
    "if os.getppid() != int(sys.argv[1]): sys.exit(70)\n"  # the actor died before prctl
    "os.execv(sys.executable, [sys.executable] + sys.argv[2:])\n"
)


# -- the actor ------------------------------------------------------------------------------------
class _WatchedProcess:
    """What both actors share: one child process started from a long-lived thread (its
    ``PR_SET_PDEATHSIG`` follows the thread that forked it), its exit code, its log."""

    log_path: Path
    _lock: threading.Lock
    _process: subprocess.Popen[bytes] | None
    _spawned: threading.Event
    _exit_code: int | None

    def _run_watched(self, cmd: list[str], env: dict[str, str], cwd: Path, what: str) -> None:
        try:
            with open(self.log_path, "ab") as log:
                try:
                    process = subprocess.Popen(
                        cmd,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=str(cwd),  # never a source tree: `-m` puts cwd on sys.path
                        start_new_session=True,  # own process group: stop() reaches it all
                    )
                except OSError as exc:
                    log.write(f"neve: cannot start {what}: {exc}\n".encode())
                    self._exit_code = 127
                    return
            with self._lock:
                self._process = process
            self._spawned.set()
            self._exit_code = process.wait()
        finally:
            self._spawned.set()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class InstanceActor(_WatchedProcess):
    """One service instance on one Ray node: prepares its environment, runs and watches the server.

    ``config`` (built by the backend): ``service``, ``instance``, ``argv`` (server arguments after
    ``-m neve.server``, with ``{model_dir}`` and ``{port_file}`` placeholders), ``python`` and
    ``model_dir`` (paths on the control plane), ``trees`` (``{path: {"key", "fingerprint",
    "shippable"}}``), ``ship`` (``auto`` | ``always``), ``cache_dir``, ``log_path`` and
    ``log_probe`` (``[path, token]``: the control plane's log directory is visible here when the
    file holds the token), ``env``, ``host`` (None: the node's IP) and ``start_timeout_s``.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        import ray

        self.config = config
        ctx = ray.get_runtime_context()
        self.node_id: str = ctx.get_node_id()
        self.host: str = config.get("host") or ray.util.get_node_ip_address()
        self.cache_dir = Path(
            config.get("cache_dir") or Path(tempfile.gettempdir()) / "neve-ray-cache"
        )
        self.gpu_ids = [str(g) for g in ctx.get_accelerator_ids().get("GPU", [])]
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._spawned = threading.Event()
        self._exit_code: int | None = None
        self.port: int | None = None
        self.grpc_port: int | None = None
        self._log_acked = 0  # log bytes the control plane has confirmed it holds
        self.local_paths: dict[str, str] = {}
        self.shared_logs = self.config.get("ship") != "always" and _probe_matches(
            config.get("log_probe")
        )
        if self.shared_logs:
            self.log_path = Path(config["log_path"])
        else:  # the control plane cannot see this node's files: it pulls the log (read_log)
            name = f"{config['service']}-{config['instance']}-{uuid.uuid4().hex[:8]}.log"
            self.log_path = self.cache_dir / "logs" / _safe(name)

    # -- environment ------------------------------------------------------------------------------
    def prepare(self) -> dict[str, Any]:
        """Which trees must be shipped here: ``{"missing": [key, ...], "node_id", "host"}``."""
        missing = []
        for path, tree in self.config["trees"].items():
            local = self._local_tree(path, tree)
            if local is None:
                if not tree.get("shippable", True):
                    raise RuntimeError(
                        f"node {self.node_id[:8]} ({self.host}) lacks {path} (or holds a "
                        f"different version of it) and it is too large to ship "
                        f"({tree.get('bytes', 0) / 2**20:.0f} MiB); install the same environment "
                        "at the same path on every node or use a shared filesystem"
                    )
                missing.append(tree["key"])
            else:
                self.local_paths[path] = local
        return {"missing": missing, "node_id": self.node_id, "host": self.host}

    def _local_tree(self, path: str, tree: dict[str, Any]) -> str | None:
        cached = self.cache_dir / "trees" / tree["key"]
        if (cached / COMPLETE_MARKER).exists():
            return str(cached)
        if self.config.get("ship") == "always" and tree.get("shippable", True):
            return None
        if os.path.isdir(path) and tree_fingerprint(path)[0] == tree["fingerprint"]:
            return path  # same content at the same path: one machine or a shared filesystem
        return None

    def _unpack(self, shipped: dict[str, Any]) -> None:
        """Unpack shipped trees into the cache; then fix ``.pth`` paths in the unpacked copies."""
        by_key = {tree["key"]: path for path, tree in self.config["trees"].items()}
        import ray

        fresh: dict[str, Path] = {}
        for key, ref in shipped.items():
            final = self.cache_dir / "trees" / key
            if (final / COMPLETE_MARKER).exists():
                self.local_paths[by_key[key]] = str(final)
                continue
            data = ray.get(ref)
            tmp = final.with_name(f"{key}.tmp-{uuid.uuid4().hex[:8]}")
            tmp.mkdir(parents=True)
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                try:  # keeps the venv's symlinks (bin/python -> the base interpreter)
                    tar.extractall(tmp, filter="tar")
                except TypeError:  # a Python before 3.11.4 has no extraction filters
                    tar.extractall(tmp)  # noqa: S202 - our own archive, made by pack_tree
            fresh[key] = tmp
            self.local_paths[by_key[key]] = str(final)
        # Every original root -> where it lives on this node (in place or unpacked).
        mapping = {orig: local for orig, local in self.local_paths.items() if orig != local}
        for key, tmp in fresh.items():
            for site in site_dirs(tmp):
                rewrite_pth_files(site, mapping)
            (tmp / COMPLETE_MARKER).write_text(f"{time.time()}\n")
            final = self.cache_dir / "trees" / key
            try:
                os.rename(tmp, final)
            except OSError:  # another actor on this node unpacked it first: use theirs
                shutil.rmtree(tmp, ignore_errors=True)

    def _resolve(self, path: str) -> str:
        """``path`` (a control-plane path inside some tree) as a path on this node."""
        best = max(
            (root for root in self.local_paths if _within(path, root)), key=len, default=None
        )
        if best is None:
            return path
        rel = os.path.relpath(path, best)
        return os.path.normpath(os.path.join(self.local_paths[best], rel))

    # -- server process ---------------------------------------------------------------------------
    def start(self, shipped: dict[str, Any] | None = None) -> dict[str, Any]:
        """Unpack what was shipped, start the server, return once it listens (``info()``)."""
        if shipped:
            self._unpack(shipped)
        python = self._resolve(self.config["python"])
        model_dir = self._resolve(self.config["model_dir"])
        if not os.path.exists(python):
            raise RuntimeError(
                f"image python {python} does not exist on node {self.node_id[:8]} ({self.host})"
            )
        run_dir = Path(tempfile.mkdtemp(prefix="neve-instance-", dir=_mkdir(self.cache_dir)))
        port_file = run_dir / "port"
        argv = [
            a.replace("{model_dir}", model_dir).replace("{port_file}", str(port_file))
            for a in self.config["argv"]
        ]
        argv = [a.replace("{host}", self.host) for a in argv]
        cmd = [python, "-c", LAUNCHER, str(os.getpid()), "-m", "neve.server", *argv]
        env = instance_environment(os.environ)
        env.update({str(k): str(v) for k, v in self.config.get("env", {}).items()})
        env["PYTHONUNBUFFERED"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpu_ids)  # Ray's GPUs for us, or none
        env["NEVE_NODE"] = self.node_id
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        rotate_log(self.log_path)
        # A thread that lives exactly as long as the server: PR_SET_PDEATHSIG follows the thread
        # that forked the child, so the server must not be forked from a short-lived one.
        watcher = threading.Thread(
            target=self._run, args=(cmd, env, run_dir), name="neve-server-watch", daemon=True
        )
        watcher.start()
        self._spawned.wait(30)
        deadline = time.monotonic() + float(self.config.get("start_timeout_s", 60))
        while True:
            ports = _read_ports(port_file)
            if ports is not None:
                self.port, self.grpc_port = ports
                return self.info()
            if self._exit_code is not None or time.monotonic() >= deadline:
                why = (
                    f"exited with status {self._exit_code}"
                    if self._exit_code is not None
                    else f"did not listen within {self.config.get('start_timeout_s', 60)} s"
                )
                self.stop(timeout=2.0)
                raise RuntimeError(
                    f"instance {self.config['instance']} of {self.config['service']} on node "
                    f"{self.node_id[:8]} {why}; log {self.log_path}:\n{self.log_tail(30)}"
                )
            time.sleep(0.02)

    def _run(self, cmd: list[str], env: dict[str, str], run_dir: Path) -> None:
        try:
            self._run_watched(cmd, env, run_dir, "the inference server")
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)

    def info(self) -> dict[str, Any]:
        """Where the server listens and whether it runs (the backend's ``is_alive``)."""
        process = self._process
        return {
            "host": self.host,
            "port": self.port,
            "grpc_port": self.grpc_port,
            "pid": process.pid if process is not None else None,
            "alive": process is not None and self._exit_code is None and process.poll() is None,
            "exit_code": self._exit_code,
            "node_id": self.node_id,
            "log_path": str(self.log_path),
            "shared_logs": self.shared_logs,
            "python": self._resolve(self.config["python"]),
            "model_dir": self._resolve(self.config["model_dir"]),
            "local_trees": dict(self.local_paths),
            "gpu_ids": list(self.gpu_ids),
            "actor_pid": os.getpid(),
        }

    def read_log(self, offset: int | None, max_bytes: int = 1 << 20) -> tuple[bytes, int]:
        """Log bytes from ``offset`` on; the backend appends them to the control plane's log.

        Asking from ``offset`` confirms everything before it arrived; ``None`` continues after the
        last confirmed byte (a restarted control plane resumes without gaps or repeats).
        """
        if offset is None:
            offset = self._log_acked
        self._log_acked = offset
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                data = fh.read(max_bytes)
        except OSError:
            return b"", offset
        return data, offset + len(data)

    def discard_log(self) -> None:
        """Remove the node-local log once the control plane holds all of it (after a stop)."""
        if not self.shared_logs:
            try:
                self.log_path.unlink()
            except OSError:
                pass

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the server (it drains and stops its workers), then kill its process group."""
        with self._lock:
            process = self._process
        if process is None:
            return self._exit_code
        if process.poll() is None:
            try:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # workers left behind by a stuck leader
        except (ProcessLookupError, PermissionError):
            pass
        try:
            return process.wait(5)
        except subprocess.TimeoutExpired:
            return None


class ProxyActor(_WatchedProcess):
    """The account's ingress proxy on one Ray node (this code runs ON the node).

    Like ``InstanceActor`` it only places and watches a process: ``<python> -m
    neve.dataplane.proxy`` without a home, told the control plane's URL, its settings and secret
    (environment), listening on the node's address; it answers ``info()`` with its ports. The
    proxy process needs the control plane's environment (``config["python"]``: the same path on
    every node, as on one machine or nodes built from one image).

    ``config``: ``python``, ``control_url``, ``secret``, ``settings`` (settings.toml values),
    ``port`` and ``grpc_port`` (0: free ones), ``index``, ``host`` (None: the node's IP),
    ``cache_dir`` and ``start_timeout_s``.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        import ray

        self.config = config
        self.node_id: str = ray.get_runtime_context().get_node_id()
        self.host: str = config.get("host") or ray.util.get_node_ip_address()
        cache = Path(config.get("cache_dir") or Path(tempfile.gettempdir()) / "neve-ray-cache")
        self.run_dir = Path(tempfile.mkdtemp(prefix="neve-proxy-", dir=_mkdir(cache)))
        self.log_path = self.run_dir / "proxy.log"
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._spawned = threading.Event()
        self._exit_code: int | None = None
        self.record: dict[str, Any] = {}

    def start(self) -> dict[str, Any]:
        python = self.config["python"]
        if not os.path.exists(python):
            raise RuntimeError(
                f"node {self.node_id[:8]} ({self.host}) has no {python}: an ingress proxy runs "
                "in the control plane's environment, at the same path on every node"
            )
        record_file = self.run_dir / "record.json"
        cmd = [python, "-c", LAUNCHER, str(os.getpid()), "-m", "neve.dataplane.proxy"]
        cmd += ["--control-url", str(self.config["control_url"]), "--host", self.host]
        cmd += ["--port", str(self.config.get("port", 0)), "--admin-host", self.host]
        cmd += ["--grpc-port", str(self.config.get("grpc_port", 0))]
        cmd += ["--index", str(self.config.get("index", 0)), "--record-file", str(record_file)]
        env = instance_environment(os.environ)
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "NEVE_PROXY_SECRET": str(self.config["secret"]),
                "NEVE_PROXY_SETTINGS": json.dumps(self.config.get("settings") or {}),
                "NEVE_NODE": self.node_id,
            }
        )
        watcher = threading.Thread(
            target=self._run_watched,
            args=(cmd, env, self.run_dir, "the ingress proxy"),
            name="neve-proxy-watch",
            daemon=True,
        )
        watcher.start()
        self._spawned.wait(30)
        deadline = time.monotonic() + float(self.config.get("start_timeout_s", 30))
        while True:
            try:
                self.record = json.loads(record_file.read_text())
                return self.info()
            except (OSError, ValueError):
                pass
            if self._exit_code is not None or time.monotonic() >= deadline:
                why = (
                    f"exited with status {self._exit_code}"
                    if self._exit_code is not None
                    else "did not start in time"
                )
                self.stop(timeout=2.0)
                raise RuntimeError(
                    f"ingress proxy on node {self.node_id[:8]} ({self.host}) {why}; log "
                    f"{self.log_path}:\n{self.log_tail(30)}"
                )
            time.sleep(0.05)

    def info(self) -> dict[str, Any]:
        process = self._process
        port = self.record.get("port")
        url_host = f"[{self.host}]" if ":" in self.host else self.host
        grpc_port = self.record.get("grpc_port")
        return {
            "node_id": self.node_id,
            "host": self.host,
            "port": port,
            "grpc_port": grpc_port,
            "url": f"http://{url_host}:{port}" if port else None,
            "grpc_address": f"{url_host}:{grpc_port}" if grpc_port else None,
            "admin_url": self.record.get("admin_url"),
            "pid": process.pid if process is not None else None,
            "alive": process is not None and self._exit_code is None and process.poll() is None,
            "control_url": self.config["control_url"],
            "log_path": str(self.log_path),
        }

    def stop(self, timeout: float = 10.0) -> int | None:
        process = self._process
        if process is None:
            return self._exit_code
        if process.poll() is None:
            try:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        return process.poll()


def _probe_matches(probe: list[str] | None) -> bool:
    if not probe:
        return False
    path, token = probe
    try:
        return Path(path).read_text().strip() == token
    except OSError:
        return False


def _within(path: str, root: str) -> bool:
    path, root = os.path.normpath(path), os.path.normpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _read_ports(path: Path) -> tuple[int, int | None] | None:
    """(HTTP port, gRPC port or None) from the server's port file (``neve.server.launch``'s
    ``read_port_file``; this module stays standard-library only)."""
    try:
        lines = path.read_text().split()
    except OSError:
        return None
    if not lines:
        return None
    return int(lines[0]), (int(lines[1]) if len(lines) > 1 else None)
