"""The dashboard's login and forms: a signed session cookie and CSRF tokens. Pure: the caller gives
the time and the key.

The session cookie holds ``<payload>.<signature>``: the role (reader or admin), when it expires and
a random session id, signed with HMAC-SHA256. It is set ``HttpOnly`` (no script can read it; the
page has none anyway) and ``SameSite=Strict`` (no other site's page sends it along). Each form of
the page carries a CSRF token, ``<issued>.<HMAC(session id, issued, purpose)>``, valid for
``EVENTWORKER_HTTP_CSRF_SECONDS``: a form older than that, or one made for another session, is
refused with 403 and does nothing. The login form's token is bound the same way to a random
pre-login cookie.

The key (:func:`session_key`) is made from ``EVENTWORKER_HTTP_SESSION_SECRET`` and the operator
tokens' digests: every ``serve`` process given the same secret makes the same key, and changing a
token ends every session signed before. The digests alone are no key: they are in the settings,
which are not secret. Without the secret each process draws a random one at start-up.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final, Literal

import orjson

from worker.config import Settings

SESSION_COOKIE: Final = "ew_session"
LOGIN_COOKIE: Final = "ew_login"
Role = Literal["reader", "admin"]


def session_key(settings: Settings, fallback: bytes | None = None) -> bytes:
    """The signing key of sessions and forms: from the configured secret, else from ``fallback`` (a
    process's random bytes); the same wherever both and the tokens are the same."""
    configured = settings.http_session_secret
    secret = configured.get_secret_value().encode() if configured is not None else fallback
    if secret is None:
        raise ValueError("no session secret: configure EVENTWORKER_HTTP_SESSION_SECRET or pass a fallback")
    digests = ",".join([*sorted(settings.admin_token_sha256), "|", *sorted(settings.reader_token_sha256)])
    return hmac.new(secret, b"eventworker dashboard session\0" + digests.encode(), hashlib.sha256).digest()


def _sign(key: bytes, message: str) -> str:
    digest = hmac.new(key, message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in operator: role, session id, expiry (seconds since the epoch)."""

    role: Role
    sid: str
    expires: int


def new_session(role: Role, now: float, lifetime_s: float) -> Session:
    return Session(role, secrets.token_urlsafe(16), int(now + lifetime_s))


def encode_session(key: bytes, session: Session) -> str:
    """The cookie value of ``session``."""
    payload = base64.urlsafe_b64encode(
        orjson.dumps({"r": session.role, "s": session.sid, "e": session.expires})
    ).decode()
    return f"{payload}.{_sign(key, payload)}"


def decode_session(key: bytes, value: str | None, now: float) -> Session | None:
    """The session a cookie value holds; None if it is missing, forged, altered or expired."""
    if not value or "." not in value:
        return None
    payload, signature = value.rsplit(".", 1)
    if not hmac.compare_digest(signature, _sign(key, payload)):
        return None
    try:
        data = orjson.loads(base64.urlsafe_b64decode(payload.encode()))
    except ValueError:
        return None
    if data.get("r") not in ("reader", "admin") or not isinstance(data.get("e"), int) or data["e"] <= now:
        return None
    return Session(data["r"], str(data.get("s")), data["e"])


def csrf_token(key: bytes, bound_to: str, purpose: str, now: float) -> str:
    """A form's token, for the session (or pre-login cookie) ``bound_to`` and what the form does."""
    issued = str(int(now))
    return f"{issued}.{_sign(key, f'{bound_to}:{purpose}:{issued}')}"


def csrf_problem(
    key: bytes, bound_to: str, purpose: str, token: str | None, now: float, max_age_s: float
) -> str | None:
    """Why a form's token is refused, in a sentence; None when it is good."""
    if not token or "." not in token:
        return "the form carries no valid token: reload the page and try again"
    issued, signature = token.split(".", 1)
    if not issued.isdigit() or not hmac.compare_digest(
        signature, _sign(key, f"{bound_to}:{purpose}:{issued}")
    ):
        return "the form's token is not this session's: reload the page and try again"
    if now - int(issued) > max_age_s:
        return f"the form is older than {max_age_s:g}s: reload the page and try again"
    return None
