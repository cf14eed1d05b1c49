"""``eventworker config``: the settings in effect, by the variables that set them, or the documented example.

Each line is ``VARIABLE=value`` as a user would write it (``DATABASE_URL``,
``EVENTWORKER_DB_POOL_SIZE``), passwords hidden. A setting left unset shows what it comes to:
the application name each process tags its connections with, the rollups' settle time; an
unset setting with no default says ``(unset)``.
"""

from __future__ import annotations

from typing import Any

import click
import orjson

from worker.commands.base import examples, settings_or_exit
from worker.config import Settings, default_application_name, env_example, env_name
from worker.domain.rollups import settle_seconds


def _unset_defaults(settings: Settings) -> dict[str, tuple[Any, str]]:
    """Settings that are None when unset but mean something then: field -> (effective value, rule)."""
    host_part = default_application_name().rpartition(":")[0]
    return {
        "application_name": (f"{host_part}:<pid>", "unset: this host and each process's own pid"),
        "rollup_settle_seconds": (
            settle_seconds(None, settings.job_timeout),
            "unset: 2 x EVENTWORKER_JOB_TIMEOUT + 10, on MySQL/MariaDB",
        ),
    }


def effective(settings: Settings) -> dict[str, tuple[Any, str | None]]:
    """Variable -> (the value in effect, passwords hidden; None when unset, why when it is derived)."""
    derived = _unset_defaults(settings)
    result: dict[str, tuple[Any, str | None]] = {}
    for field, value in settings.redacted().items():
        if value is None and field in derived:
            result[env_name(field)] = derived[field]
        else:
            result[env_name(field)] = (value, None if value is not None else "unset")
    return result


def _written(value: Any) -> str:
    """``value`` as the variable would be written."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


@click.command(
    "config",
    epilog=examples(
        "eventworker config",
        "EVENTWORKER_MAX_JOBS=4 eventworker config | grep MAX_JOBS",
        "eventworker config --json",
        "eventworker config --example > settings.env",
    ),
)
@click.option("--example", is_flag=True, help="Print settings.env.example: every setting with its default.")
@click.option("--json", "as_json", is_flag=True, help="Print the settings as one JSON object, by variable.")
def config_command(example: bool, as_json: bool) -> None:
    """Print the settings in effect, as VARIABLE=value (passwords hidden), or the documented example file.

    An unset setting shows what it comes to, or (unset). A variable named EVENTWORKER_* that is no
    setting, or an unknown key in the env file, is a warning on stderr (an error with
    EVENTWORKER_STRICT_SETTINGS=true).
    """
    if example:
        click.echo(env_example(), nl=False)
        return
    values = effective(settings_or_exit())
    if as_json:
        data = {name: value for name, (value, _) in values.items()}
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    for name, (value, why) in values.items():
        click.echo(f"{name}={_written(value)}" + (f"  ({why})" if why else ""))
