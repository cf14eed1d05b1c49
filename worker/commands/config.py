"""``eventworker config``: the settings in effect, or the documented example file."""

from __future__ import annotations

import click

from worker.commands.base import settings_or_exit
from worker.config import env_example


@click.command("config")
@click.option("--example", is_flag=True, help="Print settings.env.example: every setting with its default.")
def config_command(example: bool) -> None:
    """Print the settings in effect (passwords hidden), or the documented example file."""
    if example:
        click.echo(env_example(), nl=False)
        return
    for name, value in settings_or_exit().redacted().items():
        click.echo(f"{name}={'' if value is None else value}")
