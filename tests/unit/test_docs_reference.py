"""The documentation's generated reference agrees with the code: settings, metrics, commands."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from worker.config import Settings, env_example, env_name
from worker.runtime.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

import eventworker_docs  # noqa: E402 - lives beside the docs, found through the line above

#: ``NAME=value`` or ``# NAME=`` (a setting without a default) in settings.env.example.
_EXAMPLE_LINE = re.compile(r"^(?:# )?(?P<name>[A-Z][A-Z0-9_]+)=(?P<value>.*)$")


def _example_settings() -> dict[str, str]:
    text = (ROOT / "settings.env.example").read_text()
    return {m["name"]: m["value"] for m in map(_EXAMPLE_LINE.match, text.splitlines()) if m}


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_every_setting_is_described(name):
    """A setting added without a description fails here (the reference and the example file need one)."""
    description = Settings.model_fields[name].description
    assert description, f"{env_name(name)} needs a description"
    assert len(description.split()) >= 3, f"{env_name(name)}: a description says what the setting does"


def test_reference_example_file_and_class_list_the_same_settings():
    """The reference page's rows, settings.env.example and the settings class name the same variables."""
    rows = eventworker_docs.settings_rows()
    assert [row[0] for row in rows] == [env_name(name) for name in Settings.model_fields]
    assert {row[0] for row in rows} == set(_example_settings())
    assert (ROOT / "settings.env.example").read_text() == env_example()


def test_reference_defaults_are_the_example_files():
    """Each default on the reference page is the value settings.env.example gives (unset when none)."""
    example = _example_settings()
    for variable, _kind, default, _text in eventworker_docs.settings_rows():
        assert default == (f"`{example[variable]}`" if example[variable] else "unset")


def test_reference_lists_every_metric_a_worker_serves():
    """Every metric family in a worker's scrape is on the metrics page, and nothing else is."""
    metrics = Metrics()
    try:
        scraped = generate_latest(metrics.registry).decode()
    finally:
        metrics.close()
    served = {
        re.sub(r"_total$", "", line.split()[2]) for line in scraped.splitlines() if line.startswith("# TYPE")
    }
    documented = {re.sub(r"_total$", "", row[0]) for row in eventworker_docs.metrics_rows()}
    assert documented == served
    assert all(row[3] for row in eventworker_docs.metrics_rows()), "every metric needs its help text"
