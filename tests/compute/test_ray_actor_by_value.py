"""The Ray actor classes travel by value: a node without neve installed can run them.

The backend registers ``ray_actor`` and ``ray_trees`` to be pickled by value (``remote_class``).
Here the pickled ``InstanceActor`` is loaded by a fresh interpreter in which importing ``neve``
fails, and it fingerprints a tree and rewrites a ``.pth`` file there (functions of
``ray_trees``, which must have come inside the pickle).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import cloudpickle

from neve.compute.backends import ray_actor, ray_trees


def test_the_instance_actor_runs_where_neve_cannot_be_imported(tmp_path) -> None:
    cloudpickle.register_pickle_by_value(ray_trees)
    cloudpickle.register_pickle_by_value(ray_actor)
    try:
        payload = cloudpickle.dumps(ray_actor.InstanceActor)
    finally:
        cloudpickle.unregister_pickle_by_value(ray_actor)
        cloudpickle.unregister_pickle_by_value(ray_trees)
    (tmp_path / "actor.pkl").write_bytes(payload)
    tree = tmp_path / "tree"
    site = tree / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (site / "extra.pth").write_text("/old/root/lib\n")
    (tree / "model.bin").write_bytes(b"x" * 10)
    script = textwrap.dedent(
        f"""
        import pathlib
        import sys
        sys.modules["neve"] = None  # any import of neve now raises ImportError
        import cloudpickle
        cls = cloudpickle.loads(open({str(tmp_path / "actor.pkl")!r}, "rb").read())
        actor = cls.__new__(cls)
        actor.config = {{}}
        actor.cache_dir = pathlib.Path({str(tmp_path / "cache")!r})
        tree = {{"key": "k", "fingerprint": "no-such-print"}}
        print(actor._local_tree({str(tree)!r}, tree))
        fns = cls._unpack.__globals__
        print(fns["rewrite_pth_files"](fns["site_dirs"]({str(tree)!r})[0], {{"/old/root": "/new"}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "1"]  # fingerprint compared (differs); one file changed
    assert (site / "extra.pth").read_text() == "/new/lib\n"
