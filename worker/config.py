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
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from dotenv import dotenv_values
from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from worker.constants import DEFAULT_QUEUE, MAX_APPLICATION_NAME
from worker.errors import ConfigError
from worker.redis_url import RedisUrlError, parse_redis_url, redis_url_secrets
from worker.redis_url import redact_redis_url as _redact_redis_url

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
    ENV_PREFIX + "SOAK_SECONDS": "how long each fault runs with --soak (tests/faults/conftest.py)",
    ENV_PREFIX + "BENCH_REDIS_URL": "the benchmarks' Redis (bench/common.py)",
}

#: Async drivers we support, by SQLAlchemy drivername.
ASYNC_DRIVERS = frozenset(
    {
        "postgresql+asyncpg",
        "postgresql+psycopg",
        "postgresql+psycopg_async",
        "mysql+aiomysql",
        "mysql+asyncmy",
        "sqlite+aiosqlite",
    }
)

#: Bare schemes as hosting platforms hand them out, and what they mean here.
_BARE_SCHEMES = {
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",  # SQLAlchemy 2.1 alone would pick psycopg
    "mysql": "mysql+aiomysql",
    "mariadb": "mysql+aiomysql",
}

#: What to use instead of a synchronous driver, by backend.
_ASYNC_ALTERNATIVE = {
    "postgresql": "postgresql+asyncpg:// (or postgresql+psycopg://)",
    "mysql": "mysql+aiomysql:// (or mysql+asyncmy://)",
    "mariadb": "mysql+aiomysql:// (or mysql+asyncmy://)",
    "sqlite": "sqlite+aiosqlite:///path/to/file.db",
}

MEMORY_REDIS = "memory://"
#: A SHA-256 digest written as hex, as sha256sum prints it.
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


def redact_url(url: str | URL) -> str:
    """``url`` with its password replaced by ``***``; unparseable text is replaced whole."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError:
        return "<unparseable URL>"
    return parsed.render_as_string(hide_password=True)


#: libpq's ``sslmode`` values, weakest first.
PG_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
#: libpq's TLS parameters naming files; ``sslrootcert=system`` (libpq 16) means the system's CAs.
_PG_TLS_FILES = ("sslrootcert", "sslcert", "sslkey", "sslcrl")


def normalize_database_url(raw: str, setting: str = "DATABASE_URL") -> str:
    """Return the async SQLAlchemy URL for ``raw``, or raise ConfigError naming ``setting``.

    Bare ``postgres://``/``postgresql://`` mean asyncpg; synchronous drivers are refused
    with the async driver to use instead. PostgreSQL URLs may carry libpq's TLS parameters
    (``sslmode``, ``sslrootcert``, ...: checked here, handed to each driver in the form it takes by
    :mod:`worker.db.connect`).
    """
    try:
        url = make_url(_libpq_hosts(raw, setting))
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ConfigError(setting, "is not a database URL (expected e.g. postgresql://host/db)") from None
    name = url.drivername
    if name in _BARE_SCHEMES:
        url = url.set(drivername=_BARE_SCHEMES[name])
    elif name == "sqlite":
        raise ConfigError(
            setting,
            f"{redact_url(url)} uses the synchronous sqlite3 driver; use {_ASYNC_ALTERNATIVE['sqlite']}",
        )
    if url.drivername not in ASYNC_DRIVERS:
        backend = url.get_backend_name()
        alternative = _ASYNC_ALTERNATIVE.get(backend)
        if alternative:
            raise ConfigError(
                setting,
                f"driver {url.drivername!r} is synchronous or unsupported; use {alternative}",
            )
        raise ConfigError(
            setting, f"unsupported database {backend!r}; supported: {', '.join(sorted(ASYNC_DRIVERS))}"
        )
    if url.get_backend_name() == "postgresql":
        _check_tls_parameters(url, setting)
    return url.render_as_string(hide_password=False)


#: libpq's URL: ``scheme://[user[:password]@]hosts[/database][?query]``, ``hosts`` comma-separated.
_LIBPQ_URL = re.compile(
    r"(?P<scheme>[\w+]+)://(?:(?P<userinfo>[^:/@]*(?::[^@]*)?)@)?(?P<hosts>[^/?]*)(?P<rest>[/?].*)?",
    re.DOTALL,
)
#: libpq's default port, which it gives each host listed without one.
PG_DEFAULT_PORT = 5432


def _libpq_hosts(raw: str, setting: str) -> str:
    """libpq's multi-host URL (``postgresql://u@h1:5432,h2:5433/db?...``, as providers hand them out),
    which SQLAlchemy's parser refuses, in SQLAlchemy's form (``postgresql://u@/db?host=h1:5432&host=...``).

    A host without a port gets libpq's 5432 (SQLAlchemy's asyncpg dialect wants every port); any other
    URL is returned as it is.
    """
    match = _LIBPQ_URL.fullmatch(raw)
    if match is None or "," not in match["hosts"]:
        return raw
    rest = match["rest"] or ""
    path, _, query = rest.partition("?")
    if re.search(r"(^|&)host=", query):
        raise ConfigError(setting, "give the hosts in the URL's host part or as host= parameters, not both")
    hosts = []
    for entry in match["hosts"].split(","):
        host, colon, port = entry.rpartition(":") if ":" in entry else (entry, "", "")
        if not host or "[" in entry or (colon and not port.isdigit()):
            problem = f"{entry!r} in the host list is not host or host:port (IPv6: use a name)"
            raise ConfigError(setting, problem)
        hosts.append(f"host={host}:{port or PG_DEFAULT_PORT}")
    userinfo = f"{match['userinfo']}@" if match["userinfo"] is not None else ""
    return f"{match['scheme']}://{userinfo}{path or '/'}?" + "&".join([*hosts, *filter(None, [query])])


def _check_tls_parameters(url: URL, setting: str) -> None:
    """A mistyped ``sslmode`` or a certificate file that is not there fails here, not at every connect."""
    mode = url.query.get("sslmode")
    if mode is not None and mode not in PG_SSLMODES:
        raise ConfigError(setting, f"sslmode={mode!r} is not one of {', '.join(PG_SSLMODES)}")
    for parameter in _PG_TLS_FILES:
        path = url.query.get(parameter)
        if not isinstance(path, str) or (parameter == "sslrootcert" and path == "system"):
            continue
        if not Path(path).is_file():
            raise ConfigError(setting, f"{parameter}={path}: no such file")


def default_application_name() -> str:
    """``eventworker:<host>:<pid>``, cut to what PostgreSQL keeps."""
    pid = str(os.getpid())
    room = MAX_APPLICATION_NAME - len("eventworker::") - len(pid)
    host = socket.gethostname().encode()[:room].decode(errors="ignore")  # PostgreSQL counts bytes
    return f"eventworker:{host}:{pid}"


PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]


class Settings(BaseSettings):
    """Everything a worker, a producer or the CLI can be told, with its default."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    database_url: str = Field(
        "postgresql+asyncpg://postgres@localhost:5432/eventworker",
        validation_alias=AliasChoices("DATABASE_URL", "EVENTWORKER_DATABASE_URL"),
        description="SQLAlchemy URL with an async driver; bare postgresql:// means asyncpg.",
    )
    database_read_url: str | None = Field(
        None,
        validation_alias=AliasChoices("DATABASE_READ_URL", "EVENTWORKER_DATABASE_READ_URL"),
        description="PostgreSQL: a streaming replica for heavy reads (exports, stats, status, the dashboard);"
        " ingestion, rollups, retention and handlers stay on DATABASE_URL. Unset: everything reads"
        " DATABASE_URL.",
    )
    read_replica_max_lag: PositiveFloat = Field(
        30.0,
        description="Seconds the DATABASE_READ_URL replica may be behind the primary; past that its reads go"
        " to DATABASE_URL instead, with a log line.",
    )
    redis_url: str = Field(
        "redis://localhost:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "EVENTWORKER_REDIS_URL"),
        description="Redis URL: redis://, rediss:// (TLS, ?ssl_ca_certs=...), unix://, or"
        " redis+sentinel://host:port[,host:port...]/<service> to follow a Sentinel-managed primary"
        " (docs/deploying.md); memory:// is the demo's in-process stand-in.",
    )
    queue_name: str = Field(DEFAULT_QUEUE, description="arq queue (Redis sorted set) to consume.")
    redis_retry_window: Annotated[float, Field(ge=0)] = Field(
        30.0,
        description="Seconds a worker keeps retrying a Redis command, reconnecting with back-off, while Redis"
        " is unreachable (restarting, say); past that it exits with the error for its supervisor to restart.",
    )
    db_pool_size: PositiveInt = Field(5, description="Connections kept open per worker process.")
    db_max_overflow: Annotated[int, Field(ge=0)] = Field(
        5, description="Extra connections allowed under load."
    )
    db_pool_timeout: PositiveFloat = Field(
        30.0, description="Seconds a job waits for a free connection before failing (and being retried)."
    )
    db_pool_pre_ping: bool = Field(
        True, description="Test a pooled connection before use (survives restarts)."
    )
    db_connect_timeout: PositiveFloat = Field(
        5.0,
        description="Seconds a new database connection may take, per host of a multi-host URL, before that"
        " host is given up (a host that drops packets instead of refusing); asyncpg's own default is 60 s."
        " psycopg counts whole seconds, at least 2. A connect_timeout in the URL wins.",
    )
    db_pooler: Literal["none", "transaction", "session"] = Field(
        "none",
        description="What sits between the workers and PostgreSQL: none; transaction (PgBouncer's"
        " pool_mode=transaction, Supabase's or RDS Proxy's pooler: no prepared statement or temporary table"
        " outlives a transaction); session (a session pooler: works as a direct connection).",
    )
    application_name: str | None = Field(
        None, description="Name tagging every database connection; default eventworker:<host>:<pid>."
    )
    tag_job_transactions: bool = Field(
        True, description="Add the job name to application_name while a job's transaction runs (PostgreSQL)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Lowest level logged."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="json for containers, console (coloured) for a terminal; auto picks by stderr."
    )
    max_jobs: PositiveInt = Field(10, description="Jobs one worker process runs at once (arq max_jobs).")
    poll_delay: PositiveFloat = Field(
        0.05, description="Seconds between queue polls; arq's 0.5 caps a worker at max_jobs/0.5 jobs/s."
    )
    job_timeout: PositiveFloat = Field(
        60.0,
        description="Seconds a job may run (then it is retried). A job cut off by a crash is re-run once"
        " arq's lock on it expires, this + 15 s after it started.",
    )
    shutdown_wait: Annotated[float, Field(ge=0)] = Field(
        8.0,
        description="Seconds a worker told to stop (SIGTERM/SIGINT) lets its running jobs finish, taking"
        " no new ones, before it hands the rest back to the queue; keep it under the stop grace period"
        " (docker: 10 s).",
    )
    max_tries: PositiveInt = Field(5, description="Tries per job before it is recorded as failed.")
    retry_base_delay: PositiveFloat = Field(1.0, description="Back-off before the 2nd try, doubled each try.")
    retry_max_delay: PositiveFloat = Field(60.0, description="Longest back-off between two tries.")
    health_check_interval: PositiveFloat = Field(
        10.0,
        description="Seconds between a worker's heartbeats in Redis (arq's health-check key and the worker's"
        " own record); a worker silent for 3 of them counts as stale.",
    )
    keep_result: Annotated[float, Field(ge=0)] = Field(
        3600.0, description="Seconds arq keeps a job's result in Redis."
    )
    batch_size: PositiveInt = Field(500, description="Events per ingest job when a producer splits a list.")
    enqueue_replicas: Annotated[int, Field(ge=0)] = Field(
        0,
        description="Redis replicas that must acknowledge each job `eventworker enqueue` sends (Redis WAIT)"
        " before it counts as sent, so that a failover keeps it; 0 counts the primary's acknowledgement"
        " (see docs/producers.md, durability).",
    )
    enqueue_replica_timeout: PositiveFloat = Field(
        1.0,
        description="Seconds `eventworker enqueue` waits for those replicas on each try; a job they did not"
        " acknowledge in time is tried again under its id, and after the last try the command fails.",
    )
    max_event_bytes: PositiveInt = Field(
        1_048_576, description="Largest accepted event, as JSON; larger ones become dead letters."
    )
    export_chunk_size: PositiveInt = Field(
        10_000,
        description="Rows fetched per round trip when streaming events out (exports, retention's export).",
    )
    export_dir: str = Field(
        "exports", description="Directory export jobs write to when given a bare file name."
    )
    rollup_settle_seconds: Annotated[float, Field(ge=0)] | None = Field(
        None,
        description="MySQL/MariaDB only: rollups skip events received in the last N seconds, which may still"
        " commit out of order; default 2 x job_timeout + 10.",
    )
    retention_days: PositiveFloat | None = Field(
        None, description="Delete events older than this many days (by received_at) daily; unset keeps all."
    )
    dead_letter_retention_days: PositiveFloat | None = Field(
        None, description="Delete dead letters older than this many days daily; unset keeps all."
    )
    retention_chunk_size: PositiveInt = Field(
        5000, description="Rows deleted per transaction by retention, so no lock is held for long."
    )
    retention_export_dir: str | None = Field(
        None, description="When set, retention first exports the events it deletes there (gzipped NDJSON)."
    )
    metrics_port: Annotated[int, Field(ge=0, le=65535)] | None = Field(
        None, description="Serve Prometheus metrics on this port (0 picks a free one); unset serves none."
    )
    metrics_host: str = Field("0.0.0.0", description="Address the metrics server listens on.")  # noqa: S104
    metrics_sample_interval: PositiveFloat = Field(
        5.0,
        description="Seconds between a worker's samples of queue depth, oldest job age and rollup lag"
        " for its metrics (taken only while metrics are served).",
    )
    dashboard_host: str = Field(
        "127.0.0.1",
        description="Address `eventworker dashboard` listens on; the page shows dead letters' payloads, so"
        " it stays on loopback unless told otherwise.",
    )
    dashboard_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        8080, description="Port `eventworker dashboard` listens on (0 picks a free one)."
    )
    dashboard_refresh: Annotated[int, Field(ge=1)] = Field(
        10, description="Seconds between the dashboard page's automatic reloads."
    )
    http_host: str = Field(
        "127.0.0.1",
        description="Address `eventworker serve` listens on. Without EVENTWORKER_PRODUCERS_FILE anyone who"
        " can connect may send events, so serve then listens on loopback only, whatever this says.",
    )
    http_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        8000, description="Port `eventworker serve` listens on (0 picks a free one)."
    )
    producers_file: str | None = Field(
        None,
        description="JSON file listing who may send events over HTTP: each producer's name, the SHA-256 of"
        " its bearer token and the source prefixes it may send (see docs/http.md); unset: no token needed.",
    )
    admin_token_sha256: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="SHA-256 (hex) of the operator API's admin token(s), comma-separated: reads and actions"
        " (requeue, retry, re-drive), and the dashboard's login. Unset: no admin access over HTTP.",
    )
    reader_token_sha256: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="SHA-256 (hex) of the operator API's read-only token(s), comma-separated.",
    )
    http_max_body_bytes: PositiveInt = Field(
        8_388_608, description="Largest request body `serve` reads; a larger one is refused with 413."
    )
    http_max_batch_events: PositiveInt = Field(
        10_000, description="Most events in one batched request; more is refused with 413."
    )
    http_body_timeout: PositiveFloat = Field(
        10.0,
        description="Seconds a client may take to send a request body; a slower one gets 408 and is"
        " disconnected (uvicorn alone does not bound it).",
    )
    http_rate_limit: PositiveInt | None = Field(
        10_000,
        description="Events each producer (or, without a producers file, each client address) may send per"
        " EVENTWORKER_HTTP_RATE_WINDOW, counted in Redis across every serve process; over it: 429. Unset: no"
        " limit.",
    )
    http_rate_window: PositiveFloat = Field(
        1.0, description="Seconds over which EVENTWORKER_HTTP_RATE_LIMIT counts."
    )
    http_max_queue_depth: PositiveInt | None = Field(
        10_000,
        description="Jobs waiting in the queue above which `serve` refuses events with 503 and Retry-After,"
        " so producers back off instead of filling Redis. Unset: no bound.",
    )
    http_trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Addresses or networks (CIDR) of reverse proxies whose X-Forwarded-For is believed,"
        " comma-separated; from anyone else the header is ignored.",
    )
    http_webhook_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins the CloudEvents webhook handshake (OPTIONS with WebHook-Request-Origin) allows,"
        " comma-separated; * allows any.",
    )
    http_session_hours: PositiveFloat = Field(
        8.0, description="Hours a dashboard login (its HttpOnly cookie) lasts."
    )
    http_csrf_seconds: PositiveFloat = Field(
        3600.0, description="Seconds a dashboard form's CSRF token stays valid."
    )
    handler_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Modules registering event handlers, as comma-separated import paths.",
    )
    startup_wait: Annotated[float, Field(ge=0)] = Field(
        30.0, description="Seconds a starting worker waits for the database before giving up."
    )
    sqlite_busy_timeout_ms: PositiveInt = Field(
        5000, description="SQLite: milliseconds a writer waits for the lock before failing."
    )
    strict_settings: bool = Field(
        False,
        description="Refuse to start (a configuration error, exit status 2) on an EVENTWORKER_* variable or"
        " an env file key that is no setting, a typo most likely; when false each is a warning naming the"
        " closest setting.",
    )

    @field_validator("database_url")
    @classmethod
    def _async_database_url(cls, value: str) -> str:
        try:
            return normalize_database_url(value)
        except ConfigError as exc:
            raise ValueError(exc.problem) from None

    @field_validator("database_read_url")
    @classmethod
    def _read_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        try:
            url = normalize_database_url(value, "DATABASE_READ_URL")
        except ConfigError as exc:
            raise ValueError(exc.problem) from None
        if make_url(url).get_backend_name() != "postgresql":
            raise ValueError("a read replica is for PostgreSQL (a hot standby)")
        return url

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if value == MEMORY_REDIS:
            return value
        try:
            parse_redis_url(value)
        except RedisUrlError as exc:
            raise ValueError(f"{exc} (or memory:// for the demo)") from None
        return value

    @field_validator(
        "handler_modules",
        "admin_token_sha256",
        "reader_token_sha256",
        "http_trusted_proxies",
        "http_webhook_origins",
        mode="before",
    )
    @classmethod
    def _module_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("admin_token_sha256", "reader_token_sha256")
    @classmethod
    def _sha256_hex(cls, value: list[str]) -> list[str]:
        for digest in value:
            if not _SHA256_HEX.fullmatch(digest):
                raise ValueError(
                    "each entry must be a SHA-256 digest: 64 hex digits (sha256sum of the token)"
                )
        return [digest.lower() for digest in value]

    @field_validator("http_trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an address or a network (CIDR)") from None
        return value

    @field_validator("application_name")
    @classmethod
    def _application_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or len(value.encode()) > MAX_APPLICATION_NAME):
            raise ValueError(f"must be 1 to {MAX_APPLICATION_NAME} bytes")
        return value

    @property
    def connection_name(self) -> str:
        """The application name connections are tagged with."""
        return self.application_name or default_application_name()

    def secrets(self) -> list[str]:
        """Passwords found in the configured URLs, for log redaction."""
        found = [make_url(url).password for url in (self.database_url, self.database_read_url) if url]
        if self.redis_url != MEMORY_REDIS:
            found += redis_url_secrets(self.redis_url)
        return [s for s in found if s]

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict fit for logs: URLs without passwords."""
        data = self.model_dump()
        data["database_url"] = redact_url(self.database_url)
        if self.database_read_url is not None:
            data["database_read_url"] = redact_url(self.database_read_url)
        data["redis_url"] = redact_redis_url(self.redis_url)
        return data


def redact_redis_url(url: str) -> str:
    """``url`` with its passwords (the user's, a Sentinel URL's ``sentinel_password``) replaced by ``***``."""
    return url if url == MEMORY_REDIS else _redact_redis_url(url)


def env_name(field: str) -> str:
    """The variable a setting is read from; ``field`` is a field name or an alias from an error's loc."""
    name = field.upper()
    return name if name in URL_VARIABLES else ENV_PREFIX + name.removeprefix(ENV_PREFIX)


def setting_variables() -> set[str]:
    """Every variable a setting is read from (upper case), aliases included."""
    names: set[str] = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice).upper() for choice in alias.choices)
        else:
            names.add(env_name(field_name))
    return names


@dataclass(frozen=True, slots=True)
class UnknownVariable:
    """A variable (or an env file's key) that no setting reads, and the setting it most resembles."""

    name: str
    file: str | None
    """The env file that holds it; None for the environment."""
    suggestion: str | None

    def problem(self, outcome: str) -> str:
        """``not a setting (in settings.env), <outcome>; did you mean EVENTWORKER_MAX_JOBS?``"""
        where = "" if self.file is None else f" (in {self.file})"
        closest = f"; did you mean {self.suggestion}?" if self.suggestion else ""
        return f"not a setting{where}, {outcome}{closest}"


def _closest(name: str, known: set[str]) -> str | None:
    """The known variable ``name`` most likely meant; the prefix, which all share, is left out of the
    comparison (it would make any two names look alike)."""
    upper = name.upper()
    if not upper.startswith(ENV_PREFIX) and ENV_PREFIX + upper in known:
        return ENV_PREFIX + upper  # an env file key written without the prefix
    bare: dict[str, str] = {}
    for variable in sorted(known, key=lambda v: (not v.startswith(ENV_PREFIX), v)):
        bare.setdefault(variable.removeprefix(ENV_PREFIX), variable)
    matches = difflib.get_close_matches(upper.removeprefix(ENV_PREFIX), list(bare), n=1, cutoff=0.75)
    return bare[matches[0]] if matches else None


def env_file_path(env_file: str | Path | None = None) -> Path | None:
    """The env file :func:`load_settings` reads: ``env_file``, else ``$EVENTWORKER_ENV_FILE``, else
    ``./settings.env`` when it exists; None when there is none. A file named but missing is a ConfigError."""
    named = env_file or os.environ.get(ENV_PREFIX + "ENV_FILE")
    path = Path(named or DEFAULT_ENV_FILE)
    if named and not path.is_file():
        raise ConfigError(ENV_PREFIX + "ENV_FILE", f"env file {path} does not exist")
    return path if path.is_file() else None


def unknown_variables(env_file: str | Path | None = None) -> list[UnknownVariable]:
    """``EVENTWORKER_*`` variables of the environment, and keys of the env file, that no setting reads.

    Names are compared without regard to case, as the settings read them; :data:`OTHER_VARIABLES` are known.
    """
    known = setting_variables() | set(OTHER_VARIABLES)
    found = [
        UnknownVariable(name, None, _closest(name, known))
        for name in sorted(os.environ)
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known
    ]
    path = env_file_path(env_file)
    if path is not None:
        found += [
            UnknownVariable(key, str(path), _closest(key, known))
            for key in dotenv_values(path)
            if key.upper() not in known
        ]
    return found


def load_settings(env_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Read settings from the environment and an env file; raise one ConfigError on the first bad value.

    The env file is ``env_file``, else ``$EVENTWORKER_ENV_FILE``, else ``./settings.env`` if it exists.
    With ``strict_settings``, a variable no setting reads (:func:`unknown_variables`) is an error too.
    """
    path = env_file_path(env_file)
    try:
        settings = Settings(_env_file=path, **overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "settings"
        message = str(first["msg"]).removeprefix("Value error, ")
        name = env_name(field)
        prefixed = ENV_PREFIX + name
        if name in URL_VARIABLES and name not in os.environ and prefixed in os.environ:
            name = prefixed  # the error names the variable that was actually set
        raise ConfigError(name, message) from None
    if settings.strict_settings:
        unknown = unknown_variables(env_file)
        if unknown:
            typo = unknown[0]
            raise ConfigError(typo.name, typo.problem(f"refused as {ENV_PREFIX}STRICT_SETTINGS is on"))
    return settings


def env_example() -> str:
    """``settings.env.example``: every setting with its description and default."""
    lines = [
        "# eventworker settings, with their defaults.",
        "# Copy to settings.env (read from the working directory, or from $EVENTWORKER_ENV_FILE),",
        "# or set the same names in the environment, which wins over the file.",
        "# DATABASE_URL, DATABASE_READ_URL and REDIS_URL may also be given with the EVENTWORKER_ prefix.",
        "# Generated by `eventworker config --example`.",
        "",
    ]
    for name, field in Settings.model_fields.items():
        lines += [f"# {line}" for line in textwrap.wrap(field.description or "", 100)]
        value = example_value(field)
        lines.append(f"{env_name(name)}={value}" if value else f"# {env_name(name)}=")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def example_value(field: FieldInfo) -> str:
    """A setting's default as its variable would be written; empty when it has none (unset)."""
    default = field.get_default(call_default_factory=True)
    if default is None or default == []:
        return ""
    if isinstance(default, list):
        return ",".join(map(str, default))
    return str(default).lower() if isinstance(default, bool) else str(default)
