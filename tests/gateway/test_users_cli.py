"""``neve users`` against a running control plane (NEVE_URL / NEVE_TOKEN), end to end."""

from __future__ import annotations

import stat

import pytest
from typer.testing import CliRunner

from neve.cli.users import app

pytestmark = pytest.mark.e2e  # starts processes: see the Development section


@pytest.fixture
def cli(base_url, callers, monkeypatch):
    monkeypatch.setenv("NEVE_URL", base_url)
    monkeypatch.setenv("NEVE_TOKEN", callers["admin"].token)
    monkeypatch.delenv("NEVE_ROLE", raising=False)
    monkeypatch.setenv("COLUMNS", "200")  # rich tables: no truncated cells
    runner = CliRunner()

    def run(*args: str, input: str | None = None, ok: bool = True):
        result = runner.invoke(app, list(args), input=input)
        if ok:
            assert result.exit_code == 0, (args, result.output)
        return result

    return run


def test_users_roles_grants_tokens_and_keys_from_the_cli(cli, http, service, tmp_path, monkeypatch):
    cli("roles", "create", "cli_analyst")
    cli(
        "create",
        "cli_user",
        "--password-stdin",
        "--default-role",
        "cli_analyst",
        input="s3cret pass\n",
    )
    cli("roles", "grant", "cli_analyst", "--to-user", "cli_user")
    cli("grant", "usage", "database", "ml", "--to-role", "cli_analyst")
    cli("grant", "usage", "schema", "ml.apps", "--to-role", "cli_analyst")
    cli("grant", "usage", "service", "ml.apps.svc", "--to-role", "cli_analyst")
    listed = cli("grants", "--on", "service", "ml.apps.svc").output
    assert "CLI_ANALYST" in listed and "OWNERSHIP" in listed
    assert "CLI_USER" in cli("list").output

    # the new user logs in, makes a token, and calls the service with it
    session = cli("login", "cli_user", "--password-stdin", input="s3cret pass\n").stdout
    monkeypatch.setenv("NEVE_TOKEN", session.strip().splitlines()[-1])
    pat = cli("tokens", "create", "cli_pat", "--days", "2").stdout.strip().splitlines()[-1]
    assert pat.startswith("nvp_")
    assert "CLI_PAT" in cli("tokens", "list").output
    body = {"data": [[0, 4.0]]}
    resp = http.post(
        "/svc/ml.apps.svc/predict", json=body, headers={"Authorization": f"Bearer {pat}"}
    )
    assert resp.status_code == 200 and resp.json()["data"] == [[0, {"score": 9.0}]]
    cli("tokens", "revoke", "cli_pat")
    resp = http.post(
        "/svc/ml.apps.svc/predict", json=body, headers={"Authorization": f"Bearer {pat}"}
    )
    assert resp.status_code == 401

    # a key pair: the private key is written 0600, the public key registered on the user
    key_file = tmp_path / "cli_user.pem"
    public = cli("keygen", str(key_file), "--register", "cli_user").stdout
    assert "BEGIN PUBLIC KEY" in public
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    jwt_token = cli("jwt", "--key", str(key_file), "--user", "cli_user").stdout.strip()
    resp = http.post(
        "/svc/ml.apps.svc/predict", json=body, headers={"Authorization": f"Bearer {jwt_token}"}
    )
    assert resp.status_code == 200

    # errors are one line on stderr and exit code 1
    denied = cli("roles", "create", "not_allowed", ok=False)
    assert denied.exit_code == 1 and "needs CREATE ROLE on ACCOUNT" in denied.output
    monkeypatch.setenv("NEVE_TOKEN", session.strip().splitlines()[-1].replace("nvs_", "nvs_x"))
    assert "invalid token" in cli("whoami", ok=False).output
