"""Shared fixtures: every test gets its own account directory (NEVE_HOME) on a temp path."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from account_processes import stop_account_processes

# Model weights come only from files tests make or packages that ship them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# pytest-xdist workers run with COLUMNS=80 LINES=24, and a rich Console made at import time keeps
# that size: CLI tables would be cut at 80 columns in workers only. Tests that print tables set
# COLUMNS for the command itself.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)

#: Set by this run for every test process (pytest-xdist workers inherit them).
_RUN_DIRS_ENV = ("RAY_TMPDIR", "NEVE_BASE_IMAGES_DIR")


def pytest_configure(config: pytest.Config) -> None:
    """Per run, before any worker starts: a fresh Ray temp dir, so every run is a machine where
    Ray never ran (a Ray left over from earlier runs once hid a missing setup step), and one
    base environment directory shared by all accounts of the run, so the base (the server's
    packages and the frameworks, byte-compiled) is built once per run instead of once per
    account. Tests of base builds themselves use their account's own directory."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # a worker: the controller set them
    import tempfile

    made = []
    for name, prefix in zip(_RUN_DIRS_ENV, ("nrt-", "neve-bases-"), strict=True):
        path = tempfile.mkdtemp(prefix=prefix)  # short: Ray's socket paths must stay short
        os.environ[name] = path
        made.append(path)
    config._neve_run_dirs = made  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    import shutil

    for path in getattr(config, "_neve_run_dirs", []):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def own_base_images(monkeypatch: pytest.MonkeyPatch) -> None:
    """Accounts opened in this test build their base environment in their own directory."""
    monkeypatch.delenv("NEVE_BASE_IMAGES_DIR", raising=False)


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

    session = neve.connect(neve_home)
    try:
        yield session
    finally:
        session.close()
        # the daemon, and what outlives it on purpose: ingress proxies, service instances
        stop_account_processes(neve_home)


@pytest.fixture(scope="module")
def shared_control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One real control plane daemon for a whole test module, on its own temp account, and an
    admin ``Session`` on it (``session.account_home`` is the account directory). Tests that
    stop or kill the daemon must use their own account instead."""
    import neve

    home = tmp_path_factory.mktemp("shared-neve-home")
    session = None
    try:
        session = neve.connect(home)
        yield session
    finally:
        if session is not None:
            session.close()
        stop_account_processes(home)


@pytest.fixture
def account_homes(tmp_path: Path) -> Iterator:
    """A factory of fresh account directories; each one's daemon and leftover processes are
    stopped at teardown, whatever the test did to them."""
    homes: list[Path] = []

    def make(name: str = "home") -> Path:
        home = tmp_path / f"{name}-{len(homes)}"
        home.mkdir()
        homes.append(home)
        return home

    try:
        yield make
    finally:
        for home in homes:
            stop_account_processes(home)
