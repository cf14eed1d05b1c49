"""The paths users and the docs name keep working, whatever module the code behind them lives in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

#: Every command and sub-command docs/reference/index.md lists, as typed after ``eventworker``.
DOCUMENTED_COMMANDS = {
    ("run",),
    ("migrate",),
    ("partition",),
    ("enqueue",),
    ("serve",),
    ("dead-letters",),
    ("failed", "list"),
    ("failed", "requeue"),
    ("status",),
    ("health",),
    ("check",),
    ("dashboard",),
    ("export",),
    ("rollups", "update"),
    ("rollups", "rebuild"),
    ("rollups", "verify"),
    ("retention",),
    ("stats",),
    ("handlers", "list"),
    ("handlers", "retry"),
    ("config",),
    ("demo",),
}


def test_producer_path():
    """``from worker.producer import EventProducer`` gives the client itself, and its error with it."""
    from worker.errors import EnqueueError as home_error
    from worker.producer import EnqueueError, EventProducer
    from worker.protocol.producer import EventProducer as home

    assert EventProducer is home
    assert EnqueueError is home_error


def test_handlers_path_registers_in_the_workers_registry():
    """The decorators of ``worker.handlers`` register into the registry the worker's jobs read."""
    from worker.domain import handlers as home
    from worker.handlers import StoredEvent, handler, registry, sync_handler

    assert (handler, sync_handler, StoredEvent, registry) == (
        home.handler,
        home.sync_handler,
        home.StoredEvent,
        home.registry,
    )


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    found: set[tuple[str, ...]] = set()
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found |= _commands(command, (*prefix, name))
        else:
            found.add((*prefix, name))
    return found


def test_every_documented_command_exists():
    """The console script's group has exactly the commands the docs list, and the docs name each."""
    from worker.commands.cli import main

    assert _commands(main) == DOCUMENTED_COMMANDS
    page = (Path(__file__).resolve().parents[2] / "docs" / "reference" / "index.md").read_text()
    for command in {path[0] for path in DOCUMENTED_COMMANDS}:
        assert f"`eventworker {command}" in page or f"(or `{command}`)" in page, command


@pytest.mark.parametrize("argv", [["-m", "worker", "--help"], ["-m", "arq", "--help"]])
def test_module_entry_points_start(argv):
    """``python -m worker`` (the CLI) and arq's own CLI start in a fresh interpreter."""
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_arq_finds_worker_settings():
    """``arq worker.main.WorkerSettings`` resolves: arq imports the module and reads that attribute."""
    code = "import worker.main as m; print(m.WorkerSettings['queue_name'])"
    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:6379/15", "EVENTWORKER_QUEUE_NAME": "ew-paths-test"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ew-paths-test"
