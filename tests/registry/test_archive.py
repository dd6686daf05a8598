"""Model directories as streamed tar archives, and logging a version from an archive file."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

from neve.errors import InvalidArgumentError, ObjectNotFoundError, PayloadTooLargeError
from neve.models import directory_digest
from neve.registry import archive


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Nested files (one over a chunk), an empty file and directory, a symlink, odd names."""
    root = tmp_path / "tree"
    (root / "model" / "weights").mkdir(parents=True)
    (root / "model" / "weights" / "w.bin").write_bytes(os.urandom(archive.CHUNK_BYTES + 1234))
    (root / "model" / "empty.txt").write_bytes(b"")
    (root / "code").mkdir()
    (root / "ünï cødé €.txt").write_text("unicode name")
    (root / ("long_name_" * 20)).write_text("a name over tar's 100 characters")
    os.symlink("model/empty.txt", root / "link")
    return root


@pytest.mark.parametrize("compress", [True, False])
def test_pack_and_unpack_round_trip(tree: Path, tmp_path: Path, compress: bool) -> None:
    packed = archive.pack_file(tree, tmp_path / "a.tar", compress=compress)
    assert packed.size == packed.path.stat().st_size
    assert packed.media_type == (archive.GZIP_TYPE if compress else archive.TAR_TYPE)
    with tarfile.open(packed.path) as tar:  # a standard archive any tar tool reads
        assert "./model/weights/w.bin" in tar.getnames()
    chunks = list(archive.iter_pack(tree, compress=compress))
    assert b"".join(chunks) == packed.path.read_bytes()  # the same bytes, however produced
    assert max(len(c) for c in chunks) < 2 * archive.CHUNK_BYTES
    from_file = archive.unpack(packed.path, tmp_path / "from-file")
    # a stream read in odd-sized pieces, as an HTTP body arrives
    from_stream = archive.unpack_stream(
        archive.FileChunks(packed.path, chunk_bytes=7777), tmp_path / "from-stream"
    )
    for out in (from_file, from_stream):
        assert directory_digest(out) == directory_digest(tree)
        assert os.readlink(out / "link") == "model/empty.txt"
        assert (out / "code").is_dir()


def test_unpack_refuses_too_much_bad_and_cut_archives(tree: Path, tmp_path: Path) -> None:
    # a small gzip body that expands far beyond the limit (a "zip bomb") is refused
    bomb_dir = tmp_path / "bomb"
    bomb_dir.mkdir()
    (bomb_dir / "zeros").write_bytes(b"\0" * (4 * archive.CHUNK_BYTES))
    bomb = archive.pack_file(bomb_dir, tmp_path / "bomb.tar.gz", compress=True)
    assert bomb.size < archive.CHUNK_BYTES // 10
    with pytest.raises(PayloadTooLargeError, match=r"upload X unpacks to more than .*1\.0 MiB"):
        archive.unpack(bomb.path, tmp_path / "x", what="upload X", max_bytes=archive.CHUNK_BYTES)
    assert not (tmp_path / "x").exists()

    with pytest.raises(InvalidArgumentError, match="upload Y is not a valid tar archive"):
        archive.unpack_stream([b"not a tar at all" * 64], tmp_path / "y", what="upload Y")
    assert not (tmp_path / "y").exists()

    whole = archive.pack_file(tree, tmp_path / "t.tar", compress=False).path.read_bytes()
    with pytest.raises(InvalidArgumentError, match="not a valid tar archive"):
        archive.unpack_stream([whole[: len(whole) // 2]], tmp_path / "z")
    assert not (tmp_path / "z").exists()


def _upload(tmp_path: Path, saved_dir: Path | None, request: object) -> Path:
    payload = tmp_path / "payload"
    payload.mkdir(parents=True)
    if saved_dir is not None:
        saved_dir.rename(payload / "model")
    (payload / "request.json").write_text(json.dumps(request))
    uploads = tmp_path / "uploads"
    uploads.mkdir(exist_ok=True)
    return archive.pack_file(payload, uploads / "upload.tar").path


def test_log_model_archive(registry, admin, saved, tmp_path: Path) -> None:
    upload = _upload(
        tmp_path, saved(), {"version_name": "v1", "comment": "from a file", "metrics": {"r2": 1}}
    )
    row = registry.log_model_archive(admin, "ml", "arch", "m", upload, max_unpacked_bytes=10**8)
    assert row["name"] == "V1" and row["comment"] == "from a file"
    assert registry.show_metrics(admin, "ml.arch.m", "v1") == {"r2": 1}
    assert sorted(p.name for p in upload.parent.iterdir()) == ["upload.tar"]  # unpacked: gone
    stored = registry.store.keys()
    assert len(stored) == 1

    bad = tmp_path / "bad"
    bad.mkdir()
    cases = [
        ({"version_name": "v2", "colour": "red"}, InvalidArgumentError, "unknown field.*colour"),
        (["not", "an", "object"], InvalidArgumentError, "must hold a JSON object"),
        ({"version_name": "v2"}, PayloadTooLargeError, "unpacks to more than"),
    ]
    for i, (request, error, message) in enumerate(cases):
        upload = _upload(bad / str(i), saved(), request)
        limit = 100 if error is PayloadTooLargeError else None
        with pytest.raises(error, match=message):
            registry.log_model_archive(admin, "ml", "arch", "m", upload, max_unpacked_bytes=limit)
        assert sorted(p.name for p in upload.parent.iterdir()) == ["upload.tar"]
    upload = _upload(bad / "no-model", None, {})
    with pytest.raises(InvalidArgumentError, match="ML.ARCH.M has no model/ directory"):
        registry.log_model_archive(admin, "ml", "arch", "m", upload)
    with pytest.raises(ObjectNotFoundError):
        registry.describe_version(admin, "ml.arch.m", "v2")
    assert registry.store.keys() == stored
