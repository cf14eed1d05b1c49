"""``DATABASE_URL`` as users write it, made the async SQLAlchemy URL eventworker connects with.

Bare schemes as hosting platforms hand them out (``postgres://``) mean an async driver; synchronous
drivers are refused with the async one to use; libpq's multi-host form is rewritten into
SQLAlchemy's; libpq's TLS parameters are checked here and handed to each driver by
:mod:`worker.db.connect`. Every refusal is one :class:`~worker.errors.ConfigError` naming the variable.
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from worker.errors import ConfigError

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
