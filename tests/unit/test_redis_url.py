"""REDIS_URL's forms: one server, a socket, Sentinel (several hosts, which urlsplit cannot read), TLS;
what each means, what is refused and how, and that no password survives redaction."""

from __future__ import annotations

import pytest

from worker.config import load_settings, redact_redis_url
from worker.errors import ConfigError
from worker.protocol.redis_url import RedisUrlError, parse_redis_url, redis_url_secrets

PW = "s3cr%40t"  # percent-encoded "s3cr@t"
SPW = "sentinelPw-77"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost", {"hosts": (("localhost", 6379),), "database": 0, "ssl": False}),
        ("redis://:pw@10.0.0.5:7000/3", {"hosts": (("10.0.0.5", 7000),), "database": 3, "password": "pw"}),
        ("redis://app:pw@h/0?db=2", {"username": "app", "password": "pw", "database": 2}),
        (f"redis://app:{PW}@h", {"password": "s3cr@t"}),
        ("redis://[::1]:6380/1", {"hosts": (("::1", 6380),), "database": 1}),
        (
            "rediss://h:6380/0?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required&ssl_check_hostname=true",
            {
                "ssl": True,
                "ssl_ca_certs": "/etc/ca.pem",
                "ssl_cert_reqs": "required",
                "ssl_check_hostname": True,
            },
        ),
        ("unix:///run/redis.sock?db=4", {"unix_socket_path": "/run/redis.sock", "database": 4, "hosts": ()}),
        (
            f"redis+sentinel://:pw@s1:26379,s2:26380,s3/mymaster/2?sentinel_password={SPW}",
            {
                "hosts": (("s1", 26379), ("s2", 26380), ("s3", 26379)),
                "service_name": "mymaster",
                "database": 2,
                "password": "pw",
                "sentinel_password": SPW,
                "ssl": False,
            },
        ),
        ("redis+sentinel://s1/mymaster", {"hosts": (("s1", 26379),), "database": 0, "password": None}),
        (
            "redis+sentinel://app:pw@[::1]:5000,s2/svc?sentinel_username=mon&ssl=true&ssl_ca_certs=/ca.pem",
            {"username": "app", "sentinel_username": "mon", "ssl": True, "ssl_ca_certs": "/ca.pem"},
        ),
        ("rediss+sentinel://s1,s2/svc/1", {"ssl": True, "database": 1, "service_name": "svc"}),
    ],
)
def test_each_form_reads_as_meant(url, expected):
    """Hosts, ports (6379, or 26379 for sentinels), database, credentials and TLS options, as written."""
    target = parse_redis_url(url)
    for name, value in expected.items():
        assert getattr(target, name) == value, name
    assert target.sentinel == ("sentinel" in url)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://h", "must start with one of redis://"),
        ("localhost:6379", "must start with one of"),
        ("redis://h:70000", "port 70000 is out of range"),
        ("redis://h/zero", "database 'zero' is not a number"),
        ("redis://h?timeout=3", "unknown parameter 'timeout'"),
        ("redis://h?ssl_ca_certs=/ca.pem", "need a rediss:// URL"),
        ("rediss://h?ssl_cert_reqs=maybe", "ssl_cert_reqs must be one of"),
        ("unix://relative.sock", "absolute socket path"),
        ("redis+sentinel:///svc", "at least one sentinel"),
        ("redis+sentinel://s1,s2", "names its service"),
        ("redis+sentinel://s1/svc/0/extra", "names its service"),
        ("redis+sentinel://s1,:26379/svc", "is not a host"),
        (f"redis+sentinel://:pw@s1/svc?sentinel_password={SPW}&ssl=perhaps", "ssl='perhaps' must be true"),
    ],
)
def test_a_bad_url_is_refused_in_one_line_without_its_password(url, says):
    """Each mistake gets a message saying what is wrong; a misspelt parameter is not ignored."""
    with pytest.raises(RedisUrlError) as caught:
        parse_redis_url(url)
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)
    assert SPW not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        ("redis://app:pw@h", "redis://app:***@h"),
        ("redis://app@h", "redis://app@h"),
        (f"rediss://app:{PW}@h?ssl_ca_certs=/ca.pem", "rediss://app:***@h?ssl_ca_certs=/ca.pem"),
        (
            f"redis+sentinel://:pw@s1:1,s2:2/svc/0?sentinel_password={SPW}&sentinel_username=mon",
            "redis+sentinel://:***@s1:1,s2:2/svc/0?sentinel_password=***&sentinel_username=mon",
        ),
        # Even a URL that is refused loses its passwords in messages.
        (f"redis+sentinel://:p@w@s1/svc?sentinel_password={SPW}&bogus=1", "redis+sentinel://:***@s1/svc?"),
        ("memory://", "memory://"),
    ],
)
def test_redaction_hides_every_password(url, shown):
    """The user's password and sentinel_password become ***; everything else stays readable."""
    redacted = redact_redis_url(url)
    assert redacted.startswith(shown)
    for secret in (PW, "s3cr@t", SPW, ":pw@", ":p@w@"):
        assert secret not in redacted


def test_secrets_name_both_passwords_even_of_a_refused_url():
    """Log redaction gets the primary's and the sentinels' passwords, decoded, whatever the URL's state."""
    assert redis_url_secrets(f"redis+sentinel://:{PW}@s1/svc?sentinel_password={SPW}") == ["s3cr@t", SPW]
    assert set(redis_url_secrets(f"redis+sentinel://:pw@s1/svc?sentinel_password={SPW}&x=1")) == {"pw", SPW}


def test_settings_take_a_sentinel_url_and_keep_its_passwords_out_of_sight(monkeypatch):
    """REDIS_URL may be a Sentinel URL; settings.redacted() and secrets() cover both of its passwords."""
    url = f"redis+sentinel://:nodePw-1234@s1:26379,s2:26379/svc/0?sentinel_password={SPW}"
    monkeypatch.setenv("REDIS_URL", url)
    settings = load_settings()
    assert settings.redis_url == url
    assert set(settings.secrets()) >= {"nodePw-1234", SPW}
    shown = settings.redacted()["redis_url"]
    assert "nodePw-1234" not in shown
    assert SPW not in shown


def test_settings_refuse_a_bad_redis_url_naming_the_variable(monkeypatch):
    """One ConfigError naming REDIS_URL and the mistake."""
    monkeypatch.setenv("REDIS_URL", f"redis+sentinel://:pw@s1/svc?sentinel_password={SPW}&sentinel_pasword=x")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith("REDIS_URL: unknown parameter 'sentinel_pasword'")
    assert SPW not in str(caught.value)
