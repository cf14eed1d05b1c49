"""``eventworker rollups``: bring the rollups up to date, rebuild them, or check them, from a shell.

The commands run the code the worker's jobs run (:mod:`jobs.rollup`), without the job
time limit: ``update`` goes on until it has caught up, and ``rebuild`` suits histories
too large to recount within one job.
"""

from __future__ import annotations

import click

from worker.commands.base import run_or_exit, settings_or_exit, with_database


def _summary(verb: str, result: dict[str, object]) -> str:
    return (
        f"{verb} {result['rows']} events into {result['buckets']} bucket rows"
        f" in {result['transactions']} transaction(s); checkpoint {result['checkpoint_from']}"
        f" -> {result['checkpoint_to']}"
    )


@click.group("rollups")
def rollups_command() -> None:
    """Event counts per (type, source) and minute or hour: the rollups table."""


@rollups_command.command("update")
def update_command() -> None:
    """Count the events stored since the last run (the worker does this every minute)."""
    from jobs.rollup import update  # imported here: the jobs load arq, which --help does not need

    settings = settings_or_exit()
    result = run_or_exit(with_database(settings, lambda db: update(db, settings)), settings)
    click.echo(_summary("counted", dict(result)))
    if result["gave_way"]:
        click.echo("another run was updating the rollups at the same time; it carries on from here")


@rollups_command.command("rebuild")
def rebuild_command() -> None:
    """Empty the rollups and count the whole history again, in one transaction."""
    from jobs.rollup import rebuild  # imported here: the jobs load arq, which --help does not need

    settings = settings_or_exit()
    result = run_or_exit(with_database(settings, lambda db: rebuild(db, settings)), settings)
    click.echo(_summary("counted", dict(result)))


@rollups_command.command("verify")
def verify_command() -> None:
    """Compare the rollups with the events they cover, counted again; exit 1 on any difference."""
    from jobs.rollup import verify  # imported here: the jobs load arq, which --help does not need

    settings = settings_or_exit()
    checked = run_or_exit(with_database(settings, verify), settings)
    for difference in checked.differences:
        click.echo(str(difference))
    if checked.differences:
        click.echo(
            f"{len(checked.differences)} bucket(s) differ from the events up to checkpoint"
            f" {checked.position}; `eventworker rollups rebuild` recounts them",
            err=True,
        )
        raise SystemExit(1)
    click.echo(f"rollups match the events up to checkpoint {checked.position}: {checked.buckets} buckets")
