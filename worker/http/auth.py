"""Who is asking: producers (``Authorization: Bearer``, the producers file) and operators (their tokens).

Tokens are compared by their SHA-256, which is all the configuration holds. A producer's token
finds its entry in the producers file; without that file nobody needs one (``serve`` then listens
on loopback only). An operator's token is an admin token (reads and actions) or a read-only one,
``EVENTWORKER_ADMIN_TOKEN_SHA256`` and ``EVENTWORKER_READER_TOKEN_SHA256``.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Final, Literal

from fastapi import Depends, Request

from worker.config import Settings
from worker.domain.producers import Producer, token_digest
from worker.http.problems import Problem
from worker.http.state import StateDep

Role = Literal["reader", "admin"]
#: The name events carry in logs and metrics when no producers file is configured.
ANONYMOUS: Final = "anonymous"
_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="eventworker"'}
_INVALID: Final = {"WWW-Authenticate": 'Bearer realm="eventworker", error="invalid_token"'}


def bearer_token(request: Request) -> str | None:
    """The token of ``Authorization: Bearer <token>``, or None when there is no such header."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem("unauthorized", "the Authorization header must be 'Bearer <token>'", headers=_INVALID)
    return token.strip()


async def producer(request: Request, state: StateDep) -> Producer | None:
    """The producer sending this request; None when no producers file is configured (anyone may send)."""
    if state.producers is None:
        return None
    token = bearer_token(request)
    if token is None:
        raise Problem(
            "unauthorized", "send your producer token as 'Authorization: Bearer <token>'", headers=_CHALLENGE
        )
    found = state.producers.find(token)
    if found is None:
        raise Problem("unauthorized", "this token is not in the producers file", headers=_INVALID)
    return found


ProducerDep = Annotated[Producer | None, Depends(producer)]


def _matches(digest: str, allowed: list[str]) -> bool:
    """Whether ``digest`` is one of ``allowed``, comparing each in constant time."""
    return any(hmac.compare_digest(digest, candidate) for candidate in allowed)


def token_role(settings: Settings, token: str) -> Role | None:
    """The operator role a token has: admin, reader, or None."""
    digest = token_digest(token)
    if _matches(digest, settings.admin_token_sha256):
        return "admin"
    if _matches(digest, settings.reader_token_sha256):
        return "reader"
    return None


async def operator(request: Request, state: StateDep) -> Role:
    """The role of the operator asking (admin or reader); 401 without a token that has one."""
    token = bearer_token(request)
    if token is None:
        raise Problem(
            "unauthorized", "send an operator token as 'Authorization: Bearer <token>'", headers=_CHALLENGE
        )
    role = token_role(state.settings, token)
    if role is None:
        raise Problem("unauthorized", "this token is not an operator token", headers=_INVALID)
    return role


async def admin(role: Annotated[Role, Depends(operator)]) -> Role:
    """Only an admin token may act (requeue, retry, re-drive); a read-only one gets 403."""
    if role != "admin":
        raise Problem("forbidden", "this action needs the admin token; yours is read-only")
    return role


ReaderDep = Annotated[Role, Depends(operator)]
AdminDep = Annotated[Role, Depends(admin)]
