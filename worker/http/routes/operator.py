"""The operator API under ``/api``: what ``eventworker status``, ``failed``, ``dead-letters``,
``handlers``, ``stats`` and ``rollups verify`` show, as JSON, and the actions an admin may take.

Reads need an operator token (read-only or admin), actions the admin token
(:mod:`worker.http.auth`). Lists are paged by key: ``?before=<id>`` gives the page after the one
whose smallest id that is; ``next`` in each answer is that id, null on the last page.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final

import orjson
from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from jobs.rollup import verify
from jobs.stats import build_report
from worker.db.models import DeadLetter, FailedJob
from worker.db.sql import operator_sql
from worker.domain.report import Window, to_json
from worker.errors import InvalidArgument
from worker.http.auth import AdminDep, ReaderDep
from worker.http.openapi import json_response, problems
from worker.http.problems import Problem
from worker.http.state import ReadSessionDep, SessionDep, StateDep
from worker.ops import status_text
from worker.ops.actions import ActionRefused, redrive_dead_letter, requeue_failed_job, retry_handler_runs

router = APIRouter(prefix="/api", tags=["operator"])

#: Characters of a dead letter's raw payload in a listing (the whole is in ``GET /api/dead-letters/{id}``).
RAW_PREVIEW: Final = 2000
_READ_ERRORS: Final = problems(401, 422)
_ACTION_ERRORS: Final = problems(401, 403, 404, 409, 422)
Limit = Annotated[int, Query(ge=1, le=1000, description="Rows per page.")]
#: The largest id a row can have (a 64-bit identity): a larger one is a 422, not a database error.
MAX_ID: Final = 2**63 - 1
Before = Annotated[
    int | None, Query(ge=1, le=MAX_ID, description="Rows with ids below this (the previous page's next).")
]
RowId = Annotated[int, Path(ge=1, le=MAX_ID, description="The record's id.")]
_OBJECT: Final = {"type": "object"}
_PAGE: Final = {
    "type": "object",
    "required": ["items", "next"],
    "properties": {"items": {"type": "array", "items": _OBJECT}, "next": {"type": ["integer", "null"]}},
}


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body, default=str), status_code=status, media_type="application/json")


def _page(items: list[dict[str, Any]], limit: int) -> Response:
    return _json({"items": items, "next": items[-1]["id"] if len(items) == limit else None})


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _dead_letter(row: DeadLetter, raw_chars: int | None = RAW_PREVIEW) -> dict[str, Any]:
    raw = bytes(row.raw).decode("utf-8", "backslashreplace")
    return {
        "id": row.id,
        "reason": row.reason,
        "errors": row.errors,
        "source": row.source,
        "event_id": row.event_id,
        "job_id": row.job_id,
        "job_name": row.job_name,
        "position": row.position,
        "received_at": _time(row.received_at),
        "raw": raw if raw_chars is None else raw[:raw_chars],
    }


def _failed(row: FailedJob) -> dict[str, Any]:
    return {
        "id": row.id,
        "job_id": row.job_id,
        "job": row.job_name,
        "tries": row.tries,
        "failed_at": _time(row.failed_at),
        "requeued_at": _time(row.requeued_at),
        "requeued_as": row.requeued_job_id,
        "error": row.error,
    }


def _refused(exc: ActionRefused) -> Problem:
    return Problem(exc.kind, exc.detail)


@router.get(
    "/status",
    responses={200: json_response("What `eventworker status --json` prints.", _OBJECT), **_READ_ERRORS},
)
async def status(_role: ReaderDep, state: StateDep) -> Response:
    """Queue, workers, running jobs, cron runs, rollup lag, failures and dead letters: ``status --json``."""
    return Response(status_text.dumps(await state.status()), media_type="application/json")


@router.get("/dead-letters", responses={200: json_response("A page of dead letters.", _PAGE), **_READ_ERRORS})
async def dead_letters(
    _role: ReaderDep,
    session: ReadSessionDep,
    limit: Limit = 50,
    before: Before = None,
    reason: Annotated[
        str | None, Query(max_length=32, description="Only this reason (invalid, too_large, ...).")
    ] = None,
) -> Response:
    """Dead letters, newest first, their raw payload cut to 2,000 characters."""
    rows = await operator_sql.dead_letters_page(session, limit=limit, before=before, reason=reason)
    return _page([_dead_letter(row) for row in rows], limit)


@router.get(
    "/dead-letters/{dead_letter_id}",
    responses={
        200: json_response("One dead letter, its raw payload whole.", _OBJECT),
        **problems(401, 404, 422),
    },
)
async def dead_letter(_role: ReaderDep, session: ReadSessionDep, dead_letter_id: RowId) -> Response:
    """One dead letter with its whole raw payload."""
    row = await operator_sql.dead_letter(session, dead_letter_id)
    if row is None:
        raise Problem("not-found", f"no dead letter {dead_letter_id}")
    return _json(_dead_letter(row, raw_chars=None))


@router.post(
    "/dead-letters/{dead_letter_id}/redrive",
    responses={200: json_response("Enqueued again; the dead letter is removed.", _OBJECT), **_ACTION_ERRORS},
)
async def redrive(_role: AdminDep, state: StateDep, session: SessionDep, dead_letter_id: RowId) -> Response:
    """Enqueue a dead letter's event again once its cause is fixed; it leaves the table (kept anew if bad)."""
    try:
        job_id = await redrive_dead_letter(session, state.redis, state.settings.queue_name, dead_letter_id)
    except ActionRefused as exc:
        raise _refused(exc) from None
    return _json({"dead_letter": dead_letter_id, "job_id": job_id})


@router.get("/failed-jobs", responses={200: json_response("A page of failed jobs.", _PAGE), **_READ_ERRORS})
async def failed_jobs(
    _role: ReaderDep,
    session: ReadSessionDep,
    limit: Limit = 50,
    before: Before = None,
    include_requeued: Annotated[bool, Query(description="Also those already requeued.")] = False,
) -> Response:
    """Jobs that used their last try, newest first."""
    rows = await operator_sql.failed_jobs_page(
        session, limit=limit, before=before, include_requeued=include_requeued
    )
    return _page([_failed(row) for row in rows], limit)


@router.post(
    "/failed-jobs/{failed_id}/requeue",
    responses={200: json_response("Enqueued again with its original arguments.", _OBJECT), **_ACTION_ERRORS},
)
async def requeue(_role: AdminDep, state: StateDep, session: SessionDep, failed_id: RowId) -> Response:
    """Enqueue a failed job again with its original arguments (``eventworker failed requeue``)."""
    try:
        done = await requeue_failed_job(session, state.redis, state.settings.queue_name, failed_id)
    except ActionRefused as exc:
        raise _refused(exc) from None
    return _json({"failed_job": done.failed_job, "job": done.job, "job_id": done.job_id})


@router.get("/handler-runs", responses={200: json_response("A page of handler runs.", _PAGE), **_READ_ERRORS})
async def handler_runs(
    _role: ReaderDep,
    session: ReadSessionDep,
    limit: Limit = 50,
    before: Before = None,
    status: Annotated[
        str | None, Query(pattern="^(pending|done|failed)$", description="Only this status.")
    ] = None,
) -> Response:
    """Event handler runs with their event's identity, newest first."""
    rows = await operator_sql.handler_runs_page(session, limit=limit, before=before, status=status)
    return _page(rows, limit)


@router.post(
    "/handler-runs/{run_id}/retry",
    responses={200: json_response("Pending again; run_handlers enqueued.", _OBJECT), **_ACTION_ERRORS},
)
async def retry_run(_role: AdminDep, state: StateDep, session: SessionDep, run_id: RowId) -> Response:
    """Make a failed handler run pending again with fresh tries (``eventworker handlers retry``)."""
    return await _retry(state, session, [run_id])


@router.post(
    "/handler-runs/retry-failed",
    responses={200: json_response("Every failed run pending again.", _OBJECT), **_ACTION_ERRORS},
)
async def retry_all(_role: AdminDep, state: StateDep, session: SessionDep) -> Response:
    """Make every failed handler run pending again (``eventworker handlers retry --all-failed``)."""
    return await _retry(state, session, None)


async def _retry(state: Any, session: Any, ids: list[int] | None) -> Response:
    try:
        reset, job_id = await retry_handler_runs(session, state.redis, state.settings.queue_name, ids)
    except ActionRefused as exc:
        raise _refused(exc) from None
    return _json({"runs": reset, "job_id": job_id})


@router.get(
    "/stats",
    responses={200: json_response("What `eventworker stats --json` prints.", _OBJECT), **_READ_ERRORS},
)
async def stats(
    _role: ReaderDep,
    state: StateDep,
    window: Annotated[str, Query(max_length=16, description="How far back: 15m, 1h, 24h, 7d.")] = "1h",
) -> Response:
    """Event counts by type, source and subject, ingestion lag and dead letters over the window."""
    try:
        span = Window.last(window)
    except InvalidArgument as exc:
        raise Problem("invalid-parameter", f"window: {exc.problem}") from None
    return _json(to_json(await build_report(await state.read_db(), span)))


@router.get(
    "/rollups/verify",
    responses={200: json_response("The rollups compared with the events.", _OBJECT), **_READ_ERRORS},
)
async def verify_rollups(_role: ReaderDep, state: StateDep) -> Response:
    """Compare the rollups with the events counted again (``eventworker rollups verify``)."""
    checked = await verify(await state.read_db())
    return _json(
        {
            "position": checked.position,
            "buckets": checked.buckets,
            "matches": not checked.differences,
            "differences": [
                {
                    "bucket_seconds": d.key.bucket_seconds,
                    "bucket_start": d.key.bucket_start.isoformat(),
                    "type": d.key.type,
                    "source": d.key.source,
                    "expected": d.expected,
                    "actual": d.actual,
                    "text": str(d),
                }
                for d in checked.differences
            ],
        }
    )
