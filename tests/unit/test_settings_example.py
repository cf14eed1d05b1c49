"""settings.env.example documents every setting with its real default."""

from __future__ import annotations

from pathlib import Path

from worker.config import Settings, _env_name, load_settings

EXAMPLE = Path(__file__).parents[2] / "settings.env.example"


def test_every_setting_is_listed():
    """Each setting's variable name appears in the example file."""
    text = EXAMPLE.read_text()
    missing = [_env_name(name) for name in Settings.model_fields if f"{_env_name(name)}=" not in text]
    assert missing == []


def test_the_listed_values_are_the_defaults(monkeypatch):
    """Loading the example file gives exactly the defaults."""
    for name in Settings.model_fields:
        monkeypatch.delenv(_env_name(name), raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert load_settings(env_file=EXAMPLE) == Settings()
