"""Directories as tar.gz streams: how model directories travel between client and control plane.

Extraction uses tarfile's ``data`` filter, so an archive cannot write outside its destination
(absolute paths, ``..``, links pointing out, device files are all refused).
"""

from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import BinaryIO

from neve.errors import InvalidArgumentError

# Model files (weights, pickles) barely compress; level 1 keeps packing fast.
COMPRESS_LEVEL = 1
MEDIA_TYPE = "application/gzip"


def pack(directory: Path, fileobj: BinaryIO, *, arcname: str = ".") -> None:
    """Write ``directory`` as a tar.gz to ``fileobj`` (paths relative to ``arcname``)."""
    with tarfile.open(fileobj=fileobj, mode="w:gz", compresslevel=COMPRESS_LEVEL) as tar:
        tar.add(str(directory), arcname=arcname)


def pack_bytes(directory: Path) -> bytes:
    buf = io.BytesIO()
    pack(directory, buf)
    return buf.getvalue()


def unpack(data: bytes | BinaryIO, destination: Path, *, what: str = "archive") -> Path:
    """Extract a tar.gz into the new directory ``destination``; on error leave nothing there."""
    fileobj = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    destination.mkdir(parents=True, exist_ok=False)
    try:
        with tarfile.open(fileobj=fileobj, mode="r:gz") as tar:
            tar.extractall(destination, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        shutil.rmtree(destination, ignore_errors=True)
        raise InvalidArgumentError(f"{what} is not a valid tar.gz archive: {exc}") from None
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)
        raise
    return destination


def unpack_temp(data: bytes | BinaryIO, parent: Path, *, what: str = "archive") -> Path:
    """Extract into a fresh temporary directory under ``parent`` (the caller removes it)."""
    parent.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="unpack-", dir=parent))
    return unpack(data, base / "d", what=what)
