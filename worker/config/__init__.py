"""Configuration: one pydantic-settings class, read from the environment and an env file.

Every setting can be given as ``EVENTWORKER_<NAME>``; the two URLs also as plain
``DATABASE_URL`` and ``REDIS_URL``, as hosting platforms hand them out.
``settings.env.example`` lists them all with their defaults.

Nothing is read at import: call :func:`load_settings`. Invalid values become one
:class:`~worker.errors.ConfigError` naming the variable, never a driver traceback.

A variable that looks like a setting but is none (``EVENTWORKER_MAX_JOB``, a key of the env file
that no setting reads) would be ignored without a word; :func:`unknown_variables` finds them, with
the closest setting's name, for the command line and the worker to warn about, and with
``EVENTWORKER_STRICT_SETTINGS=true`` :func:`load_settings` refuses them. The ``EVENTWORKER_*``
variables that are not settings but are read elsewhere (tests, benchmarks) are
:data:`OTHER_VARIABLES`, known and never reported.

The parts: :mod:`~worker.config.settings` (the class), :mod:`~worker.config.loading` (reading it,
unknown variables, the example file), :mod:`~worker.config.database_url` (``DATABASE_URL`` as users
write it), :mod:`~worker.config.names` (the variables' names). Import from here.
"""

from __future__ import annotations

from worker.config.database_url import ASYNC_DRIVERS, PG_SSLMODES, normalize_database_url, redact_url
from worker.config.loading import (
    UnknownVariable,
    env_example,
    env_file_path,
    example_value,
    load_settings,
    setting_variables,
    unknown_variables,
)
from worker.config.names import ENV_PREFIX, OTHER_VARIABLES, URL_VARIABLES, env_name
from worker.config.settings import MEMORY_REDIS, Settings, default_application_name, redact_redis_url

__all__ = [
    "ASYNC_DRIVERS",
    "ENV_PREFIX",
    "MEMORY_REDIS",
    "OTHER_VARIABLES",
    "PG_SSLMODES",
    "URL_VARIABLES",
    "Settings",
    "UnknownVariable",
    "default_application_name",
    "env_example",
    "env_file_path",
    "env_name",
    "example_value",
    "load_settings",
    "normalize_database_url",
    "redact_redis_url",
    "redact_url",
    "setting_variables",
    "unknown_variables",
]
