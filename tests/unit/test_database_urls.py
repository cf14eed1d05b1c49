"""PostgreSQL URLs as platforms hand them out: libpq's TLS parameters, checked and given to each driver."""

from __future__ import annotations

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
    options = driver_options(url)
    assert dict(options.url.query) == {}
    assert options.url.host == "db.example.com"
    assert options.connect_args == {
        "dsn": f"postgresql://?sslmode=verify-full&sslrootcert={str(ca).replace('/', '%2F')}"
    }


def test_psycopg_keeps_the_tls_parameters_for_libpq():
    """psycopg passes the URL's query to libpq, which knows every TLS parameter: nothing moves."""
    url = make_url(normalize_database_url("postgresql+psycopg://u@h/app?sslmode=require"))
    options = driver_options(url)
    assert options.url is url
    assert options.connect_args == {}


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
