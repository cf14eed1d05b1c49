"""What importing a module loads, each checked in a fresh interpreter (nothing imported before it)."""

from __future__ import annotations

import json
import subprocess
import sys


def loaded_by(module: str) -> set[str]:
    """The modules a fresh interpreter has loaded after ``import <module>``."""
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(result.stdout))


def under(modules: set[str], package: str) -> set[str]:
    """The modules that are ``package`` or inside it."""
    return {name for name in modules if name == package or name.startswith(package + ".")}


def test_the_producer_loads_no_sqlalchemy():
    """An app that only enqueues events (``import worker.producer``) does not load SQLAlchemy."""
    loaded = loaded_by("worker.producer")
    assert "worker.protocol.producer" in loaded
    assert under(loaded, "sqlalchemy") == set()


def test_a_job_loads_no_observation_code():
    """``import jobs.ingest`` loads what the job uses: no metrics server, HTTP, status or monitor code."""
    loaded = loaded_by("jobs.ingest")
    assert "worker.runtime.jobrunner" in loaded
    assert under(loaded, "prometheus_client") == set()
    assert under(loaded, "http.server") == set()
    assert under(loaded, "worker.ops") == set()
    unwanted = {
        "worker.runtime.monitor",
        "worker.runtime.metrics",
        "worker.runtime.tracking",
        "worker.runtime.queuestats",
        "worker.db.sql.status_sql",
    }
    assert loaded & unwanted == set()


def test_the_worker_and_the_producer_load_no_opentelemetry():
    """Tracing off (no OTEL_* variables), nothing imports OpenTelemetry: the otel extra is optional."""
    for module in ("worker.producer", "jobs.ingest", "jobs.handlers", "worker.main", "worker.commands.cli"):
        assert under(loaded_by(module), "opentelemetry") == set(), module
