"""``/healthz`` (the process answers), ``/readyz`` (Redis and the database answer) and ``/metrics``.

For orchestrators: a liveness probe that fails only when the process is stuck, a readiness
probe that takes the instance out of rotation while a backing service is unreachable, each
check bounded by :data:`CHECK_TIMEOUT_S`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from worker.http.openapi import json_response, problems
from worker.http.problems import Problem
from worker.http.state import StateDep
from worker.logging import redact_text

router = APIRouter(tags=["health"])

#: Longest each readiness check waits: well within an orchestrator's probe timeout.
CHECK_TIMEOUT_S: Final = 2.0

_STATUS = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}


@router.get("/healthz", responses={200: json_response("The process answers.", _STATUS)})
async def healthz() -> dict[str, str]:
    """Alive: the process answers requests."""
    return {"status": "alive"}


async def _check(what: str, probe: Any, secrets: list[str]) -> str | None:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await probe()
    except TimeoutError:
        return f"{what}: no answer within {CHECK_TIMEOUT_S:g}s"
    except Exception as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""]
        return redact_text(f"{what}: {type(exc).__name__}: {reason[0]}", secrets)
    return None


@router.get(
    "/readyz",
    responses={200: json_response("Redis and the database answer.", _STATUS), **problems(503)},
)
async def readyz(state: StateDep) -> dict[str, str]:
    """Ready: Redis answers PING and the database SELECT 1, each within a bound."""

    async def database() -> None:
        async with state.db.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    secrets = state.settings.secrets()
    found = await asyncio.gather(
        _check("redis", state.redis.ping, secrets), _check("database", database, secrets)
    )
    failing = [problem for problem in found if problem]
    if failing:
        raise Problem("unavailable", "; ".join(failing), retry_after=5, headers={"Retry-After": "5"})
    return {"status": "ready"}


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"description": "Prometheus text format.", "content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(state: StateDep) -> Response:
    """The HTTP side's Prometheus metrics."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
