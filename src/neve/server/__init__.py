"""neve.server: the inference server that runs inside every service instance.

``python -m neve.server --model-dir DIR --host H --port P [--num-workers N] ...`` serves one
model directory (written by ``neve.models.save_model``) over HTTP: one front process (uvicorn,
admission control and dynamic batching for the whole instance) hands batches to N worker
processes that each hold a copy of the model. ``start_server`` / ``ServerProcess``
(``neve.server.launch``) start and stop such a process from Python.

This package may import only the standard library, starlette, uvicorn (with httptools),
prometheus-client, orjson, pyarrow, numpy, pandas, cloudpickle, threadpoolctl, ``neve.models`` and
``neve.errors``: it is installed into
every model environment, next to the model's own framework and nothing else.
"""

from neve.server.config import ServerConfig, default_num_workers
from neve.server.launch import ServerProcess, server_command, start_server

__all__ = ["ServerConfig", "ServerProcess", "default_num_workers", "server_command", "start_server"]
