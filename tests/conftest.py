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


@pytest.fixture
def postgres_catalog_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test (CI starts a server: scripts/test_postgres.sh)."""
    base = os.environ.get("NEVE_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("NEVE_TEST_POSTGRES_URL is not set: no PostgreSQL server for catalog tests")
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"neve_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def control_plane(neve_home: Path) -> Iterator:
    """A real control plane daemon for a temp account, and an admin session connected to it."""
    import neve
    from neve.control import daemon

    session = neve.connect(neve_home)
    try:
        yield session
    finally:
        session.close()
        daemon.stop(neve_home)
