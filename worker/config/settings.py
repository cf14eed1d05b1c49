"""The one settings class (pydantic-settings), every field described; read by :mod:`worker.config.loading`."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

from worker.config.database_url import normalize_database_url, redact_url
from worker.config.names import ENV_PREFIX
from worker.constants import DEFAULT_QUEUE, MAX_APPLICATION_NAME
from worker.errors import ConfigError
from worker.protocol.redis_url import RedisUrlError, parse_redis_url, redis_url_secrets
from worker.protocol.redis_url import redact_redis_url as _redact_redis_url

MEMORY_REDIS = "memory://"
#: A SHA-256 digest written as hex, as sha256sum prints it.
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


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
    rollup_transaction_rows: PositiveInt = Field(
        100_000,
        description="Events one rollup transaction counts at most, however large the transaction that"
        " stored them (a backfill's is counted in parts): a backlog is caught up in short transactions.",
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
    partition_interval: Literal["none", "hour", "day", "week", "month"] = Field(
        "day",
        description="PostgreSQL: events (and the retention of them) by time partitions of this size, when"
        " `eventworker migrate` makes a new database or `eventworker partition` converts one; none keeps one"
        " table. MySQL/MariaDB and SQLite always keep one table.",
    )
    partitions_ahead: PositiveInt = Field(
        3,
        description="PostgreSQL, partitioned events: intervals of partitions the hourly maintain_partitions"
        " job keeps made ahead of now (an event whose partition is missing gets it made then and there).",
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
    http_session_secret: SecretStr | None = Field(
        None,
        description="Secret (32 characters or more) that signs dashboard logins and forms; give every serve"
        " process of a deployment the same one. Unset: a random one per process, so a login holds only on"
        " the process that made it, until it restarts.",
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

    @field_validator("http_session_secret")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be 32 characters or more (e.g. the output of `openssl rand -hex 32`)")
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
        """Passwords found in the configured URLs, and the session secret, for log redaction."""
        found = [make_url(url).password for url in (self.database_url, self.database_read_url) if url]
        if self.redis_url != MEMORY_REDIS:
            found += redis_url_secrets(self.redis_url)
        if self.http_session_secret is not None:
            found.append(self.http_session_secret.get_secret_value())
        return [s for s in found if s]

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict fit for logs: URLs without passwords."""
        data = self.model_dump()
        data["database_url"] = redact_url(self.database_url)
        if self.database_read_url is not None:
            data["database_read_url"] = redact_url(self.database_read_url)
        data["redis_url"] = redact_redis_url(self.redis_url)
        if self.http_session_secret is not None:
            data["http_session_secret"] = "***"  # noqa: S105 - the mask shown instead of the secret
        return data


def redact_redis_url(url: str) -> str:
    """``url`` with its passwords (the user's, a Sentinel URL's ``sentinel_password``) replaced by ``***``."""
    return url if url == MEMORY_REDIS else _redact_redis_url(url)
