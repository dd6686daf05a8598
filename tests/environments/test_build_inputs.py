"""What decides an image's identity and what a build must install (no builds run here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from neve.environments import inputs
from neve.environments.builder import cache_misses, install_runtime, missing_from
from neve.environments.job_store import find_links


def _inputs(**changes) -> inputs.ImageInputs:
    values = {
        "requirements": inputs.normalize_requirements(["scikit-learn==1.9.1", "Requests>=2"]),
        "python_version": "3.11",
        "server_version": "0.1.0+abc",
        "gpu": False,
        "base_digest": "b" * 64,
    }
    values.update(changes)
    return inputs.ImageInputs(**values)


def test_digest_is_a_function_of_the_inputs() -> None:
    same = _inputs(
        requirements=inputs.normalize_requirements(["requests>=2", "scikit-learn==1.9.1"])
    )
    assert _inputs().digest == same.digest  # order and spelling of names do not matter
    assert _inputs().requirements == ("requests>=2", "scikit-learn==1.9.1")
    for change in (
        {"server_version": "0.1.0+def"},
        {"python_version": "3.12"},
        {"gpu": True},
        {"base_digest": "c" * 64},
        {"requirements": ("scikit-learn==1.9.0",)},
    ):
        assert _inputs(**change).digest != _inputs().digest, change
    # The conda mapping is logged, not hashed: it is already in the pinned requirements.
    assert _inputs(conda_mapping=(("py-xgboost", "xgboost"),)).digest == _inputs().digest


def test_server_version_hashes_the_runtime_files() -> None:
    files = dict(inputs.runtime_files())
    assert "server/__main__.py" in files and "models/modeldir.py" in files
    assert "errors.py" in files and "__init__.py" in files
    assert not any(rel.startswith(("control/", "sql/", "compute/")) for rel in files)
    version = inputs.server_version()
    assert version.startswith("0.1.0+") and version == inputs.server_version()


def test_base_packages_are_pinned_to_what_runs_here() -> None:
    base = inputs.base_packages()
    assert "torch==2.13.0+cpu" in base and "scikit-learn==1.9.1" in base
    assert any(p.startswith("starlette==") for p in base)
    assert inputs.base_packages(["not-installed-framework"]) == inputs.base_packages([])


def test_missing_from_a_base() -> None:
    have = {"torch": "2.13.0+cpu", "scikit-learn": "1.9.1", "numpy": "2.4.6"}
    # torch==2.13.0 is satisfied by the local CPU build (a local version label matches).
    assert missing_from(["torch==2.13.0", "scikit-learn>=1.4", "NumPy"], have) == []
    assert missing_from(["scikit-learn==1.8.0", "requests"], have) == [
        "scikit-learn==1.8.0",
        "requests",
    ]
    assert missing_from(['pywin32; sys_platform == "win32"'], have) == []  # not for this OS
    assert missing_from(["torch[opt]==2.13.0"], have) == ["torch[opt]==2.13.0"]  # extras: resolve


def test_cache_misses_are_read_from_uv_errors() -> None:
    text = (
        "  x No solution found when resolving dependencies:\n"
        "  `-> Because some-package-not-cached was not found in the cache and you require "
        "some-package-not-cached, we can conclude that your requirements are unsatisfiable.\n"
        "  And because typing-extensions>=4.10.0 needs to be downloaded from a registry and ...\n"
    )
    assert cache_misses(text) == ["some-package-not-cached", "typing-extensions"]


def test_find_links_are_local_directories_only(tmp_path: Path, monkeypatch) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", f"{wheels} https://example.com/wheels file://{wheels}")
    found = find_links([str(tmp_path / "missing")])
    assert found[0] == str(wheels.resolve()) and found.count(str(wheels.resolve())) == 1
    assert not any("://" in f for f in found)


def test_runtime_install_is_importable(tmp_path: Path) -> None:
    site = tmp_path / "site"
    install_runtime(site, "0.1.0+test")
    assert (site / "neve" / "server" / "__main__.py").exists()
    assert not (site / "neve" / "control").exists()  # only what runs inside an image
    record = next(site.glob("neve-*.dist-info")) / "RECORD"
    assert "neve/server/__main__.py,sha256=" in record.read_text()
    from importlib import metadata

    dist = next(iter(metadata.distributions(path=[str(site)])))
    assert dist.metadata["Name"] == "neve" and dist.version == inputs.neve.__version__


def test_python_of_another_version_must_exist() -> None:
    from neve.environments.job_store import uv_executable
    from neve.errors import BuildError

    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert inputs.find_python(here, uv_executable())[0] == sys.executable
    with pytest.raises(BuildError, match="python 3.99 is not available"):
        inputs.find_python("3.99", uv_executable())
