"""Multi-host URLs: a connection finds the primary among several hosts, and a silent host costs only
the connect timeout.

Both URL forms (SQLAlchemy's ``?host=h1:p1&host=h2:p2`` and libpq's ``h1:p1,h2:p2``) with both
PostgreSQL drivers, against a real primary and its streaming replica (``replication``), a port nothing
listens on (refused at once) and a socket that accepts connections but never answers (what a host
behind a firewall that drops packets looks like to a client, once the kernel has completed the
handshake).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from pgcluster import free_port
from sqlalchemy import text
from support import process_env

from worker.config import load_settings
from worker.db.engine import Database
from worker.db.failures import is_connection_error
from worker.errors import DatabaseUnavailable

pytestmark = pytest.mark.integration

DRIVERS = ("asyncpg", "psycopg")
LOCAL = "127.0.0.1"


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose socket completes TCP handshakes (the kernel's backlog) but never says a word."""
    with socket.socket() as listener:
        listener.bind((LOCAL, 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


def sqlalchemy_form(driver: str, ports: list[int], **query: str) -> str:
    hosts = "&".join(f"host={LOCAL}:{port}" for port in ports)
    extra = "".join(f"&{name}={value}" for name, value in query.items())
    return f"postgresql+{driver}://postgres@/postgres?{hosts}{extra}"


def libpq_form(driver: str, ports: list[int], **query: str) -> str:
    """As providers hand them out: bare ``postgresql://`` for asyncpg, hosts in the host part."""
    scheme = "postgresql" if driver == "asyncpg" else f"postgresql+{driver}"
    hosts = ",".join(f"{LOCAL}:{port}" for port in ports)
    params = "&".join(f"{name}={value}" for name, value in query.items())
    return f"{scheme}://postgres@{hosts}/postgres" + (f"?{params}" if params else "")


async def _server(url: str, *, replica: bool = False, **settings: float) -> tuple[int, bool]:
    """(port, in recovery) of the server a new connection reached; ``replica``: as DATABASE_READ_URL."""
    named = {"database_read_url": url} if replica else {"database_url": url}
    db = Database.from_settings(load_settings(**named, **settings), replica=replica)
    try:
        async with db.transaction() as session:
            row = (await session.execute(text("SELECT inet_server_port(), pg_is_in_recovery()"))).one()
            return int(row[0]), bool(row[1])
    finally:
        await db.dispose()


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("form", [sqlalchemy_form, libpq_form], ids=["sqlalchemy-form", "libpq-form"])
async def test_read_write_finds_the_primary_past_a_dead_host_and_a_standby(replication, driver, form):
    """Hosts: nothing listening, the standby, the primary; ``target_session_attrs=read-write`` takes the
    primary."""
    ports = [free_port(), replication.replica.port, replication.primary.port]
    url = form(driver, ports, target_session_attrs="read-write")
    assert await _server(url) == (replication.primary.port, False)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_prefer_standby_takes_the_standby(replication, driver):
    """A DATABASE_READ_URL listing the primary, then the standby, with ``prefer-standby`` (libpq's
    order: a standby if one is up) reads from the standby."""
    url = libpq_form(
        driver, [replication.primary.port, replication.replica.port], target_session_attrs="prefer-standby"
    )
    assert await _server(url, replica=True) == (replication.replica.port, True)


@pytest.mark.parametrize(("driver", "seconds"), [("asyncpg", 1.0), ("psycopg", 2.0)])
async def test_a_silent_host_costs_only_the_connect_timeout(replication, silent_port, driver, seconds):
    """The first host accepts the connection and never answers: after EVENTWORKER_DB_CONNECT_TIMEOUT the
    next host is tried (asyncpg alone would spend its whole 60 s on the first). psycopg counts whole
    seconds, at least 2."""
    url = sqlalchemy_form(driver, [silent_port, replication.primary.port], target_session_attrs="read-write")
    started = time.monotonic()
    assert await _server(url, db_connect_timeout=seconds) == (replication.primary.port, False)
    took = time.monotonic() - started
    assert seconds <= took < seconds + 2, f"{took:.2f} s for a {seconds} s connect timeout"


@pytest.mark.parametrize(("driver", "seconds"), [("asyncpg", 1.0), ("psycopg", 2.0)])
async def test_a_lone_silent_host_is_a_connection_error_after_the_timeout(silent_port, driver, seconds):
    """One host that never answers: a connection error (retried without using up a try) after the timeout."""
    url = f"postgresql+{driver}://postgres@{LOCAL}:{silent_port}/postgres"
    started = time.monotonic()
    with pytest.raises(Exception) as caught:  # noqa: PT011 - each driver says it its own way
        await _server(url, db_connect_timeout=seconds)
    took = time.monotonic() - started
    assert seconds <= took < seconds + 2, f"{took:.2f} s for a {seconds} s connect timeout"
    assert is_connection_error(caught.value), repr(caught.value)
    if driver == "asyncpg":
        assert isinstance(caught.value, DatabaseUnavailable)
        assert f"no answer within {seconds:g} s (EVENTWORKER_DB_CONNECT_TIMEOUT)" in str(caught.value)


def test_a_connect_timeout_in_the_url_wins(silent_port):
    """libpq's ``connect_timeout`` in the URL, as providers write it, works with asyncpg too."""
    url = f"postgresql://postgres@{LOCAL}:{silent_port}/postgres?connect_timeout=1"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "worker", "migrate"],
        env=process_env(DATABASE_URL=url, EVENTWORKER_DB_CONNECT_TIMEOUT="30"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    took = time.monotonic() - started
    assert done.returncode == 1
    assert took < 10, f"{took:.1f} s: the URL's connect_timeout=1 was not used"
    assert "no answer within 1 s" in done.stderr


@pytest.mark.parametrize("driver", DRIVERS)
def test_no_primary_among_the_hosts_is_one_line_naming_each(replication, driver):
    """A dead host and a standby, read-write asked: one line saying what each host did."""
    url = libpq_form(driver, [free_port(), replication.replica.port], target_session_attrs="read-write")
    done = subprocess.run(
        [sys.executable, "-m", "worker", "migrate"],
        env=process_env(DATABASE_URL=url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert str(replication.replica.port) in lines[0]
    if driver == "asyncpg":
        assert lines[0].startswith("eventworker: DATABASE_URL: no host would do (read-write): ")
        assert "does not match target_session_attrs=read-write" in lines[0]
