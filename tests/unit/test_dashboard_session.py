"""The dashboard's session cookie and CSRF tokens: signed, bound, and short-lived, as tables."""

from __future__ import annotations

import base64

import orjson
import pytest

from worker.config import load_settings
from worker.errors import ConfigError
from worker.http.dashboard.session import (
    Session,
    csrf_problem,
    csrf_token,
    decode_session,
    encode_session,
    session_key,
)

KEY = b"k" * 32
NOW = 1_800_000_000.0


def test_a_session_reads_back_until_it_expires():
    value = encode_session(KEY, Session("admin", "sid-1", int(NOW) + 60))
    assert decode_session(KEY, value, NOW) == Session("admin", "sid-1", int(NOW) + 60)
    assert decode_session(KEY, value, NOW + 61) is None


@pytest.mark.parametrize(
    "tamper",
    [
        lambda v: ("B" if v[0] != "B" else "C") + v[1:],  # the payload changed
        lambda v: v[:-2] + ("AA" if not v.endswith("AA") else "BB"),  # another signature
        lambda v: v.split(".")[0],  # no signature
        lambda v: "",
    ],
)
def test_a_tampered_cookie_is_no_session(tamper):
    value = encode_session(KEY, Session("reader", "sid", int(NOW) + 60))
    assert decode_session(KEY, tamper(value), NOW) is None
    assert decode_session(b"other" * 8, value, NOW) is None


def test_a_forged_payload_with_a_valid_shape_is_refused():
    payload = base64.urlsafe_b64encode(orjson.dumps({"r": "admin", "s": "x", "e": int(NOW) + 60})).decode()
    assert decode_session(KEY, f"{payload}.forged", NOW) is None


def test_csrf_tokens_are_bound_to_session_and_purpose_and_expire():
    token = csrf_token(KEY, "sid", "requeue-7", NOW)
    assert csrf_problem(KEY, "sid", "requeue-7", token, NOW + 10, 3600) is None
    assert "older than" in (csrf_problem(KEY, "sid", "requeue-7", token, NOW + 3601, 3600) or "")
    assert "not this session's" in (csrf_problem(KEY, "sid", "requeue-8", token, NOW, 3600) or "")
    assert "not this session's" in (csrf_problem(KEY, "other", "requeue-7", token, NOW, 3600) or "")
    assert "no valid token" in (csrf_problem(KEY, "sid", "requeue-7", None, NOW, 3600) or "")


def test_the_key_is_the_same_for_the_same_secret_and_tokens_and_changes_with_them():
    """Processes given one secret sign alike; a rotated token or another secret ends the sessions."""
    admin, reader, secret = "a" * 64, "b" * 64, "s" * 32
    one = load_settings(admin_token_sha256=[admin], reader_token_sha256=[reader], http_session_secret=secret)
    two = load_settings(admin_token_sha256=[admin], reader_token_sha256=[reader], http_session_secret=secret)
    rotated = load_settings(
        admin_token_sha256=["c" * 64], reader_token_sha256=[reader], http_session_secret=secret
    )
    other = load_settings(
        admin_token_sha256=[admin], reader_token_sha256=[reader], http_session_secret="t" * 32
    )
    assert session_key(one) == session_key(two) != session_key(rotated)
    assert session_key(one) != session_key(other)


def test_the_token_digests_alone_are_no_key():
    """Without the secret, the key comes from the process's random bytes: reading the settings (the
    digests) is not enough to forge a login."""
    settings = load_settings(admin_token_sha256=["a" * 64])
    with pytest.raises(ValueError, match="EVENTWORKER_HTTP_SESSION_SECRET"):
        session_key(settings)
    assert session_key(settings, fallback=b"x" * 32) != session_key(settings, fallback=b"y" * 32)


def test_the_session_secret_is_kept_out_of_logs_and_config():
    """The secret is redacted like a password: in the log redaction list, masked in the settings' dump."""
    settings = load_settings(http_session_secret="s3cret-" * 5)
    assert "s3cret-" * 5 in settings.secrets()
    assert settings.redacted()["http_session_secret"] == "***"
    with pytest.raises(ConfigError, match="EVENTWORKER_HTTP_SESSION_SECRET"):
        load_settings(http_session_secret="short")
