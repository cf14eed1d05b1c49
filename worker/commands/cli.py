"""``eventworker``: run a worker, migrate, enqueue, run the demo, inspect and re-drive failures.

This module is the root command group and the list of the areas it holds; each area's commands
live in their own module beside it. Every command reads the same settings (environment and
``settings.env``); a bad setting ends the command with one line naming it and exit status 2.
"""

from __future__ import annotations

import sys

import click

from worker.commands.base import examples
from worker.commands.config import config_command
from worker.commands.demo import demo_command
from worker.commands.enqueue import enqueue_command
from worker.commands.export import export_command, retention_command
from worker.commands.failures import dead_letters_command, failed_command
from worker.commands.handlers import handlers_command
from worker.commands.rollups import rollups_command
from worker.commands.serve import serve_command
from worker.commands.stats import stats_command
from worker.commands.status import check_command, dashboard_command, health_command, status_command
from worker.commands.worker import migrate_command, partition_command, run_command


@click.group(
    epilog=examples(
        "eventworker migrate && eventworker run",
        "eventworker demo",
        "eventworker COMMAND --help",
        'eval "$(_EVENTWORKER_COMPLETE=bash_source eventworker)"   # Tab completion (zsh: zsh_source)',
    )
)
@click.version_option(package_name="eventworker")
def main() -> None:
    """eventworker: store CloudEvents from Redis exactly once, and run batch work over them."""


for command in (
    # The worker, and what feeds it
    run_command,
    migrate_command,
    partition_command,
    enqueue_command,
    serve_command,
    demo_command,
    config_command,
    # What it could not do
    failed_command,
    dead_letters_command,
    handlers_command,
    # Batch work from a shell
    rollups_command,
    export_command,
    retention_command,
    stats_command,
    # How the workers are doing
    status_command,
    health_command,
    check_command,
    dashboard_command,
):
    main.add_command(command)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
