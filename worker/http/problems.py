"""Errors as RFC 9457 problem details (``application/problem+json``).

A route raises :class:`Problem`; the handler :func:`problem_response` writes it. ``type`` is a URN
naming the kind of problem (``urn:eventworker:problem:invalid-event``), ``title`` its fixed
summary, ``detail`` this occurrence; extension members carry what a client acts on: ``errors``
(each event and what is wrong with it), ``retry_after``, ``limit``.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from fastapi import Request
from fastapi.responses import Response

PROBLEM_JSON: Final = "application/problem+json"

#: Each kind of problem: its status and title.
KINDS: Final = {
    "invalid-event": (400, "Invalid CloudEvent"),
    "unreadable-request": (400, "Request body or headers cannot be read as CloudEvents"),
    "unauthorized": (401, "A valid bearer token is needed"),
    "forbidden": (403, "Not allowed for this token"),
    "not-found": (404, "Not found"),
    "request-timeout": (408, "Request body too slow"),
    "conflict": (409, "Not possible in this state"),
    "too-large": (413, "Request too large"),
    "unsupported-format": (415, "Unsupported CloudEvents format"),
    "invalid-parameter": (422, "Invalid parameter"),
    "rate-limited": (429, "Rate limit exceeded"),
    "queue-full": (503, "Queue full: try again later"),
    "unavailable": (503, "A backing service is unavailable"),
}


class Problem(Exception):
    """An HTTP error answered as problem details."""

    def __init__(
        self, kind: str, detail: str, *, headers: dict[str, str] | None = None, **extensions: Any
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.status, self.title = KINDS[kind]
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions

    def body(self) -> dict[str, Any]:
        return {
            "type": f"urn:eventworker:problem:{self.kind}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extensions,
        }


def render(problem: Problem) -> Response:
    """The response for ``problem``."""
    return Response(
        orjson.dumps(problem.body()),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=problem.headers,
    )


async def problem_response(_request: Request, exc: Exception) -> Response:
    """Exception handler: a :class:`Problem` as its response."""
    assert isinstance(exc, Problem)
    return render(exc)
