"""``POST /events``: CloudEvents over HTTP (binding 1.0) in binary, structured and batched mode.

The order of checks, each answered as problem details (:mod:`worker.http.problems`):

1. the producer's token (401), before a byte of the body is read;
2. the body's size and sending time (413, 408);
3. the content mode (415 for a format other than JSON), the body's syntax (400), a batch's length (413);
4. every event's ``source`` against the producer's prefixes: one foreign source refuses the
   whole request (403) and nothing is stored, so one producer cannot forge another's events;
5. the rate limit and the queue-depth bound (429, 503, with ``Retry-After``);
6. each event validated as the ingest job validates it. The valid ones are enqueued as one
   ``ingest_events`` job through :class:`~worker.protocol.producer.EventProducer`, the path a
   Python producer takes; the answer comes once Redis has acknowledged the job.

Answers: ``202`` when every event was enqueued; ``400`` when none was valid (``errors`` names each
event and what is wrong); ``207`` when a batch was partly valid: the valid events are enqueued
(``202`` for each in ``events``) and the invalid ones listed with their errors. A producer can
then drop what was refused without re-sending what was taken (re-sending it would be harmless:
an event is stored once by its identity). Invalid events from a producer of the producers file
are also kept as dead letters, as the Redis path keeps them; without a producers file nothing
invalid is stored, so nobody can fill the table.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from worker.db.sql import statements
from worker.domain.producers import Producer
from worker.errors import EnqueueError
from worker.http import openapi
from worker.http.auth import ANONYMOUS, ProducerDep
from worker.http.limits import read_body, request_client
from worker.http.problems import Problem
from worker.http.state import HttpState, StateDep
from worker.protocol.binding import BindingError, Received, read_request
from worker.protocol.events import CloudEvent, Rejection, validate_each

router = APIRouter(tags=["events"])

#: Seconds a producer is told to wait when Redis did not acknowledge its events.
REDIS_DOWN_RETRY_S: Final = 5
#: Status of an event in a 207 answer, by rejection reason.
_EVENT_STATUS: Final = {"invalid": 400, "too_large": 413}


def _outcome(index: int, rejection: Rejection) -> dict[str, Any]:
    return {
        "index": index,
        "status": _EVENT_STATUS.get(rejection.reason, 400),
        "id": rejection.event_id,
        "source": rejection.source,
        "errors": rejection.errors,
    }


def _check_sources(sender: Producer | None, values: list[Any]) -> None:
    """403 when any event names a source outside the producer's prefixes (a missing one is just invalid)."""
    if sender is None:
        return
    foreign = [
        {"index": index, "source": value["source"]}
        for index, value in enumerate(values)
        if isinstance(value, dict)
        and isinstance(value.get("source"), str)
        and not sender.may_send(value["source"])
    ]
    if foreign:
        raise Problem(
            "forbidden",
            f"producer {sender.name!r} may send sources starting with {', '.join(map(repr, sender.sources))};"
            f" {len(foreign)} event(s) name another",
            errors=foreign[:100],
        )


async def _keep_dead_letters(
    state: HttpState, sender: Producer, job_id: str, rejections: list[tuple[int, Rejection]]
) -> None:
    """Keep the invalid events of an authenticated producer as dead letters, as the ingest job would.

    The session is opened here, not taken as a dependency: most requests never need one.
    """
    now = datetime.now(UTC)
    rows = [
        statements.dead_letter_row(r, index, job_id, f"http:{sender.name}", now) for index, r in rejections
    ]
    async with state.db.sessionmaker() as session:
        await statements.insert_dead_letters(session, rows)
        await session.commit()


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def _received(request: Request, body: bytes, state: HttpState, sender: Producer | None) -> Received:
    """The request's events, read in its content mode; an unreadable body from a producer is a dead letter."""
    try:
        received = read_request(request.headers.get("content-type"), request.headers.raw, body)
    except BindingError as exc:
        if sender is not None and exc.status == 400:
            unreadable = Rejection(body, "invalid", [{"loc": "", "msg": exc.detail, "type": "unreadable"}])
            await _keep_dead_letters(state, sender, uuid.uuid4().hex, [(0, unreadable)])
        kind = "unsupported-format" if exc.status == 415 else "unreadable-request"
        raise Problem(kind, exc.detail) from None
    limit = state.settings.http_max_batch_events
    if len(received.values) > limit:
        raise Problem(
            "too-large", f"{len(received.values)} events in one batch, over the limit of {limit}", limit=limit
        )
    return received


def _validated(values: list[Any], max_event_bytes: int) -> tuple[list[Any], list[tuple[int, Rejection]]]:
    """The valid values, as received (the worker stores what was sent), and the rejections by index."""
    valid: list[Any] = []
    rejected: list[tuple[int, Rejection]] = []
    outcomes = validate_each(values, max_event_bytes, decoded=True)  # the binding's values are JSON
    for index, (value, outcome) in enumerate(zip(values, outcomes, strict=True)):
        if isinstance(outcome, CloudEvent):
            valid.append(value)
        else:
            rejected.append((index, outcome))
    return valid, rejected


async def _enqueue(state: HttpState, valid: list[Any], job_id: str) -> str:
    """Enqueue the valid events as one ingest job, as EventProducer does; 503 if Redis did not take it."""
    try:
        return await state.producer.emit_batch(valid, job_id=job_id)
    except EnqueueError:
        raise Problem(
            "unavailable",
            "Redis did not acknowledge the events; nothing was enqueued, send them again",
            retry_after=REDIS_DOWN_RETRY_S,
            headers={"Retry-After": str(REDIS_DOWN_RETRY_S)},
        ) from None


def _answer(
    received: Received, job_id: str, valid: int, rejected: list[tuple[int, Rejection]], max_event_bytes: int
) -> Response:
    """202 (all enqueued), 400 or 413 (none valid), or 207 (a batch partly valid)."""
    if not rejected:
        return _json(202, {"job_id": job_id if valid else None, "accepted": valid})
    outcomes = [_outcome(index, rejection) for index, rejection in rejected]
    if not valid:
        single = received.mode != "batched"
        first = rejected[0][1]
        if single and first.reason == "too_large":
            raise Problem("too-large", first.message, limit=max_event_bytes)
        detail = first.message if single else f"none of the {len(received.values)} events is valid"
        raise Problem("invalid-event", detail, errors=outcomes)
    refused = {index for index, _ in rejected}
    accepted = [{"index": i, "status": 202} for i in range(len(received.values)) if i not in refused]
    events = sorted(accepted + outcomes, key=lambda outcome: int(outcome["index"]))
    return _json(207, {"job_id": job_id, "accepted": valid, "rejected": len(rejected), "events": events})


@router.post(
    "/events", status_code=202, openapi_extra=openapi.EVENTS_REQUEST, responses=openapi.EVENTS_RESPONSES
)
async def post_events(request: Request, state: StateDep, sender: ProducerDep) -> Response:
    """Receive CloudEvents in binary, structured or batched mode; enqueue the valid ones."""
    settings = state.settings
    name = sender.name if sender else ANONYMOUS
    if sender is None and not state.anonymous_events:
        raise Problem(
            "forbidden",
            "no EVENTWORKER_PRODUCERS_FILE: listening beyond loopback, this server takes no anonymous events",
        )
    body = await read_body(request, settings.http_max_body_bytes, settings.http_body_timeout)
    received = await _received(request, body, state, sender)
    _check_sources(sender, received.values)
    who = name if sender else f"address:{request_client(request, state.trusted_proxies)}"
    try:
        await state.admission.admit(who, len(received.values), time.time())
    except Problem:
        state.metrics.count_events(name, "refused", len(received.values))
        raise
    valid, rejected = _validated(received.values, settings.max_event_bytes)
    job_id = uuid.uuid4().hex
    if valid:
        job_id = await _enqueue(state, valid, job_id)
    if rejected and sender is not None:
        await _keep_dead_letters(state, sender, job_id, rejected)
    state.metrics.count_events(name, "enqueued", len(valid))
    state.metrics.count_events(name, "rejected", len(rejected))
    return _answer(received, job_id, len(valid), rejected, settings.max_event_bytes)


@router.options("/events", responses=openapi.HANDSHAKE_RESPONSES)
async def webhook_handshake(request: Request, state: StateDep) -> Response:
    """The CloudEvents webhook handshake: ``WebHook-Request-Origin`` gets ``WebHook-Allowed-Origin``."""
    origin = request.headers.get("webhook-request-origin")
    allow = {"Allow": "OPTIONS, POST"}
    if origin is None:
        return Response(status_code=204, headers=allow)
    allowed = state.settings.http_webhook_origins
    if "*" not in allowed and origin not in allowed:
        raise Problem("forbidden", f"origin {origin!r} is not in EVENTWORKER_HTTP_WEBHOOK_ORIGINS")
    headers = {**allow, "WebHook-Allowed-Origin": origin}
    if request.headers.get("webhook-request-rate") is not None:
        limit = state.settings.http_rate_limit
        headers["WebHook-Allowed-Rate"] = (
            "*" if limit is None else str(max(1, int(limit * 60 / state.settings.http_rate_window)))
        )
    return Response(status_code=200, headers=headers)
