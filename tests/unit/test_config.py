"""Settings: database URL normalisation, where values come from, and errors a person can act on."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from worker.config import Settings, load_settings, normalize_database_url
from worker.config import settings as config
from worker.errors import ConfigError

SECRET = "hunter2-s3cret"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("postgres://u:pw@db.example.com/app", "postgresql+asyncpg://u:pw@db.example.com/app"),
        ("postgresql://db.example.com:5433/app", "postgresql+asyncpg://db.example.com:5433/app"),
        ("postgresql://u@h/app?sslmode=require", "postgresql+asyncpg://u@h/app?sslmode=require"),
        ("postgresql+asyncpg://u:pw@h/app", "postgresql+asyncpg://u:pw@h/app"),
        ("postgresql+psycopg://u:pw@h/app", "postgresql+psycopg://u:pw@h/app"),
        ("postgresql+psycopg_async://h/app", "postgresql+psycopg_async://h/app"),
        ("mysql://u:pw@h:3306/app", "mysql+aiomysql://u:pw@h:3306/app"),
        ("mariadb://h/app", "mysql+aiomysql://h/app"),
        ("mysql+asyncmy://h/app", "mysql+asyncmy://h/app"),
        (
            "sqlite+aiosqlite:////var/lib/eventworker/events.db",
            "sqlite+aiosqlite:////var/lib/eventworker/events.db",
        ),
        # Percent-escapes in a password survive the round trip.
        ("postgresql://u:p%40ss@h/app", "postgresql+asyncpg://u:p%40ss@h/app"),
    ],
)
def test_normalize_database_url_accepts_async_urls(raw, expected):
    """Bare postgres/mysql schemes get the default async driver; async drivers are kept as given."""
    assert normalize_database_url(raw) == expected


@pytest.mark.parametrize(
    ("raw", "advice"),
    [
        ("postgresql+psycopg2://u:pw@h/app", "postgresql+asyncpg://"),
        ("postgresql+pg8000://h/app", "postgresql+asyncpg://"),
        ("mysql+pymysql://h/app", "mysql+aiomysql://"),
        ("mysql+mysqldb://h/app", "mysql+aiomysql://"),
        ("mariadb+pymysql://h/app", "mysql+aiomysql://"),
        ("sqlite://", "sqlite+aiosqlite://"),
        ("sqlite:///events.db", "sqlite+aiosqlite://"),
        ("sqlite+pysqlite:///events.db", "sqlite+aiosqlite://"),
    ],
)
def test_normalize_database_url_refuses_sync_drivers_naming_the_async_one(raw, advice):
    """A synchronous driver is a ConfigError on DATABASE_URL that says which async driver to use."""
    with pytest.raises(ConfigError) as caught:
        normalize_database_url(raw)
    assert caught.value.setting == "DATABASE_URL"
    assert advice in caught.value.problem


@pytest.mark.parametrize(
    ("raw", "backend"),
    [
        ("oracle://h/app", "oracle"),
        ("mssql+pyodbc://h/app", "mssql"),
        ("cockroachdb://h/app", "cockroachdb"),
    ],
)
def test_normalize_database_url_refuses_unsupported_backends(raw, backend):
    """Other databases are refused, naming the backend and listing the supported drivers."""
    with pytest.raises(ConfigError) as caught:
        normalize_database_url(raw)
    assert f"unsupported database {backend!r}" in caught.value.problem
    assert "postgresql+asyncpg" in caught.value.problem


@pytest.mark.parametrize("raw", ["", "not a url", "://", "localhost:5432", "postgresql"])
def test_normalize_database_url_refuses_garbage(raw):
    """Text that is not a URL at all is a ConfigError, not a SQLAlchemy ArgumentError."""
    with pytest.raises(ConfigError, match="is not a database URL"):
        normalize_database_url(raw)


def test_normalize_database_url_refuses_non_numeric_port():
    """A URL whose port is not a number is a ConfigError on DATABASE_URL."""
    with pytest.raises(ConfigError):
        normalize_database_url("postgresql://u:pw@db.example.com:5432x/app")


def test_defaults_without_environment():
    """With nothing set, settings are the documented defaults."""
    settings = load_settings()
    assert settings.database_url == "postgresql+asyncpg://postgres@localhost:5432/eventworker"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.queue_name == "arq:queue"
    assert (settings.max_tries, settings.batch_size, settings.log_level) == (5, 500, "INFO")


@pytest.mark.parametrize("variable", ["DATABASE_URL", "EVENTWORKER_DATABASE_URL"])
def test_database_url_from_either_variable(monkeypatch, variable):
    """The database URL is read from DATABASE_URL or EVENTWORKER_DATABASE_URL and normalised."""
    monkeypatch.setenv(variable, "postgres://u:pw@db.example.com/app")
    assert load_settings().database_url == "postgresql+asyncpg://u:pw@db.example.com/app"


@pytest.mark.parametrize("variable", ["REDIS_URL", "EVENTWORKER_REDIS_URL"])
def test_redis_url_from_either_variable(monkeypatch, variable):
    """The Redis URL is read from REDIS_URL or EVENTWORKER_REDIS_URL."""
    monkeypatch.setenv(variable, "rediss://cache.example.com:6380/2")
    assert load_settings().redis_url == "rediss://cache.example.com:6380/2"


def test_prefixed_variables(monkeypatch):
    """Every other setting is read from EVENTWORKER_<NAME>, converted to its type."""
    monkeypatch.setenv("EVENTWORKER_MAX_JOBS", "3")
    monkeypatch.setenv("EVENTWORKER_POLL_DELAY", "0.2")
    monkeypatch.setenv("EVENTWORKER_DB_POOL_PRE_PING", "false")
    monkeypatch.setenv("EVENTWORKER_LOG_LEVEL", "DEBUG")
    settings = load_settings()
    assert (settings.max_jobs, settings.poll_delay, settings.db_pool_pre_ping) == (3, 0.2, False)
    assert settings.log_level == "DEBUG"


def test_overrides_win_over_environment(monkeypatch):
    """Keyword overrides to load_settings beat the environment."""
    monkeypatch.setenv("EVENTWORKER_MAX_JOBS", "3")
    assert load_settings(max_jobs=8).max_jobs == 8


def test_env_file_given_explicitly(tmp_path):
    """load_settings(env_file=...) reads settings from that file."""
    env_file = tmp_path / "worker.env"
    env_file.write_text("DATABASE_URL=mysql://u:pw@h/app\nEVENTWORKER_MAX_TRIES=9\n")
    settings = load_settings(env_file=env_file)
    assert settings.database_url == "mysql+aiomysql://u:pw@h/app"
    assert settings.max_tries == 9


def test_environment_wins_over_env_file(tmp_path, monkeypatch):
    """A variable set in the environment beats the same one in the env file."""
    env_file = tmp_path / "worker.env"
    env_file.write_text("EVENTWORKER_MAX_TRIES=9\n")
    monkeypatch.setenv("EVENTWORKER_MAX_TRIES", "2")
    assert load_settings(env_file=env_file).max_tries == 2


def test_env_file_named_by_variable(tmp_path, monkeypatch):
    """EVENTWORKER_ENV_FILE names the env file when none is passed."""
    env_file = tmp_path / "elsewhere.env"
    env_file.write_text("EVENTWORKER_BATCH_SIZE=42\n")
    monkeypatch.setenv("EVENTWORKER_ENV_FILE", str(env_file))
    assert load_settings().batch_size == 42


def test_settings_env_in_working_directory_is_read(tmp_path):
    """./settings.env is read when present (the fixture runs each test in its own tmp_path)."""
    assert Path.cwd() == tmp_path
    (tmp_path / "settings.env").write_text("EVENTWORKER_QUEUE_NAME=orders\n")
    assert load_settings().queue_name == "orders"


def test_missing_explicit_env_file(tmp_path):
    """An env file passed explicitly that does not exist is a ConfigError naming the path."""
    missing = tmp_path / "nope.env"
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=missing)
    assert caught.value.setting == "EVENTWORKER_ENV_FILE"
    assert str(missing) in str(caught.value)


def test_missing_env_file_named_by_variable(tmp_path, monkeypatch):
    """EVENTWORKER_ENV_FILE naming a file that does not exist is a ConfigError, like env_file=."""
    monkeypatch.setenv("EVENTWORKER_ENV_FILE", str(tmp_path / "typo.env"))
    with pytest.raises(ConfigError):
        load_settings()


def test_invalid_value_in_env_file(tmp_path):
    """A bad value in the env file is reported under its variable name."""
    env_file = tmp_path / "worker.env"
    env_file.write_text("EVENTWORKER_MAX_JOBS=none\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=env_file)
    assert caught.value.setting == "EVENTWORKER_MAX_JOBS"


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("EVENTWORKER_MAX_JOBS", "0", "greater than or equal to 1"),
        ("EVENTWORKER_MAX_JOBS", "many", "valid integer"),
        ("EVENTWORKER_POLL_DELAY", "0", "greater than 0"),
        ("EVENTWORKER_DB_MAX_OVERFLOW", "-1", "greater than or equal to 0"),
        ("EVENTWORKER_LOG_LEVEL", "LOUD", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
        ("EVENTWORKER_LOG_FORMAT", "xml", "'auto', 'json' or 'console'"),
        ("EVENTWORKER_DB_POOL_PRE_PING", "maybe", "valid boolean"),
        ("EVENTWORKER_APPLICATION_NAME", "x" * 64, "1 to 63 bytes"),
        ("DATABASE_URL", "mysql+pymysql://u:pw@h/app", "mysql+aiomysql://"),
        ("DATABASE_URL", "sqlite:///events\n.db", "sqlite+aiosqlite://"),
        ("REDIS_URL", "http://x", "redis://"),
    ],
)
def test_invalid_value_is_one_line_config_error_naming_the_variable(monkeypatch, variable, value, fragment):
    """A bad value is one ConfigError whose str() is a single line starting with the variable."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert caught.value.setting == variable
    assert message.startswith(f"{variable}: ")
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("variable", "value"),
    [("EVENTWORKER_DATABASE_URL", "mysql+pymysql://h/app"), ("EVENTWORKER_REDIS_URL", "http://x")],
)
def test_error_names_the_prefixed_variable_that_was_set(monkeypatch, variable, value):
    """A bad EVENTWORKER_DATABASE_URL/EVENTWORKER_REDIS_URL is reported under that name, the one set."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.setting == variable


def test_invalid_override_names_the_variable():
    """A bad keyword override is reported under the variable that would set it."""
    with pytest.raises(ConfigError) as caught:
        load_settings(max_tries=0)
    assert caught.value.setting == "EVENTWORKER_MAX_TRIES"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_URL", f"postgresql+psycopg2://admin:{SECRET}@db.example.com/app"),
        ("DATABASE_URL", f"mysql+pymysql://admin:{SECRET}@db.example.com/app"),
        ("DATABASE_URL", f"sqlite://admin:{SECRET}@/events.db"),
        ("DATABASE_URL", f"oracle://admin:{SECRET}@db.example.com/app"),
        ("DATABASE_URL", f"postgresql://admin:{SECRET}@db.example.com:54x/app"),
        ("REDIS_URL", f"http://admin:{SECRET}@cache.example.com"),
        ("EVENTWORKER_DATABASE_URL", f"mysql+mysqldb://admin:{SECRET}@db.example.com/app"),
    ],
)
def test_config_error_never_shows_the_password(monkeypatch, variable, value):
    """ConfigError messages about a URL never contain its password."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value)


def test_redacted_hides_both_passwords():
    """Settings.redacted() shows the URLs with *** in place of their passwords, and nothing else secret."""
    settings = load_settings(
        database_url=f"postgresql://admin:{SECRET}@db.example.com/app",
        redis_url=f"redis://:{SECRET}x@cache.example.com:6379/0",
    )
    redacted = settings.redacted()
    assert redacted["database_url"] == "postgresql+asyncpg://admin:***@db.example.com/app"
    assert redacted["redis_url"] == "redis://:***@cache.example.com:6379/0"
    assert SECRET not in repr(redacted)
    assert redacted["max_tries"] == settings.max_tries


@pytest.mark.parametrize(
    ("database_url", "redis_url", "expected"),
    [
        (f"postgresql://admin:{SECRET}@h/app", "redis://:r3dis-pw@h:6379/0", [SECRET, "r3dis-pw"]),
        (f"mysql://admin:{SECRET}@h/app", "rediss://user:r3dis-pw@h:6380/0", [SECRET, "r3dis-pw"]),
        ("postgresql://admin@h/app", "redis://h:6379/0", []),
        ("sqlite+aiosqlite:///events.db", "memory://", []),
        # The database password is decoded: that is the string a driver would ever print.
        ("postgresql://admin:p%40ss-word@h/app", "redis://h", ["p@ss-word"]),
    ],
)
def test_secrets_lists_the_passwords(database_url, redis_url, expected):
    """secrets() returns the database and Redis passwords, for log redaction."""
    settings = load_settings(database_url=database_url, redis_url=redis_url)
    assert settings.secrets() == expected


def test_default_application_name(monkeypatch):
    """Connections are tagged eventworker:<host>:<pid> by default."""
    monkeypatch.setattr(config.socket, "gethostname", lambda: "worker-7")
    assert load_settings().connection_name == f"eventworker:worker-7:{os.getpid()}"


def test_default_application_name_fits_postgres_limit(monkeypatch):
    """A long host name is cut so the default name fits PostgreSQL's 63 bytes and keeps the pid."""
    monkeypatch.setattr(config.socket, "gethostname", lambda: "h" * 200)
    name = config.default_application_name()
    assert len(name.encode()) == 63
    assert re.fullmatch(rf"eventworker:h+:{os.getpid()}", name)


def test_default_application_name_fits_with_non_ascii_host(monkeypatch):
    """A non-ASCII host name is cut by bytes too, so the name still fits in 63 bytes."""
    monkeypatch.setattr(config.socket, "gethostname", lambda: "härtetest-" * 10)
    assert len(config.default_application_name().encode()) <= 63


@pytest.mark.parametrize("name", ["a", "x" * 63, "é" * 31])
def test_explicit_application_name_up_to_63_bytes(name):
    """An explicit application_name of 1 to 63 bytes is used as the connection name."""
    assert load_settings(application_name=name).connection_name == name


@pytest.mark.parametrize("name", ["", "x" * 64, "é" * 32])
def test_explicit_application_name_over_63_bytes_is_refused(name):
    """An empty application_name or one over 63 bytes (not characters) is refused."""
    with pytest.raises(ConfigError, match="EVENTWORKER_APPLICATION_NAME: must be 1 to 63 bytes"):
        load_settings(application_name=name)


def test_settings_are_frozen():
    """Settings cannot be changed after loading (a worker's settings are fixed for its life)."""
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.max_jobs = 99  # type: ignore[misc]
    assert isinstance(settings, Settings)
