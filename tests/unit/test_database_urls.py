"""PostgreSQL URLs as platforms hand them out: libpq's TLS parameters, checked and given to each driver."""

from __future__ import annotations

import re

import pytest
from sqlalchemy.engine import make_url

from worker.config import load_settings, normalize_database_url
from worker.db.connect import driver_options
from worker.errors import ConfigError


@pytest.mark.parametrize("mode", ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"])
def test_every_libpq_sslmode_is_accepted(mode):
    """The six sslmode values libpq knows are kept in the URL as given."""
    assert normalize_database_url(f"postgres://u@h/app?sslmode={mode}").endswith(f"?sslmode={mode}")


def test_a_mistyped_sslmode_is_a_config_error_listing_the_values():
    """``sslmode=verify_full`` (underscore) fails when the settings are read, not at each connect."""
    with pytest.raises(ConfigError, match="sslmode='verify_full' is not one of disable, allow") as caught:
        normalize_database_url("postgres://u@h/app?sslmode=verify_full")
    assert caught.value.setting == "DATABASE_URL"


@pytest.mark.parametrize("parameter", ["sslrootcert", "sslcert", "sslkey", "sslcrl"])
def test_a_tls_file_that_is_not_there_is_a_config_error(parameter, tmp_path):
    """A certificate or key file named in the URL must exist."""
    with pytest.raises(ConfigError, match=f"{parameter}=.*missing.pem: no such file"):
        normalize_database_url(f"postgres://u@h/app?sslmode=verify-full&{parameter}={tmp_path}/missing.pem")


def test_sslrootcert_system_needs_no_file():
    """libpq 16's ``sslrootcert=system`` (the system's CAs) is not a file name."""
    normalize_database_url("postgres://u@h/app?sslmode=verify-full&sslrootcert=system")


def test_asyncpg_gets_the_tls_parameters_in_a_dsn_of_their_own(tmp_path):
    """asyncpg refuses sslmode/sslrootcert as keywords: they leave the URL for a DSN holding only them."""
    ca = tmp_path / "ca.pem"
    ca.write_text("not read here")
    url = make_url(
        normalize_database_url(f"postgres://u:pw@db.example.com/app?sslmode=verify-full&sslrootcert={ca}")
    )
    options = driver_options(url, 5.0)
    assert dict(options.url.query) == {}
    assert options.url.host == "db.example.com"
    assert options.connect_args == {
        "dsn": f"postgresql://?sslmode=verify-full&sslrootcert={str(ca).replace('/', '%2F')}",
        "timeout": 5.0,
    }


def test_psycopg_keeps_the_tls_parameters_for_libpq():
    """psycopg passes the URL's query to libpq, which knows every TLS parameter: nothing moves."""
    url = make_url(normalize_database_url("postgresql+psycopg://u@h/app?sslmode=require"))
    options = driver_options(url, 5.0)
    assert options.url is url
    assert options.connect_args == {"connect_timeout": 5}


def test_an_error_names_the_variable_the_url_came_from(monkeypatch):
    """A bad URL is reported under the variable it was read from."""
    with pytest.raises(ConfigError) as caught:
        normalize_database_url("postgres://u@h/app?sslmode=sometimes", setting="DATABASE_READ_URL")
    assert caught.value.setting == "DATABASE_READ_URL"
    monkeypatch.setenv("DATABASE_URL", "postgres://u@h/app?sslmode=sometimes")
    with pytest.raises(ConfigError, match=r"^DATABASE_URL: sslmode="):
        load_settings()


def test_a_read_url_is_normalised_and_its_password_kept_out_of_logs(monkeypatch):
    """DATABASE_READ_URL is read like DATABASE_URL; its password is a secret and redacted."""
    monkeypatch.setenv(
        "DATABASE_READ_URL", "postgres://reader:r3ad-pw@replica.example.com/app?sslmode=require"
    )
    settings = load_settings()
    assert (
        settings.database_read_url
        == "postgresql+asyncpg://reader:r3ad-pw@replica.example.com/app?sslmode=require"
    )
    assert "r3ad-pw" in settings.secrets()
    assert settings.redacted()["database_read_url"] == (
        "postgresql+asyncpg://reader:***@replica.example.com/app?sslmode=require"
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("mysql://h/app", "a read replica is for PostgreSQL"),
        ("postgresql+psycopg2://h/app", "is synchronous or unsupported"),
        ("postgres://h/app?sslmode=on", "sslmode='on' is not one of"),
    ],
)
def test_a_bad_read_url_names_database_read_url(monkeypatch, value, problem):
    """Errors in the read URL name DATABASE_READ_URL."""
    monkeypatch.setenv("DATABASE_READ_URL", value)
    with pytest.raises(ConfigError, match=problem) as caught:
        load_settings()
    assert caught.value.setting == "DATABASE_READ_URL"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "postgresql://u:pw@h1:5432,h2:5433/app?target_session_attrs=read-write",
            "postgresql+asyncpg://u:pw@/app?host=h1:5432&host=h2:5433&target_session_attrs=read-write",
        ),
        ("postgres://db-a,db-b:6432/app", "postgresql+asyncpg:///app?host=db-a:5432&host=db-b:6432"),
        (
            "postgresql+psycopg://u:p%40ss@a.example.com:5432,b.example.com:5433/app?sslmode=require",
            "postgresql+psycopg://u:p%40ss@/app?host=a.example.com:5432&host=b.example.com:5433&sslmode=require",
        ),
        (  # SQLAlchemy's own form passes as it is
            "postgresql+asyncpg://user@/app?host=h1:5432&host=h2:5433&target_session_attrs=read-write",
            "postgresql+asyncpg://user@/app?host=h1:5432&host=h2:5433&target_session_attrs=read-write",
        ),
    ],
)
def test_libpq_multi_host_urls_become_sqlalchemys_form(raw, expected):
    """``h1:p1,h2:p2`` in the host part, which SQLAlchemy's parser refuses, becomes SQLAlchemy's
    ``?host=h1:p1&host=h2:p2``; a host without a port gets libpq's 5432."""
    assert normalize_database_url(raw).replace("%3A", ":") == expected
    hosts = make_url(normalize_database_url(raw)).query["host"]
    assert isinstance(hosts, tuple)
    assert len(hosts) == 2


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("postgresql://h1,h2/app?host=h3", "in the URL's host part or as host= parameters, not both"),
        ("postgresql://h1,[::1]:5432/app", "is not host or host:port"),
        ("postgresql://h1,h2:port/app", "'h2:port' in the host list is not host or host:port"),
    ],
)
def test_a_bad_host_list_is_a_config_error(raw, problem):
    with pytest.raises(ConfigError, match=re.escape(problem)):
        normalize_database_url(raw)


def test_the_connect_timeout_reaches_each_driver_in_its_own_form():
    """asyncpg's ``timeout`` in seconds; libpq's ``connect_timeout`` in whole seconds, at least 2; the
    URL's own ``connect_timeout`` wins over the setting."""
    asyncpg_url = make_url("postgresql+asyncpg://h/app")
    assert driver_options(asyncpg_url, 1.5).connect_args == {"timeout": 1.5}
    from_url = driver_options(make_url("postgresql+asyncpg://h/app?connect_timeout=7"), 1.5)
    assert from_url.connect_args == {"timeout": 7.0}
    assert "connect_timeout" not in from_url.url.query  # asyncpg would refuse it as a keyword
    assert driver_options(make_url("postgresql+psycopg://h/app"), 1.5).connect_args == {"connect_timeout": 2}
    assert driver_options(make_url("postgresql+psycopg://h/app"), 7.2).connect_args == {"connect_timeout": 8}
    assert driver_options(make_url("postgresql+psycopg://h/app?connect_timeout=9"), 1.5).connect_args == {}
    assert driver_options(make_url("mysql+aiomysql://h/app"), 1.5).connect_args == {}
