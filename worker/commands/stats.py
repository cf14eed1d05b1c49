"""``eventworker stats``: the event statistics report over the last window, as a table or JSON.

It runs the code the ``event_stats`` job runs (:func:`jobs.stats.build_report`), on its
own engine sized by the usual pool settings.
"""

from __future__ import annotations

import click
import orjson

from worker.commands.base import examples, run_or_exit, settings_or_exit, with_read_database
from worker.config import Settings
from worker.domain.report import Report, Window, format_table, to_json
from worker.errors import InvalidArgument


async def _report(settings: Settings, window: Window, fan_out: bool) -> Report:
    from jobs.stats import build_report  # imported here: the jobs load arq, which --help does not need

    return await with_read_database(settings, lambda db: build_report(db, window, fan_out=fan_out))


@click.command(
    "stats",
    epilog=examples("eventworker stats --window 24h", "eventworker stats --window 7d --json > report.json"),
)
@click.option(
    "--window",
    default="1h",
    show_default=True,
    help="How far back from now (s, m, h, d, w): 15m, 1h, 24h, 7d.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--serial", is_flag=True, help="Run the queries one after another in one session.")
@click.option("--verbose", "-v", is_flag=True, help="End the table with how long each query took.")
def stats_command(window: str, as_json: bool, serial: bool, verbose: bool) -> None:
    """Event counts by type, source and subject, ingestion lag percentiles and dead letters by reason."""
    try:
        span = Window.last(window)
    except InvalidArgument as exc:
        raise click.BadParameter(exc.problem, param_hint="--window") from None
    settings = settings_or_exit()
    report = run_or_exit(_report(settings, span, fan_out=not serial), settings)
    if as_json:
        click.echo(orjson.dumps(to_json(report), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(format_table(report, timing=verbose))
