"""What an instance needs on its Ray node, and shipping it there (control-plane side).

An instance needs three kinds of directory ("trees") on its node:

- the image: the venv holding the model's layer (``<images>/<digest>``, found from the python
  executable the services manager passes),
- what the image's ``.pth`` files add to ``sys.path`` (the shared base environment's
  site-packages, through ``site.addsitedir``; an editable source tree), followed recursively,
- the model directory.

Each tree gets a fingerprint (relative paths and sizes; see ``ray_trees.tree_fingerprint``) and a
content key ``<directory name>-<fingerprint prefix>``: the image's directory name is its digest,
so the image's content hash keeps deciding reuse, on nodes as in the image repository. The actor
on the node reports which keys it lacks; only those are packed (a gzip'd tar, once per key and
control-plane process) and put in Ray's object store, from where each node fetches them once and
keeps them in its cache. Trees larger than the pool's ``ship_limit_mb`` are never shipped: a node
must then have them at the same path (a shared filesystem, or nodes built from one machine image).
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neve.compute.backends.ray_trees import pack_tree, pth_references, site_dirs, tree_fingerprint

#: How many ``.pth`` hops are followed from the image (image -> base -> ...).
MAX_TREES = 16
FINGERPRINT_TTL_S = 30.0


@dataclass(frozen=True)
class Tree:
    path: str
    key: str
    fingerprint: str
    files: int
    bytes: int
    shippable: bool

    def descriptor(self) -> dict[str, Any]:
        """What the node-side actor gets (no data: it asks for what it lacks)."""
        return {
            "key": self.key,
            "fingerprint": self.fingerprint,
            "bytes": self.bytes,
            "shippable": self.shippable,
        }


def venv_root(python: str | os.PathLike) -> Path | None:
    """The venv a python executable belongs to (``<root>/bin/python``), or None."""
    path = Path(python)
    root = path.parent.parent
    return root if (root / "pyvenv.cfg").is_file() else None


class TreeShipper:
    """Fingerprints (cached per path) and object-store references (cached per key)."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        # path -> (when computed, fingerprint): reused for a short while, so that starting N
        # instances walks a big environment once, while a changed tree is noticed soon.
        self._fingerprints: dict[str, tuple[float, tuple[str, int, int]]] = {}
        self._refs: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._pack_locks: dict[str, threading.Lock] = {}

    def tree(self, path: str | os.PathLike) -> Tree:
        real = os.path.realpath(path)
        now = time.monotonic()
        with self._lock:
            entry = self._fingerprints.get(real)
        if entry is not None and now - entry[0] < FINGERPRINT_TTL_S:
            cached = entry[1]
        else:
            cached = tree_fingerprint(real)
            with self._lock:
                self._fingerprints[real] = (now, cached)
        fingerprint, files, size = cached
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(real).name)[:64] or "tree"
        return Tree(
            path=real,
            key=f"{name}-{fingerprint[:20]}",
            fingerprint=fingerprint,
            files=files,
            bytes=size,
            shippable=size <= self.limit_bytes,
        )

    def trees_for(self, python: str, model_dir: str) -> list[Tree]:
        """The image, what its ``.pth`` files reference (recursively) and the model directory."""
        roots: list[str] = []
        image = venv_root(python)
        pending = [str(image)] if image is not None else []
        while pending and len(roots) < MAX_TREES:
            root = os.path.realpath(pending.pop(0))
            if any(_within(root, r) for r in roots):
                continue
            roots.append(root)
            for site in site_dirs(root):
                for ref in pth_references(site):
                    if not any(_within(ref, r) for r in roots):
                        pending.append(ref)
        trees = [self.tree(r) for r in roots]
        model = os.path.realpath(model_dir)
        if not any(_within(model, t.path) for t in trees):
            trees.append(self.tree(model))
        return trees

    def refs(self, ray: Any, trees: list[Tree], keys: list[str]) -> dict[str, Any]:
        """Object refs of the packed trees ``keys`` (packed and put once per key)."""
        by_key = {t.key: t for t in trees}
        out = {}
        for key in keys:
            with self._lock:
                lock = self._pack_locks.setdefault(key, threading.Lock())
            with lock:  # two instances starting at once pack a tree once
                ref = self._refs.get(key)
                if ref is None:
                    ref = ray.put(pack_tree(by_key[key].path))
                    self._refs[key] = ref
            out[key] = ref
        return out

    def clear(self) -> None:
        with self._lock:
            self._refs.clear()


def _within(path: str, root: str) -> bool:
    path, root = os.path.normpath(path), os.path.normpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")
