"""The artifact store: where model version directories live, each with a checksum.

The store is a directory (``<NEVE_HOME>/artifacts`` by default) or any fsspec URL
(``s3://bucket/neve``, ``memory://x``). Each version directory is stored under a key
``<DB>/<SCHEMA>/<MODEL>/<VERSION>-<random>``, relative to the store root, so an account directory
can move without rewriting the catalog. The catalog keeps that key and the SHA-256 of the whole
directory (``neve.models.directory_digest``).

Writes are all-or-nothing: a local store copies into ``.staging/`` and renames into place; a
remote store writes under the final (fresh, unique) key and removes it again on failure.
Reading from a remote store goes through a local cache keyed by the checksum, verified once.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

from neve.errors import InvalidStateError, ObjectNotFoundError
from neve.models import directory_digest

_UNSAFE = re.compile(r"[^A-Za-z0-9_$-]")


def _safe(part: str) -> str:
    # Quoted identifiers may hold any character but "/" and ".."; keys stay portable.
    return _UNSAFE.sub("_", part)[:80] or "_"


class ArtifactStore:
    def __init__(self, root: str, *, cache_dir: Path) -> None:
        self.root = root
        self.cache_dir = cache_dir
        if root.startswith("file://"):
            root = root.removeprefix("file://")
        self.local_root: Path | None = None if "://" in root else Path(root).expanduser()
        self._fs = None
        self._base = ""
        if self.local_root is None:
            import fsspec

            self._fs, self._base = fsspec.core.url_to_fs(root)
            self._base = self._base.rstrip("/")

    def __repr__(self) -> str:
        return f"ArtifactStore({self.root!r})"

    # -- keys -------------------------------------------------------------------------------------
    @staticmethod
    def new_key(database: str, schema: str, model: str, version: str) -> str:
        suffix = uuid.uuid4().hex[:12]
        return "/".join(
            [_safe(database), _safe(schema), _safe(model), f"{_safe(version)}-{suffix}"]
        )

    def _remote(self, key: str) -> str:
        return f"{self._base}/{key}"

    def location(self, key: str) -> str:
        """Where a key lives, for messages and DESCRIBE output."""
        if self.local_root is not None:
            return str(self.local_root / key)
        return f"{self.root.rstrip('/')}/{key}"

    # -- write ------------------------------------------------------------------------------------
    def put(self, source: Path, key: str, *, move: bool = False) -> None:
        """Store the directory ``source`` under ``key`` (new); nothing is left behind on error."""
        if self.local_root is not None:
            self._put_local(source, key, move=move)
        else:
            self._put_remote(source, key)

    def _put_local(self, source: Path, key: str, *, move: bool) -> None:
        assert self.local_root is not None
        final = self.local_root / key
        if final.exists():
            raise InvalidStateError(f"artifact {final} already exists")
        staging_root = self.local_root / ".staging"
        staging_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="put-", dir=staging_root)) / "d"
        try:
            moved = False
            if move:
                try:
                    os.rename(source, staging)  # same filesystem: free
                    moved = True
                except OSError:
                    pass
            if not moved:
                shutil.copytree(source, staging)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging, final)
        finally:
            shutil.rmtree(staging.parent, ignore_errors=True)

    def _put_remote(self, source: Path, key: str) -> None:
        assert self._fs is not None
        target = self._remote(key)
        try:
            for file in sorted(p for p in source.rglob("*") if p.is_file()):
                dest = f"{target}/{file.relative_to(source).as_posix()}"
                self._fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
                self._fs.put_file(str(file), dest)
        except BaseException:
            self.delete(key)
            raise

    def delete(self, key: str) -> bool:
        """Remove a stored directory; True if something was removed. Never raises for absence."""
        if self.local_root is not None:
            path = self.local_root / key
            if not path.exists():
                return False
            shutil.rmtree(path, ignore_errors=True)
            self._prune_empty_parents(path.parent)
            return True
        assert self._fs is not None
        target = self._remote(key)
        try:
            if not self._fs.exists(target):
                return False
            self._fs.rm(target, recursive=True)
        except FileNotFoundError:
            return False
        return True

    def _prune_empty_parents(self, path: Path) -> None:
        assert self.local_root is not None
        root = self.local_root.resolve()
        current = path
        while current.resolve() != root and root in current.resolve().parents:
            try:
                current.rmdir()  # only succeeds when empty
            except OSError:
                return
            current = current.parent

    def exists(self, key: str) -> bool:
        if self.local_root is not None:
            return (self.local_root / key).is_dir()
        assert self._fs is not None
        return bool(self._fs.exists(self._remote(key)))

    def keys(self) -> list[str]:
        """Every stored version directory (for consistency checks and tests)."""
        if self.local_root is not None:
            if not self.local_root.exists():
                return []
            found = []
            for manifest in self.local_root.rglob("manifest.json"):
                rel = manifest.parent.relative_to(self.local_root)
                if rel.parts and rel.parts[0] != ".staging" and len(rel.parts) == 4:
                    found.append(rel.as_posix())
            return sorted(found)
        assert self._fs is not None
        if not self._fs.exists(self._base):
            return []
        found = []
        for path in self._fs.find(self._base):
            rel = path[len(self._base) :].strip("/")
            parts = rel.split("/")
            if len(parts) == 5 and parts[-1] == "manifest.json":
                found.append("/".join(parts[:4]))
        return sorted(found)

    # -- read -------------------------------------------------------------------------------------
    def local_dir(self, key: str, sha256: str) -> Path:
        """A local directory with the version's files: the store itself, or a verified cache."""
        if self.local_root is not None:
            path = self.local_root / key
            if not path.is_dir():
                raise ObjectNotFoundError(
                    f"artifact {path} is missing from the artifact store (checksum {sha256[:12]})"
                )
            return path
        cached = self.cache_dir / sha256
        if cached.is_dir():
            return cached
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="fetch-", dir=self.cache_dir))
        try:
            self._fetch(key, work / "d")
            digest = directory_digest(work / "d")
            if digest != sha256:
                raise InvalidStateError(
                    f"artifact {self.location(key)} is corrupt: checksum {digest[:12]} != "
                    f"{sha256[:12]} recorded when it was logged"
                )
            try:
                os.rename(work / "d", cached)
            except OSError:
                if not cached.is_dir():  # not a concurrent fetch that won the race
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return cached

    def _fetch(self, key: str, destination: Path) -> None:
        assert self._fs is not None
        source = self._remote(key)
        if not self._fs.exists(source):
            raise ObjectNotFoundError(f"artifact {self.location(key)} is missing from the store")
        for path in self._fs.find(source):
            rel = path[len(source) :].lstrip("/")
            dest = destination / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._fs.get_file(path, str(dest))
