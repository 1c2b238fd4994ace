from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import PROJECT_ROOT, Settings


def test_defaults_run_on_the_embedded_engine() -> None:
    settings = Settings()
    assert settings.clickhouse_url is None
    assert settings.query_timeout_seconds == 30
    assert settings.uses_development_secret


def test_readme_documents_every_setting() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    missing = [
        f"ANALYTICS_{name.upper()}"
        for name in Settings.model_fields
        if f"`ANALYTICS_{name.upper()}`" not in readme
    ]
    assert missing == []


def test_environment_and_toml_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "analytics.toml"
    config.write_text("port = 7000\nmax_limit = 500\ndefault_limit = 100\n")
    monkeypatch.setenv("ANALYTICS_CONFIG", str(config))
    monkeypatch.setenv("ANALYTICS_PORT", "7001")
    settings = Settings()
    assert settings.port == 7001  # the environment wins over the file
    assert settings.max_limit == 500


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"jwt_secret": "short"}, "at least 32 bytes"),
        ({"default_limit": 20, "max_limit": 10}, "default_limit"),
        ({"jwt_secret": None}, "jwt_public_key"),
        ({"database": "Robert'); DROP"}, "database"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_invalid_settings_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**overrides)  # type: ignore[arg-type]
