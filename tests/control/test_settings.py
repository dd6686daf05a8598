"""settings.toml is checked when an account opens: every key is declared once with its type, a
misspelt key or a wrong type is refused naming the key, and valid values reach the components."""

from __future__ import annotations

from pathlib import Path

import pytest

from neve.config import (
    ENV_PREFIX,
    ROOT_KEYS,
    SECTIONS,
    flat_keys,
    load_settings,
    settings_from_values,
)
from neve.control.account import Account
from neve.errors import InvalidArgumentError


@pytest.fixture(autouse=True)
def _no_settings_in_the_environment(monkeypatch) -> None:
    """Settings set by the test run's environment (NEVE_BASE_IMAGES_DIR...) are not these."""
    for key in flat_keys():
        monkeypatch.delenv(ENV_PREFIX + key.upper(), raising=False)


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
    assert settings.control.port == 8081  # coerced to the declared type
    assert settings.security.login_lockout_secs == 7.0
    assert settings.build.base_frameworks == ["xgboost"]
    assert settings.ingress.max_body_bytes == 32 * 1024 * 1024  # unset: the declared default
    assert settings.configured() == {
        "control": {"port": 8081},
        "security": {"login_lockout_secs": 7.0},
        "build": {"base_frameworks": ["xgboost"]},
    }
    account = Account.open(str(home))
    try:
        assert account.security.login_throttle.lockout_s == 7.0
    finally:
        account.close()


def test_sections_and_flat_keys_are_one_setting(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _write(
        home, "[ingress]\nmax_body_bytes = 1000\nport = 9000\n[service]\nstart_timeout_secs = 5\n"
    )
    settings = load_settings(home)
    assert settings.ingress.max_body_bytes == 1000 and settings.ingress.port == 9000
    assert settings.service.start_timeout_secs == 5.0
    # what a proxy on another machine is given makes the same settings again
    again = settings_from_values(settings.configured(), home=tmp_path / "elsewhere")
    assert again.ingress == settings.ingress and again.service == settings.service
    _write(home, "[ingress]\nmax_body_byts = 1\n")
    with pytest.raises(InvalidArgumentError, match=r"unknown setting '\[ingress\] max_body_byts'"):
        load_settings(home)
    _write(home, '[ingress]\nmax_body_bytes = "lots"\n')
    with pytest.raises(InvalidArgumentError, match=r"setting \[ingress\] max_body_bytes = 'lots'"):
        load_settings(home)


def test_environment_variables_win_and_are_checked(tmp_path: Path, monkeypatch) -> None:
    home = tmp_path / "home"
    _write(home, "ingress_max_body_bytes = 1000\nservice_supervisor_interval_secs = 2\n")
    monkeypatch.setenv("NEVE_INGRESS_MAX_BODY_BYTES", "2000")
    monkeypatch.setenv("NEVE_INDEX_URLS", '{"pkgs.example.org": "https://pkgs.example.org/pypi"}')
    monkeypatch.setenv("NEVE_TLS_CERTFILE", "/etc/cert.pem")
    settings = load_settings(home)
    assert settings.ingress.max_body_bytes == 2000  # the environment wins over the file
    assert settings.service.supervisor_interval_secs == 2.0  # the file still counts
    assert settings.build.index_urls == {"pkgs.example.org": "https://pkgs.example.org/pypi"}
    assert settings.tls.certfile == "/etc/cert.pem"
    monkeypatch.setenv("NEVE_LOGIN_MAX_FAILURES", "many")
    with pytest.raises(InvalidArgumentError, match="setting NEVE_LOGIN_MAX_FAILURES = 'many'"):
        load_settings(home)


def test_every_flat_key_reaches_its_section() -> None:
    """Each flat key (file or NEVE_<KEY>) names exactly one field, and every field has one."""
    keys = flat_keys()
    assert len(set(keys.values())) == len(keys)
    fields = {(None, k) for k in ROOT_KEYS} | {
        (name, f) for name, model in SECTIONS.items() for f in model.model_fields
    }
    assert set(keys.values()) == fields
    assert keys["ingress_max_body_bytes"] == ("ingress", "max_body_bytes")
    assert keys["token_ttl_secs"] == ("security", "token_ttl_secs")
    assert keys["base_index_url"] == ("build", "base_index_url")


def test_no_component_reads_settings_by_string_key() -> None:
    """Components read typed fields (``settings.ingress.port``), never a key in a dict."""
    import re

    src = Path(__file__).resolve().parents[2] / "src" / "neve"
    readers = [
        str(path.relative_to(src))
        for path in src.rglob("*.py")
        if re.search(
            r"settings\.extra\b|\bextra\.get\(\s*\"(ingress|service|http|tls|warehouse)_",
            path.read_text(),
        )
    ]
    assert readers == []
