"""settings.env.example documents every setting with its real default."""

from __future__ import annotations

from pathlib import Path

from worker.config import URL_VARIABLES, Settings, env_example, load_settings

EXAMPLE = Path(__file__).parents[2] / "settings.env.example"


def test_the_file_is_what_the_code_renders():
    """The committed file is current: `eventworker config --example` prints exactly it."""
    assert EXAMPLE.read_text() == env_example()


def test_every_setting_is_listed():
    """Each setting's variable name appears in the example."""
    text = env_example()
    for name in Settings.model_fields:
        variable = name.upper() if name.upper() in URL_VARIABLES else f"EVENTWORKER_{name.upper()}"
        assert f"{variable}=" in text


def test_the_listed_values_are_the_defaults():
    """Loading the example file gives exactly the defaults."""
    assert load_settings(env_file=EXAMPLE) == Settings()
