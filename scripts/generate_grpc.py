"""Regenerate ``src/neve/server/v2_grpc/grpc_predict_v2_pb2.py`` (and its ``.pyi``) from the ``.proto``.

Run with a Python that has ``grpcio-tools`` (it is not a dependency of neve):

    uv venv /tmp/grpc-tools && uv pip install --python /tmp/grpc-tools/bin/python grpcio-tools
    /tmp/grpc-tools/bin/python scripts/generate_grpc.py

The generated module is committed: images and the control plane need only ``protobuf``.
Regenerate with a ``grpcio-tools`` whose protobuf is not newer than the lowest ``protobuf`` the
project accepts (``pyproject.toml`` and ``neve.environments.inputs.SERVER_PACKAGES``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

FOLDER = Path(__file__).resolve().parent.parent / "src" / "neve" / "server" / "v2_grpc"


def main() -> int:
    return protoc.main(
        [
            "protoc",
            f"-I{FOLDER}",
            f"--python_out={FOLDER}",
            f"--pyi_out={FOLDER}",  # types for mypy
            str(FOLDER / "grpc_predict_v2.proto"),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
