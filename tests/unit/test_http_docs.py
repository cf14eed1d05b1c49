"""docs/http.md keeps up with the code: every HTTP metric and every setting of the HTTP face is on it."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest

from worker.config import Settings, env_name
from worker.http.metrics import HttpMetrics

PAGE = (Path(__file__).resolve().parents[2] / "docs" / "http.md").read_text()


def test_every_http_metric_is_in_the_page_table():
    scraped = generate_latest(HttpMetrics().registry).decode()
    families = {line.split()[2] for line in scraped.splitlines() if line.startswith("# TYPE")}
    assert len(families) == 3
    for name in families:
        assert f"| `{name}` |" in PAGE, name


def test_every_http_setting_is_named_on_the_page():
    names = [
        env_name(n) for n in Settings.model_fields if n.startswith("http_") or n.endswith("token_sha256")
    ]
    names.append("EVENTWORKER_PRODUCERS_FILE")
    # The dashboard's login settings are on its own page (operating.md).
    dashboard = {"EVENTWORKER_HTTP_SESSION_HOURS", "EVENTWORKER_HTTP_CSRF_SECONDS"}
    assert [n for n in names if n not in PAGE and n not in dashboard] == []
