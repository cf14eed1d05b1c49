"""``REDIS_URL``: the forms eventworker reads, parsed into one :class:`RedisTarget`, and their redaction.

::

    redis://[[user]:password@]host[:port][/db][?param=value...]         one server
    rediss://...                                                          the same over TLS
    unix://[[user]:password@]/path/to/redis.sock[?db=N]                   a local socket
    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db][?param=value...]
    rediss+sentinel://...                                                 Sentinel, everything over TLS

Under Sentinel the hosts are the sentinels (port 26379 by default), ``service`` is the name they
monitor the primary by, and ``user:password`` are the primary's (and its replicas'); the sentinels'
own credentials are the parameters ``sentinel_username`` and ``sentinel_password``. The standard
library's ``urlsplit`` reads one host only, so the sentinel form is parsed here.

Parameters: ``db`` (redis, rediss, unix), ``ssl`` (``true`` on redis+sentinel means rediss+sentinel),
``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs`` (required, optional, none),
``ssl_check_hostname`` (true/false), ``sentinel_username``, ``sentinel_password``. Anything else is
refused: a misspelt parameter would otherwise be ignored in silence.

This module imports nothing of eventworker's nor any driver: the settings (``worker.config``) and
the connections (``worker.protocol.redis``) both read URLs through it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlencode

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
REDACTED = "***"

_SSL_PARAMS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
_SENTINEL_PARAMS = ("sentinel_username", "sentinel_password", "ssl")
#: Query parameters holding a secret, hidden by :func:`redact`.
_SECRET_PARAMS = frozenset({"sentinel_password"})
_CERT_REQS = ("required", "optional", "none")
_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
#: ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``.
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[^\[\]:/]+))(?::(?P<port>\d{1,5}))?$")


class RedisUrlError(ValueError):
    """A Redis URL eventworker cannot read; the message says what is wrong, never the password."""


@dataclass(frozen=True)
class RedisTarget:
    """What a ``REDIS_URL`` says: where Redis is, how to authenticate, and TLS."""

    scheme: str
    #: (host, port) of the one server, or of every sentinel.
    hosts: tuple[tuple[str, int], ...] = ()
    unix_socket_path: str | None = None
    database: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: str = "required"
    ssl_check_hostname: bool = False
    #: Sentinel only: the name the sentinels monitor the primary by, and the sentinels' own credentials.
    service_name: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def sentinel(self) -> bool:
        return self.service_name is not None

    def secrets(self) -> list[str]:
        """The passwords this URL holds."""
        return [s for s in (self.password, self.sentinel_password) if s]

    def ssl_options(self) -> dict[str, object]:
        """redis-py's TLS connection arguments (empty without TLS: a plain connection refuses them)."""
        if not self.ssl:
            return {}
        return {
            "ssl_ca_certs": self.ssl_ca_certs,
            "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
            "ssl_cert_reqs": self.ssl_cert_reqs,
            "ssl_check_hostname": self.ssl_check_hostname,
        }


def _split(url: str) -> tuple[str, str, str, str]:
    """(scheme, userinfo, authority and path, query) of ``url``; userinfo ends at the last ``@``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise RedisUrlError(f"must start with one of {', '.join(s + '://' for s in SCHEMES)}")
    rest, _, _fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    userinfo, at, location = rest.rpartition("@")
    return scheme.lower(), userinfo if at else "", location, query


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    return unquote(user) or None, (unquote(password) or None) if colon else None


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    match = _HOST_PORT.match(text)
    if not match:
        raise RedisUrlError(f"{text!r} is not a host or host:port")
    port = int(match["port"]) if match["port"] else default_port
    if not 0 < port < 65536:
        raise RedisUrlError(f"port {port} is out of range")
    return match["v6"] or match["name"], port


def _database(text: str) -> int:
    if not text.isdigit():
        raise RedisUrlError(f"database {text!r} is not a number")
    return int(text)


def _boolean(name: str, text: str) -> bool:
    if text.lower() not in _BOOLEANS:
        raise RedisUrlError(f"{name}={text!r} must be true or false")
    return _BOOLEANS[text.lower()]


def _params(query: str, allowed: tuple[str, ...]) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in allowed:
            raise RedisUrlError(f"unknown parameter {name!r} (known here: {', '.join(allowed)})")
        params[name] = value
    return params


def _tls(params: dict[str, str], ssl: bool) -> dict[str, object]:
    options: dict[str, object] = {"ssl": ssl}
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if name in params:
            options[name] = params[name]
    if "ssl_cert_reqs" in params:
        if params["ssl_cert_reqs"] not in _CERT_REQS:
            raise RedisUrlError(f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}")
        options["ssl_cert_reqs"] = params["ssl_cert_reqs"]
    if "ssl_check_hostname" in params:
        options["ssl_check_hostname"] = _boolean("ssl_check_hostname", params["ssl_check_hostname"])
    if not ssl and len(options) > 1:
        raise RedisUrlError("TLS parameters (ssl_*) need a rediss:// URL")
    return options


def parse_redis_url(url: str) -> RedisTarget:
    """Read ``url``; raise :class:`RedisUrlError` saying what is wrong (never quoting the password)."""
    scheme, userinfo, location, query = _split(url)
    if scheme not in SCHEMES:
        raise RedisUrlError(f"must start with one of {', '.join(s + '://' for s in SCHEMES)}")
    username, password = _credentials(userinfo)
    if scheme.endswith("+sentinel"):
        return _parse_sentinel(scheme, location, query, username, password)
    if scheme == "unix":
        params = _params(query, ("db",))
        if not location.startswith("/"):
            raise RedisUrlError("unix:// needs an absolute socket path, e.g. unix:///run/redis/redis.sock")
        database = _database(params["db"]) if "db" in params else 0
        return RedisTarget(scheme, (), unquote(location), database, username, password)
    params = _params(query, ("db", *_SSL_PARAMS))
    authority, _, path = location.partition("/")
    host, port = _host_port(authority or "localhost", DEFAULT_PORT)
    if "db" in params:
        database = _database(params["db"])
    else:
        database = _database(path.strip("/")) if path.strip("/") else 0
    tls = _tls(params, scheme == "rediss")
    return RedisTarget(scheme, ((host, port),), None, database, username, password, **tls)  # type: ignore[arg-type]


def _parse_sentinel(
    scheme: str, location: str, query: str, username: str | None, password: str | None
) -> RedisTarget:
    params = _params(query, (*_SENTINEL_PARAMS, *_SSL_PARAMS))
    authority, _, path = location.partition("/")
    if not authority:
        raise RedisUrlError("a Sentinel URL needs at least one sentinel, host:port[,host:port...]")
    hosts = tuple(_host_port(part.strip(), DEFAULT_SENTINEL_PORT) for part in authority.split(","))
    parts = [unquote(part) for part in path.split("/") if part]
    if not parts or len(parts) > 2:
        raise RedisUrlError("a Sentinel URL names its service after the hosts: .../<service name>[/<db>]")
    database = _database(parts[1]) if len(parts) == 2 else 0
    ssl = scheme == "rediss+sentinel" or _boolean("ssl", params.pop("ssl", "false"))
    sentinel_password = params.pop("sentinel_password", None) or None
    sentinel_username = params.pop("sentinel_username", None) or None
    return RedisTarget(
        scheme,
        hosts,
        None,
        database,
        username,
        password,
        service_name=parts[0],
        sentinel_username=sentinel_username,
        sentinel_password=sentinel_password,
        **_tls(params, ssl),  # type: ignore[arg-type]
    )


def redis_url_secrets(url: str) -> list[str]:
    """The passwords in ``url`` (also in one :func:`parse_redis_url` refuses), for log redaction."""
    try:
        return parse_redis_url(url).secrets()
    except RedisUrlError:
        _scheme, userinfo, _location, query = _split_loosely(url)
        _user, password = _credentials(userinfo)
        found = [value for name, value in parse_qsl(query) if name in _SECRET_PARAMS]
        return [s for s in (password, *found) if s]


def _split_loosely(url: str) -> tuple[str, str, str, str]:
    try:
        return _split(url)
    except RedisUrlError:
        return "", "", url, ""


def redact_redis_url(url: str) -> str:
    """``url`` with every password (the user's, ``sentinel_password``) replaced by ``***``."""
    scheme, userinfo, location, query = _split_loosely(url)
    if not scheme:
        return url
    if userinfo:
        user, colon, _password = userinfo.partition(":")
        userinfo = f"{user}:{REDACTED}@" if colon else f"{user}@"
    if query:
        pairs = [
            (name, REDACTED if name in _SECRET_PARAMS else value)
            for name, value in parse_qsl(query, keep_blank_values=True)
        ]
        query = "?" + urlencode(pairs, safe="*/:", quote_via=quote)
    return f"{url.partition('://')[0]}://{userinfo}{location}{query}"
