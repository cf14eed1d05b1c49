"""PostgreSQL over TLS: the URLs hosting platforms hand out work as given, with asyncpg and psycopg.

Against a cluster of the tests' own (``tls_cluster``: ``ssl = on``, a certificate for ``localhost``
signed by a CA the test made, ``hostssl`` lines only), the libpq parameters in the URL decide:
``sslmode=require`` encrypts, ``verify-ca`` checks the certificate against ``sslrootcert``,
``verify-full`` the host name too. What the server or its certificate refuses ends a command with
one line naming ``DATABASE_URL``.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from pgcluster import Certificates
from sqlalchemy import text
from support import process_env

from worker.config import load_settings
from worker.db.engine import Database
from worker.errors import ConfigError

pytestmark = pytest.mark.integration

DRIVERS = ("asyncpg", "psycopg")
PASSWORD = "tls-pw-5c1e9"


@pytest.fixture(scope="module")
def tls_database(tls_cluster) -> str:
    """A database on the TLS cluster, migrated by the first test that runs ``eventworker migrate``."""
    name = f"ew_tls_{uuid.uuid4().hex[:8]}"
    tls_cluster.execute_now(f'CREATE DATABASE "{name}"')
    return name


def _scheme(driver: str) -> str | None:
    """The bare ``postgres://`` a platform hands out means asyncpg; psycopg is asked for by name."""
    return None if driver == "asyncpg" else driver


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=process_env(DATABASE_URL=url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _tls_of_own_connection(url: str) -> tuple[bool, str | None]:
    """(encrypted, TLS version) of the connection, as ``pg_stat_ssl`` on the server sees it."""
    db = Database.from_settings(load_settings(database_url=url))
    try:
        async with db.transaction() as session:
            row = (
                await session.execute(
                    text("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                )
            ).one()
            return bool(row.ssl), row.version
    finally:
        await db.dispose()


@pytest.mark.parametrize("driver", DRIVERS)
async def test_sslmode_require_connects_encrypted(tls_cluster, tls_database, driver):
    """``postgres://user:pass@host/db?sslmode=require``, as given: the server sees an encrypted connection."""
    url = tls_cluster.url(tls_database, driver=_scheme(driver), password=PASSWORD, sslmode="require")
    assert url.startswith(("postgres://", "postgresql+psycopg://"))
    encrypted, version = await _tls_of_own_connection(url)
    assert encrypted, "pg_stat_ssl says the connection is not encrypted"
    assert str(version).startswith("TLSv1.")
    migrated = _cli(url, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert PASSWORD not in migrated.stdout + migrated.stderr


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize(("mode", "host"), [("verify-ca", "127.0.0.1"), ("verify-full", "localhost")])
async def test_verified_modes_connect_when_the_certificate_checks_out(
    tls_cluster, tls_database, driver, mode, host
):
    """``verify-ca`` checks the CA only (any host name); ``verify-full`` also the name connected by."""
    ca = tls_cluster.certificates.ca
    url = tls_cluster.url(tls_database, driver=_scheme(driver), host=host, sslmode=mode, sslrootcert=str(ca))
    encrypted, _ = await _tls_of_own_connection(url)
    assert encrypted


def _one_refusal_line(done: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exactly one line on stderr, naming DATABASE_URL, and no traceback."""
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output, output
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("eventworker: DATABASE_URL: "), lines[0]
    assert PASSWORD not in output
    return lines[0]


@pytest.mark.parametrize("driver", DRIVERS)
def test_verify_full_with_the_wrong_host_name_is_refused_in_one_line(tls_cluster, tls_database, driver):
    """The certificate names ``localhost``: ``verify-full`` to 127.0.0.1 is refused, with why and the fix."""
    ca = tls_cluster.certificates.ca
    url = tls_cluster.url(
        tls_database, driver=_scheme(driver), password=PASSWORD, sslmode="verify-full", sslrootcert=str(ca)
    )
    line = _one_refusal_line(_cli(url, "migrate"))
    assert "127.0.0.1" in line
    assert "mismatch" in line or "does not match host name" in line, line
    assert "connect by a name the certificate has" in line


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_certificate_from_another_ca_is_refused(tls_cluster, tls_database, driver, tmp_path):
    """``verify-ca`` with a CA that did not sign the server's certificate: refused, in one line."""
    stranger = Certificates.make(tmp_path / "other-ca")
    url = tls_cluster.url(
        tls_database, driver=_scheme(driver), sslmode="verify-ca", sslrootcert=str(stranger.ca)
    )
    line = _one_refusal_line(_cli(url, "stats"))
    assert "certificate" in line, line


@pytest.mark.parametrize("driver", DRIVERS)
def test_sslmode_disable_against_a_tls_only_server_is_refused_in_one_line(tls_cluster, tls_database, driver):
    """The server accepts only TLS (``hostssl``): ``sslmode=disable`` is refused, naming the fix."""
    url = tls_cluster.url(tls_database, driver=_scheme(driver), password=PASSWORD, sslmode="disable")
    line = _one_refusal_line(_cli(url, "migrate"))
    assert "no pg_hba.conf entry" in line, line
    assert "no encryption" in line
    assert "sslmode=require" in line


def test_a_worker_refuses_to_start_at_once_on_a_refused_certificate(tls_cluster, tls_database, redis_url):
    """A worker does not spend its start-up wait retrying what no retry fixes: one log line, then exit."""
    ca = tls_cluster.certificates.ca
    url = tls_cluster.url(tls_database, sslmode="verify-full", sslrootcert=str(ca), password=PASSWORD)
    done = subprocess.run(
        [sys.executable, "-m", "worker", "run"],
        env=process_env(DATABASE_URL=url, REDIS_URL=redis_url, EVENTWORKER_STARTUP_WAIT="60"),
        capture_output=True,
        text=True,
        timeout=30,  # far under the 60 s start-up wait
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Traceback" not in output, output
    refused = [line for line in output.splitlines() if "worker.refused_to_start" in line]
    assert len(refused) == 1, output
    assert "DATABASE_URL" in refused[0]
    assert "certificate" in refused[0]
    assert PASSWORD not in output


def test_a_missing_root_certificate_file_is_a_configuration_error(tls_cluster, tmp_path):
    """``sslrootcert`` naming no file fails as the settings are read, naming DATABASE_URL (exit status 2)."""
    missing = tmp_path / "nowhere" / "ca.pem"
    url = tls_cluster.url("postgres", sslmode="verify-full", sslrootcert=str(missing))
    with pytest.raises(ConfigError, match=r"sslrootcert=.*no such file") as caught:
        load_settings(database_url=url)
    assert caught.value.setting == "DATABASE_URL"
    done = _cli(url, "status")
    assert done.returncode == 2
    assert done.stderr.strip().startswith("eventworker: configuration error: DATABASE_URL: sslrootcert=")
