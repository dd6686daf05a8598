"""Trees an instance needs on a Ray node: fingerprints, ``.pth`` references, packing.

Used by the backend on the control plane (``ray_ship``: what to ship) and, pickled by value with
``ray_actor``, on the nodes (unpacking, rewriting ``.pth`` files): standard library only.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
from pathlib import Path

#: Marker written last into an unpacked tree: a directory without it is incomplete.
COMPLETE_MARKER = ".neve-tree-complete"
_ADDSITEDIR = re.compile(r"""addsitedir\(\s*(['"])(/[^'"]+)\1""")


def tree_fingerprint(root: str | os.PathLike) -> tuple[str, int, int]:
    """``(sha256 hex, files, bytes)`` over the relative paths, sizes and link targets of a tree.

    Content is not read (a venv holds thousands of files): trees are content-addressed
    directories that are written once, so names and sizes identify them.
    """
    base = Path(root)
    digest = hashlib.sha256()
    files = size = 0
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, base)
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(Path(dirpath, d))]):
            if name == COMPLETE_MARKER or name.endswith(".pyc"):
                continue
            path = Path(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            try:
                if path.is_symlink():
                    digest.update(f"L {rel} {os.readlink(path)}\n".encode())
                    continue
                st = path.stat()
            except OSError:
                continue
            digest.update(f"F {rel} {st.st_size}\n".encode())
            files += 1
            size += st.st_size
    return digest.hexdigest(), files, size


def site_dirs(root: str | os.PathLike) -> list[Path]:
    """The ``site-packages`` directories of a venv (or the directory itself when it is one)."""
    base = Path(root)
    found = sorted(base.glob("lib/python*/site-packages")) + sorted(
        base.glob("lib64/python*/site-packages")
    )
    return found or [base]


def pth_references(site_dir: str | os.PathLike) -> list[str]:
    """Absolute directories that the ``.pth`` files of ``site_dir`` add to ``sys.path``."""
    refs: list[str] = []
    for pth in sorted(Path(site_dir).glob("*.pth")):
        try:
            lines = pth.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            text = line.strip()
            if text.startswith(("import ", "import\t")):
                refs.extend(m.group(2) for m in _ADDSITEDIR.finditer(text))
            elif text.startswith("/"):
                refs.append(text)
    return [r for r in dict.fromkeys(refs) if os.path.isdir(r)]


def rewrite_pth_files(site_dir: Path, mapping: dict[str, str]) -> int:
    """Point absolute paths in ``site_dir/*.pth`` at unpacked copies; return files changed."""
    if not mapping:
        return 0
    # One pass, longest original root first: a nested tree wins over the tree that contains it,
    # and a replacement is never rewritten again. Roots match at a line start (a path line) or
    # after a quote (``site.addsitedir('...')``), up to a path boundary.
    roots = sorted(mapping, key=len, reverse=True)
    pattern = re.compile(
        r"(?:^|(?<=['\"]))(" + "|".join(re.escape(r) for r in roots) + r")(?=$|/|['\"])",
        re.MULTILINE,
    )
    changed = 0
    for pth in sorted(site_dir.glob("*.pth")):
        try:
            text = pth.read_text()
        except OSError:
            continue
        new = pattern.sub(lambda m: mapping[m.group(1)], text)
        if new != text:
            pth.write_text(new)
            changed += 1
    return changed


def pack_tree(root: str | os.PathLike) -> bytes:
    """A gzip'd tar of a tree (symlinks kept, byte-code caches left out)."""
    buf = io.BytesIO()

    def skip_caches(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        name = info.name
        if "/__pycache__" in name or name.endswith(".pyc") or name.endswith(COMPLETE_MARKER):
            return None
        return info

    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        tar.add(str(root), arcname=".", filter=skip_caches)
    return buf.getvalue()


if __name__ == "__main__":  # pragma: no cover - a tool: print a tree's fingerprint
    import sys

    print(tree_fingerprint(sys.argv[1]))
