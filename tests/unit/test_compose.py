"""compose.yaml, checked without a container engine: against the Dockerfile, the CLI and the settings.

No engine runs on the test machines, so `docker compose up` itself is not run. What can go wrong in
the file is checked here instead: each eventworker service runs a real `eventworker` command line
(parsed by the CLI itself), the workers' health check is the image's, the dashboard's health check
passes against a real dashboard and fails once it is gone, every variable is a setting and every
value loads, and the start-up order waits for what each service needs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from worker.commands.cli import main as cli
from worker.config import ENV_PREFIX, Settings, env_name, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
#: The services that run the project's image (the others are PostgreSQL and Redis).
OURS = {name: service for name, service in SERVICES.items() if service.get("build") == "."}


def _dockerfile_instruction(name: str) -> str:
    """The last ``name`` instruction of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip().upper().startswith(name + " ")]
    return lines[-1]


def _interpolate(value: str) -> str:
    """Compose's ``${NAME:-default}`` and ``${NAME}``, from this process's environment."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3)
        if name in os.environ:
            return os.environ[name]
        assert default is not None, f"${{{name}}} has no default: `docker compose up` would warn"
        return default

    return re.sub(r"\$\{(\w+)(:-([^}]*))?\}", replace, value)


def _parse(args: list[str]) -> click.Context:
    """Parse ``eventworker ARGS`` as the CLI does, without running it: an unknown command or option
    raises click's UsageError."""
    parent = click.Context(cli, info_name="eventworker")
    name, command, rest = cli.resolve_command(parent, list(args))
    assert command is not None, args
    return command.make_context(name, rest, parent=parent)


def test_the_services_are_all_there():
    assert set(SERVICES) >= {"postgres", "redis", "migrate", "worker", "dashboard"}
    assert set(OURS) >= {"migrate", "worker", "dashboard"}
    assert SERVICES["worker"]["deploy"]["replicas"] == 3


def test_each_command_is_a_real_eventworker_command():
    """The image's entry point is `eventworker` (not overridden here), so `command` is its arguments."""
    assert _dockerfile_instruction("ENTRYPOINT") == 'ENTRYPOINT ["eventworker"]'
    for name, service in OURS.items():
        assert "entrypoint" not in service, name
        context = _parse(service["command"])
        assert context.command.name == service["command"][0], name
    assert _parse(SERVICES["dashboard"]["command"]).params["host"] == "0.0.0.0"  # reachable when published
    if "serve" in cli.commands:  # the HTTP face, once it exists, runs beside the dashboard
        assert any(service["command"][0] == "serve" for service in OURS.values()), (
            "`eventworker serve` exists: compose.yaml needs a service running it, as it has the dashboard"
        )


def test_the_workers_health_check_is_the_images():
    """`eventworker check --local`: this container's own worker, as the Dockerfile's HEALTHCHECK."""
    image_check = json.loads(_dockerfile_instruction("HEALTHCHECK").split(" CMD ", 1)[1])
    test = SERVICES["worker"]["healthcheck"]["test"]
    assert test == ["CMD", *image_check] == ["CMD", "eventworker", "check", "--local"]
    assert _parse(test[2:]).params["local"] is True
    # migrate has no worker, so the image's check must not run there; the dashboard has its own.
    assert SERVICES["migrate"]["healthcheck"] == {"disable": True}
    assert SERVICES["dashboard"]["healthcheck"]["test"][:2] == ["CMD", "python"]


def test_the_servers_health_checks_use_their_own_clients():
    postgres, redis = SERVICES["postgres"], SERVICES["redis"]
    environment = postgres["environment"]
    assert postgres["healthcheck"]["test"] == [
        "CMD",
        "pg_isready",
        f"--username={environment['POSTGRES_USER']}",
        f"--dbname={environment['POSTGRES_DB']}",
    ]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_redis_keeps_every_confirmed_job():
    """AOF with appendfsync always, as docs/deploying.md asks, on a volume."""
    command = SERVICES["redis"]["command"]
    assert command[0] == "redis-server"
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options == {"--appendonly": "yes", "--appendfsync": "always"}
    assert any(volume.endswith(":/data") for volume in SERVICES["redis"]["volumes"])


def test_every_variable_is_a_setting_and_every_value_loads(monkeypatch):
    """No misspelt name silently ignored; DATABASE_URL and REDIS_URL name the services of this file."""
    known = {env_name(field) for field in Settings.model_fields} | {ENV_PREFIX + "ENV_FILE"}
    for name, service in OURS.items():
        environment = {key: _interpolate(str(value)) for key, value in service["environment"].items()}
        assert set(environment) <= known, f"{name}: not settings: {set(environment) - known}"
        with monkeypatch.context() as patched:
            for key, value in environment.items():
                patched.setenv(key, value)
            settings = load_settings()
        postgres = SERVICES["postgres"]["environment"]
        assert settings.database_url.startswith("postgresql+asyncpg://" + postgres["POSTGRES_USER"] + ":")
        assert settings.database_url.endswith(f"@postgres:5432/{postgres['POSTGRES_DB']}")
        assert _interpolate(postgres["POSTGRES_PASSWORD"]) in environment["DATABASE_URL"]
        assert settings.redis_url == "redis://redis:6379/0"
        assert settings.log_format == "json"
    worker = load_settings(metrics_port=SERVICES["worker"]["environment"]["EVENTWORKER_METRICS_PORT"])
    assert worker.metrics_port == 9100


def test_the_start_up_order():
    """Workers and the dashboard start once migrate has exited 0 and the servers are healthy;
    migrate waits for PostgreSQL; whatever is waited on as healthy has a health check."""
    for name in ("worker", "dashboard"):
        assert SERVICES[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"},
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }
    assert SERVICES["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert SERVICES["migrate"]["command"] == ["migrate"]
    assert SERVICES["migrate"]["restart"] == "no"  # a one-shot: restarted, it would never complete
    for name, service in SERVICES.items():
        for target, condition in service.get("depends_on", {}).items():
            if condition["condition"] == "service_healthy":
                assert "test" in SERVICES[target]["healthcheck"], f"{name} waits on {target}'s health"
            if condition["condition"] == "service_completed_successfully":
                assert SERVICES[target]["restart"] == "no", f"{name} waits on {target} to exit"
        if name != "migrate":
            assert service["restart"] == "unless-stopped", name


def test_workers_get_longer_to_stop_than_they_wait_for_jobs():
    """SIGTERM lets running jobs finish for shutdown_wait; compose kills at stop_grace_period."""
    grace = SERVICES["worker"]["stop_grace_period"]
    assert grace.endswith("s")
    assert float(grace[:-1]) > load_settings().shutdown_wait


@pytest.fixture
def dashboard(settings: Settings) -> Iterator[Any]:
    """A real dashboard on a free loopback port, on this test's SQLite file and the in-process Redis."""
    from httpserve import InThreadServer

    server = InThreadServer(settings)
    yield server
    server.stop()


def test_the_dashboards_health_check_asks_a_real_dashboard(dashboard):
    """The check's own command: exit 0 against a running dashboard, non-zero once it is gone."""
    service = SERVICES["dashboard"]
    test = service["healthcheck"]["test"]
    port = _parse(service["command"]).params["port"]
    assert service["ports"] == [f"127.0.0.1:{port}:{port}"]
    code = test[3]
    assert f"http://127.0.0.1:{port}/status.json" in code
    command = [sys.executable, test[2], code.replace(f":{port}/", f":{dashboard.port}/")]
    passed = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert passed.returncode == 0, passed.stderr
    dashboard.stop()
    failed = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert failed.returncode != 0
