"""Shared fixtures: every test gets its own account directory (NEVE_HOME) on a temp path."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Model weights come only from files tests make or packages that ship them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def neve_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "neve-home"
    home.mkdir()
    monkeypatch.setenv("NEVE_HOME", str(home))
    return home


@pytest.fixture
def account(neve_home: Path) -> Iterator:
    from neve.control.account import Account

    acct = Account.open(str(neve_home))
    yield acct
    acct.close()
