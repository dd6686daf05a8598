"""Dependency parsing, pinning to installed versions, and warehouse eligibility."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from neve.config import load_settings
from neve.control.account import Account
from neve.environments import dependencies as deps
from neve.errors import InvalidArgumentError

SKLEARN = metadata.version("scikit-learn")
XGBOOST = metadata.version("xgboost")
TORCH = metadata.version("torch")


def test_parse_conda_specs() -> None:
    dep = deps.parse_conda_dependency("conda-forge::py-xgboost=2.0")
    assert (dep.channel, dep.name, dep.specifier, dep.pypi_name) == (
        "conda-forge",
        "py-xgboost",
        "==2.0.*",
        "xgboost",
    )
    assert deps.parse_conda_dependency("numpy 1.26.4").specifier == "==1.26.4"
    assert deps.parse_conda_dependency("Scikit_Learn>=1.4").name == "scikit-learn"
    for bad in ("", "::xgboost", "xgboost>>1", "-x"):
        with pytest.raises(InvalidArgumentError, match="conda dependency"):
            deps.parse_conda_dependency(bad)
    with pytest.raises(InvalidArgumentError, match="not valid PEP 508"):
        deps.parse_pip_requirement("torch ==")


def test_pins_to_installed_versions_and_user_versions_win() -> None:
    pinned = deps.pin_dependencies(
        ["scikit-learn"],
        ["xgboost", "pytorch", "numpy>=1.20"],
        ["transformers[torch]", "scikit-learn", "not-installed-pkg-xyz", "pkg @ https://x/p.whl"],
    )
    assert pinned[:4] == [
        f"scikit-learn=={SKLEARN}",
        f"xgboost=={XGBOOST}",
        f"torch=={TORCH}",  # conda's pytorch is PyPI's torch, pinned with its local (+cpu) tag
        "numpy>=1.20",
    ]
    assert pinned[4] == f"transformers[torch]=={metadata.version('transformers')}"
    assert "not-installed-pkg-xyz" in pinned  # nothing to pin it to: the build resolves it
    assert "pkg @ https://x/p.whl" in pinned
    assert len(pinned) == 7  # scikit-learn listed once


def test_relax_version_widens_automatic_pins_only() -> None:
    major, minor = SKLEARN.split(".")[:2]
    pinned = deps.pin_dependencies(["scikit-learn"], ["xgboost==2.1.0"], relax_version=True)
    assert pinned == [f"scikit-learn>={major}.{minor},<{int(major) + 1}", "xgboost==2.1.0"]


def test_eligibility_names_what_is_in_the_way() -> None:
    channel = deps.load_warehouse_channel()
    assert {"numpy", "pandas", "scikit-learn", "xgboost", "torch", "pytorch"} <= channel
    ok = deps.check_warehouse(["scikit-learn"], ["xgboost", "pytorch>=2"], [], channel)
    assert ok.warehouse and ok.reasons == ()

    bad = deps.check_warehouse(
        ["scikit-learn", "exotic-framework"],
        ["conda-forge::xgboost", "defaults::numpy", "unheard-of"],
        ["requests>=2"],
        channel,
    )
    assert not bad.warehouse
    text = bad.explain()
    assert "pip requirement(s) requests>=2 are pip-only" in text
    assert "conda-forge::xgboost, defaults::numpy name an explicit channel" in text
    assert "unheard-of, exotic-framework not on the warehouse channel" in text

    assert deps.target_platforms(None, ok, label="m") == ["WAREHOUSE", "SERVICE"]
    assert deps.target_platforms(None, bad, label="m") == ["SERVICE"]
    assert deps.target_platforms(["snowpark_container_services"], ok, label="m") == ["SERVICE"]
    with pytest.raises(InvalidArgumentError, match="m cannot target WAREHOUSE: pip requirement"):
        deps.target_platforms(["WAREHOUSE"], bad, label="m")
    with pytest.raises(InvalidArgumentError, match="unknown target platform 'GPU'"):
        deps.target_platforms(["GPU"], ok, label="m")


def test_log_model_eligibility_end_to_end(registry, admin, saved) -> None:
    row = registry.log_model(
        admin, "ml", "r", "m", None, saved(), conda_dependencies=["scikit-learn", "xgboost"]
    )
    assert row["target_platforms"] == ["WAREHOUSE", "SERVICE"]
    assert row["dependencies"][:2] == [f"scikit-learn=={SKLEARN}", f"xgboost=={XGBOOST}"]

    row = registry.log_model(admin, "ml", "r", "m", None, saved(), pip_requirements=["requests"])
    assert row["target_platforms"] == ["SERVICE"]
    reasons = registry.describe_version(admin, "ml.r.m", row["name"])["platform_reasons"]
    assert reasons == [
        "pip requirement(s) requests are pip-only: the warehouse channel installs conda packages only"
    ]

    row = registry.log_model(admin, "ml", "r", "m", None, saved(), target_platforms=["SERVICE"])
    reasons = registry.describe_version(admin, "ml.r.m", row["name"])["platform_reasons"]
    assert reasons == ["it was logged with target_platforms=['SERVICE']"]

    keys = registry.store.keys()
    with pytest.raises(InvalidArgumentError, match="cannot target WAREHOUSE: conda dependency"):
        registry.log_model(
            admin,
            "ml",
            "r",
            "m",
            None,
            saved(),
            conda_dependencies=["conda-forge::xgboost"],
            target_platforms=["WAREHOUSE"],
        )
    assert registry.store.keys() == keys


def test_manager_pins_when_the_manifest_has_no_list(registry, admin, saved) -> None:
    # save_model without dependencies (a caller that did not pin): the manager pins them.
    row = registry.log_model(admin, "ml", "r", "m", None, saved(), options={"relax_version": True})
    major, minor = SKLEARN.split(".")[:2]
    assert row["dependencies"] == [f"scikit-learn>={major}.{minor},<{int(major) + 1}"]
    pinned = registry.log_model(admin, "ml", "r", "m", None, saved(dependencies=["x==1"]))
    assert pinned["dependencies"] == ["x==1"]  # what the logging process pinned is kept


def test_channel_file_is_configurable(neve_home: Path, saved, admin) -> None:
    channel = neve_home / "channel.txt"
    channel.write_text("# only numpy here\nnumpy\n")
    (neve_home / "settings.toml").write_text(f'warehouse_channel_file = "{channel}"\n')
    account = Account(load_settings(neve_home))
    try:
        account.security.bootstrap()
        row = account.registry.log_model(admin, "ml", "r", "m", None, saved())
        assert row["target_platforms"] == ["SERVICE"]  # scikit-learn is not on this channel
        reasons = account.registry.describe_version(admin, "ml.r.m", "v1")["platform_reasons"]
        assert reasons == ["scikit-learn not on the warehouse channel"]
    finally:
        account.close()
