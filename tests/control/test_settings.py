"""settings.toml is checked when an account opens: every key is declared once with its type, a
misspelt key or a wrong type is refused naming the key, and valid values reach the components."""

from __future__ import annotations

from pathlib import Path

import pytest

from neve.config import SettingsFile, load_settings
from neve.control.account import Account
from neve.errors import InvalidArgumentError


def _write(home: Path, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "settings.toml").write_text(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ingress_max_body_byts = 10\n", "unknown setting 'ingress_max_body_byts' (did you mean "),
        ('control_port = "not-a-number"\n', "setting control_port = 'not-a-number'"),
        ("login_max_failures = -3\n", "setting login_max_failures = -3"),
        ("service_supervisor_interval_secs = 0\n", "setting service_supervisor_interval_secs"),
        ("tls_certfile = [1, 2]\n", "setting tls_certfile"),
        ("control_port = 8080\ncontrol_port_x = 1\n", "unknown setting 'control_port_x'"),
        ("this is = not toml", "not valid TOML"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    home = tmp_path / "home"
    _write(home, text)
    with pytest.raises(InvalidArgumentError, match="settings.toml") as err:
        Account.open(str(home))
    assert message in str(err.value)


def test_valid_settings_reach_the_components(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _write(home, 'login_lockout_secs = 7\ncontrol_port = "8081"\nbase_frameworks = ["xgboost"]\n')
    settings = load_settings(home)
    assert settings.control_port == 8081  # coerced to the declared type
    assert settings.extra == {"login_lockout_secs": 7.0, "base_frameworks": ["xgboost"]}
    account = Account.open(str(home))
    try:
        assert account.security.login_throttle.lockout_s == 7.0
    finally:
        account.close()


def test_every_key_read_by_a_component_is_declared() -> None:
    """A component reading a key that SettingsFile lacks would make it impossible to set."""
    import re

    src = Path(__file__).resolve().parents[2] / "src" / "neve"
    read = set()
    for path in src.rglob("*.py"):
        read |= set(re.findall(r"\b(?:extra|x)\.get\(\s*\"([a-z_]+)\"", path.read_text()))
        read |= set(re.findall(r"settings\.extra\[\"([a-z_]+)\"\]", path.read_text()))
    read -= {"database", "schema", "role"}  # request context keys, not settings
    assert read <= set(SettingsFile.model_fields), sorted(read - set(SettingsFile.model_fields))
