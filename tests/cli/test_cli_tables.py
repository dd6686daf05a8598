"""Every CLI table prints text as text: a comment holding rich markup (``[/x]``, ``[bold]``)
is shown as written, in listings and in describes, instead of crashing the command."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from neve.cli.main import app

pytestmark = pytest.mark.e2e  # starts a control plane daemon

MARKUP = "[/x] [bold]not bold[/bold]"


def test_markup_in_comments_is_printed_as_text(control_plane) -> None:
    session = control_plane
    session.sql(
        "CREATE COMPUTE POOL markup_pool MIN_NODES = 1 MAX_NODES = 1 "
        f"INSTANCE_FAMILY = 'CPU_X64_XS' COMMENT = '{MARKUP}'"
    ).collect()
    session.sql(f"CREATE ROLE markup_role COMMENT = '{MARKUP}'").collect()
    session.sql("CREATE DATABASE markup_db").collect()
    session.sql(f"CREATE SCHEMA markup_db.s COMMENT = '{MARKUP}'").collect()
    runner = CliRunner()
    home = str(session.account_home)
    for args in (
        ["pools", "list"],
        ["pools", "describe", "markup_pool"],
        ["users", "roles", "list"],
        ["sql", "SHOW SCHEMAS IN DATABASE markup_db"],
    ):
        result = runner.invoke(app, ["--home", home, *args], env={"COLUMNS": "250"})
        assert result.exit_code == 0, (args, result.output)
        assert MARKUP in result.output, (args, result.output)
