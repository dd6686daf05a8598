"""Fixtures shared by the client tests."""

from __future__ import annotations

import pytest
from account_processes import stop_account_processes

import neve


@pytest.fixture(scope="module")
def served_account(tmp_path_factory):
    """A session on a real control plane daemon (neve.connect on a fresh account directory),
    and an ``Account`` on the same directory to check what the catalog and store hold."""
    from neve.control.account import Account

    home = tmp_path_factory.mktemp("neve-home")
    session = neve.connect(home)
    account = Account.open(str(home))
    try:
        yield session, account
    finally:
        session.close()
        account.close()
        stop_account_processes(home)
