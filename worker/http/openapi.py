"""The OpenAPI description of what FastAPI cannot see: ``POST /events`` reads its body itself.

The request body is described in each content mode (structured, batched, and binary with a
JSON or a byte body and the ``ce-*`` headers), and every answer a route can give, problem
details included, so that a client generated from ``/openapi.json``, and schemathesis, know them.
"""

from __future__ import annotations

from typing import Any, Final

from worker.constants import MAX_ID_LENGTH, MAX_SOURCE_LENGTH, MAX_SUBJECT_LENGTH, MAX_TYPE_LENGTH
from worker.protocol.binding import BATCHED, STRUCTURED

EVENT: Final[dict[str, Any]] = {
    "title": "CloudEvent",
    "description": "A CloudEvents 1.0 event in the JSON format; any other attribute is an extension"
    " (lower-case letters and digits; a string, number or boolean).",
    "type": "object",
    "required": ["specversion", "id", "source", "type"],
    "properties": {
        "specversion": {"type": "string", "enum": ["1.0"]},
        "id": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH},
        "source": {"type": "string", "minLength": 1, "maxLength": MAX_SOURCE_LENGTH},
        "type": {"type": "string", "minLength": 1, "maxLength": MAX_TYPE_LENGTH},
        "time": {"type": "string", "format": "date-time"},
        "subject": {"type": "string", "maxLength": MAX_SUBJECT_LENGTH},
        "datacontenttype": {"type": "string"},
        "dataschema": {"type": "string"},
        "data": {"description": "The payload as JSON (or a string)."},
        "data_base64": {"type": "string", "description": "The payload as base64, for bytes."},
    },
    "additionalProperties": {"type": ["string", "number", "boolean"]},
}

_BINARY_HEADERS: Final = [
    ("ce-specversion", "Binary mode: the event's specversion (1.0)."),
    ("ce-id", "Binary mode: the event's id (percent-encoded UTF-8, as every ce- header)."),
    ("ce-source", "Binary mode: the event's source."),
    ("ce-type", "Binary mode: the event's type."),
    ("ce-time", "Binary mode: the event's time (RFC 3339)."),
    ("ce-subject", "Binary mode: the event's subject."),
]

EVENTS_REQUEST: Final[dict[str, Any]] = {
    "parameters": [
        {"name": name, "in": "header", "required": False, "schema": {"type": "string"}, "description": text}
        for name, text in _BINARY_HEADERS
    ],
    "requestBody": {
        "required": True,
        "description": "Structured mode: one event as JSON. Batched mode: a JSON array of events. Binary"
        " mode (any other Content-Type): the body is the event's data, its Content-Type the event's"
        " datacontenttype, its attributes in ce- headers.",
        "content": {
            STRUCTURED: {"schema": EVENT},
            BATCHED: {"schema": {"type": "array", "items": EVENT}},
            "application/json": {"schema": {"description": "Binary mode: JSON data."}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}

PROBLEM: Final[dict[str, Any]] = {
    "title": "Problem",
    "description": "RFC 9457 problem details.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {"type": "object"},
            "description": "What is wrong, item by item.",
        },
        "retry_after": {"type": "integer", "description": "Seconds to wait before trying again."},
        "limit": {"type": "integer", "description": "The limit that was exceeded."},
    },
}

_WHY: Final = {
    400: "Nothing valid: each event and its errors are in errors (invalid ones from a producer of the"
    " producers file are kept as dead letters).",
    401: "No token, or one that is not known.",
    403: "Not allowed: an event's source outside the producer's prefixes (nothing stored), a read-only"
    " token for an action, an origin not allowed.",
    404: "No such record.",
    408: "The body took longer than EVENTWORKER_HTTP_BODY_TIMEOUT to arrive.",
    409: "Not possible in the record's state.",
    413: "Over a size limit: body, events per batch, one event's size.",
    415: "A structured or batched content type in a format other than JSON.",
    422: "A parameter is invalid.",
    429: "Over the producer's rate limit: wait Retry-After seconds.",
    503: "The queue is at its bound, or Redis or the database is unavailable: wait Retry-After seconds.",
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` entries of these statuses, each answered with problem details."""
    return {
        status: {"description": _WHY[status], "content": {"application/problem+json": {"schema": PROBLEM}}}
        for status in statuses
    }


def json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_OUTCOME: Final = {
    "type": "object",
    "required": ["index", "status"],
    "properties": {
        "index": {"type": "integer"},
        "status": {"type": "integer", "enum": [202, 400, 413]},
        "id": {"type": ["string", "null"]},
        "source": {"type": ["string", "null"]},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}

EVENTS_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    202: json_response(
        "Every event was enqueued (Redis acknowledged the job).",
        {
            "type": "object",
            "required": ["job_id", "accepted"],
            "properties": {"job_id": {"type": ["string", "null"]}, "accepted": {"type": "integer"}},
        },
    ),
    207: json_response(
        "A batch partly valid: the valid events were enqueued (status 202 each), the others are listed"
        " with their errors.",
        {
            "type": "object",
            "required": ["job_id", "accepted", "rejected", "events"],
            "properties": {
                "job_id": {"type": "string"},
                "accepted": {"type": "integer"},
                "rejected": {"type": "integer"},
                "events": {"type": "array", "items": _OUTCOME},
            },
        },
    ),
    **problems(400, 401, 403, 408, 413, 415, 429, 503),
}

HANDSHAKE_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {"description": "The origin is allowed: WebHook-Allowed-Origin names it."},
    204: {"description": "No WebHook-Request-Origin: the methods allowed, in Allow."},
    **problems(403),
}
