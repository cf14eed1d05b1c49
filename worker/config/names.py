"""The variables eventworker reads: the prefix, the URL variables' plain names, and the
``EVENTWORKER_*`` variables that are not settings (read by the tests and benchmarks)."""

from __future__ import annotations

from typing import Final

ENV_PREFIX = "EVENTWORKER_"
DEFAULT_ENV_FILE = "settings.env"
#: The URLs, read as hosting platforms name them (``DATABASE_URL``) or with the prefix.
URL_VARIABLES = frozenset({"DATABASE_URL", "DATABASE_READ_URL", "REDIS_URL"})

#: ``EVENTWORKER_*`` variables that are not settings, and what reads them: known, never reported as typos.
#: The one list of them (``tests/unit/test_settings_typos.py`` checks the tree names no other).
OTHER_VARIABLES: Final = {
    ENV_PREFIX + "ENV_FILE": "the env file to read instead of ./settings.env (load_settings)",
    ENV_PREFIX + "TEST_PG_URL": "the tests' and benchmarks' PostgreSQL server (tests/conftest.py, bench/)",
    ENV_PREFIX + "TEST_PG_BIN": "where the tests find PostgreSQL's server programs (tests/pgcluster.py)",
    ENV_PREFIX + "TEST_PGBOUNCER": "the pgbouncer program the tests start (tests/pgbouncer.py)",
    ENV_PREFIX + "TEST_MYSQL_URL": "the tests' MariaDB/MySQL server (tests/conftest.py)",
    ENV_PREFIX + "TEST_REDIS_URL": "the tests' Redis (tests/conftest.py)",
    ENV_PREFIX + "TEST_CHROMIUM": "the browser the dashboard test drives (tests/e2e/test_operating.py)",
    ENV_PREFIX + "TEST_SCREENSHOT": "where the dashboard test saves its image (tests/e2e/test_operating.py)",
    ENV_PREFIX + "TEST_TRACE_PICTURE": "where the tracing test draws a trace (tests/e2e/)",
    ENV_PREFIX + "SOAK_SECONDS": "how long each fault runs with --soak (tests/faults/conftest.py)",
    ENV_PREFIX + "BENCH_REDIS_URL": "the benchmarks' Redis (bench/common.py)",
}


def env_name(field: str) -> str:
    """The variable a setting is read from; ``field`` is a field name or an alias from an error's loc."""
    name = field.upper()
    return name if name in URL_VARIABLES else ENV_PREFIX + name.removeprefix(ENV_PREFIX)
