"""``neve models log|list|versions|show|delete`` against a real control plane daemon."""

from __future__ import annotations

from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd
import pytest
from account_processes import stop_account_processes
from typer.testing import CliRunner

from neve.cli.main import app

pytestmark = pytest.mark.e2e  # starts processes: see the Development section


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Runs ``neve --home <fresh account> ...``; stops the daemon the first command starts."""

    home = tmp_path_factory.mktemp("cli-home")
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None):
        # a wide terminal, so table cells are not folded across lines
        return runner.invoke(app, ["--home", str(home), *args], input=input, env={"COLUMNS": "250"})

    try:
        yield invoke
    finally:
        stop_account_processes(home)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    from sklearn.linear_model import LinearRegression

    folder = tmp_path_factory.mktemp("cli-files")
    rng = np.random.default_rng(3)
    x = pd.DataFrame({"a": rng.normal(size=30), "b": rng.normal(size=30)})
    model = LinearRegression().fit(x, x["a"] * 2 + x["b"])
    (folder / "model.pkl").write_bytes(cloudpickle.dumps(model))
    x.to_csv(folder / "train.csv", index=False)
    return folder / "model.pkl", folder / "train.csv"


def test_models_commands(cli, files) -> None:
    model_file, sample = files
    result = cli(
        "models", "log", str(model_file), "--name", "ml.registry.cli_model",
        "--sample-input", str(sample), "-c", "scikit-learn", "--metric", "r2=0.97",
        "--comment", "from the command line",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "logged ML.REGISTRY.CLI_MODEL version V1" in result.output
    assert "WAREHOUSE, SERVICE" in result.output

    result = cli("models", "log", str(model_file), "-n", "cli_model", "-d", "ml", "-s", "registry",
                 "--sample-input", str(sample), "--pip-requirement", "requests")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "version V2 (target platforms: SERVICE)" in result.output

    result = cli("models", "list")
    assert result.exit_code == 0, result.output
    assert "CLI_MODEL" in result.output and "1 row" in result.output

    result = cli("models", "versions", "ml.registry.cli_model")
    assert result.exit_code == 0, result.output
    assert "V1" in result.output and "V2" in result.output and "2 rows" in result.output

    result = cli("models", "show", "ml.registry.cli_model", "--version", "v2")
    assert result.exit_code == 0, result.output
    assert "pip-only" in result.output and "requests==" in result.output
    assert "PREDICT" in result.output and "a DOUBLE" in result.output

    result = cli("models", "show", "ml.registry.cli_model")  # the default version
    assert result.exit_code == 0, result.output
    assert "version V1" in result.output and '"r2": 0.97' in result.output

    result = cli("models", "delete", "ml.registry.cli_model", "--version", "v1", "--yes")
    assert result.exit_code == 1
    assert "V1 is the default version of model ML.REGISTRY.CLI_MODEL" in result.output

    result = cli("models", "delete", "ml.registry.cli_model", input="n\n")
    assert result.exit_code == 1  # declined: nothing deleted
    result = cli("models", "delete", "ml.registry.cli_model", "--yes")
    assert result.exit_code == 0, result.output
    result = cli("models", "versions", "ml.registry.cli_model")
    assert result.exit_code == 1 and "does not exist" in result.output


def test_models_log_bad_input(cli, files, tmp_path: Path) -> None:
    model_file, sample = files
    result = cli("models", "log", str(tmp_path / "missing.pkl"), "--name", "ml.registry.x")
    assert result.exit_code == 1 and "missing.pkl" in result.output
    result = cli("models", "log", str(model_file), "--name", "ml.registry.x")
    assert result.exit_code == 1 and "sample_input_data" in result.output
    result = cli("models", "log", str(model_file), "--name", "bad name", "-d", "ml", "-s", "r",
                 "--sample-input", str(sample))  # fmt: skip
    assert result.exit_code == 1 and "invalid model name" in result.output
