"""The FastAPI application of ``eventworker serve``: built by :func:`create_app`, run by uvicorn.

Its lifespan creates what every request shares (:class:`~worker.http.state.HttpState`): the
engine, the Redis pool and the producer client on it; at shutdown, once uvicorn has let the
requests in flight finish, it closes the pool and disposes of the engine. Nothing is created at
import. Routes, by area: :mod:`~worker.http.routes.events` (CloudEvents in),
:mod:`~worker.http.routes.operator` (the operator API), :mod:`~worker.http.routes.health` (probes
and metrics).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from worker.config import Settings
from worker.db.engine import Database
from worker.db.replica import ReadRouter
from worker.domain.producers import Producers
from worker.http.dashboard import routes as dashboard
from worker.http.dashboard.session import session_key
from worker.http.limits import Admission, parse_networks
from worker.http.metrics import HttpMetrics, MetricsMiddleware
from worker.http.problems import PROBLEM_JSON, Problem, problem_response
from worker.http.routes import events, health, operator
from worker.http.state import HttpState
from worker.http.tracing import TracingMiddleware
from worker.logging import get_logger
from worker.ops.status import StatusReader
from worker.protocol.producer import EventProducer
from worker.protocol.redis import MEMORY_URL, memory_pool, worker_pool
from worker.protocol.serialization import deserialize
from worker.tracing import hooks

log = get_logger("eventworker.http")


def redis_pool(settings: Settings) -> Any:
    """The application's Redis pool: connects on first use, so serve starts while Redis is down."""
    if settings.redis_url == MEMORY_URL:
        return memory_pool()
    return worker_pool(
        settings.redis_url, retry_window=0.0, job_deserializer=deserialize, queue_name=settings.queue_name
    )


async def _validation_problem(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": ".".join(map(str, error["loc"])), "msg": error["msg"], "type": error["type"]}
        for error in exc.errors()
    ]
    body = {
        "type": "urn:eventworker:problem:invalid-parameter",
        "title": "Invalid parameter",
        "status": 422,
        "detail": "; ".join(f"{e['loc']}: {e['msg']}" for e in errors),
        "errors": errors,
    }
    return Response(orjson.dumps(body), status_code=422, media_type=PROBLEM_JSON)


async def _http_problem(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    body = {
        "type": "about:blank",
        "title": str(exc.detail),
        "status": exc.status_code,
        "detail": str(exc.detail),
    }
    return Response(
        orjson.dumps(body), status_code=exc.status_code, media_type=PROBLEM_JSON, headers=exc.headers
    )


def create_app(
    settings: Settings, producers: Producers | None = None, *, anonymous_events: bool = True
) -> FastAPI:
    """The application for ``settings``; ``producers``: the producers file, read (None: no token needed).

    ``anonymous_events``: without a producers file, whether anyone may send events (False for a
    dashboard listening beyond loopback).
    """
    metrics = HttpMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database.from_settings(settings)
        redis = redis_pool(settings)
        # The durability `eventworker enqueue` has: with EVENTWORKER_ENQUEUE_REPLICAS, a 202 means that
        # many Redis replicas acknowledged the job too (WAIT), so a failover keeps it.
        producer = EventProducer(
            settings.redis_url,
            queue_name=settings.queue_name,
            redis=redis,
            durability="replicated" if settings.enqueue_replicas else "primary",
            replicas=max(settings.enqueue_replicas, 1),
            replica_timeout=settings.enqueue_replica_timeout,
        )
        app.state.http = HttpState(
            settings=settings,
            db=db,
            redis=redis,
            producer=producer,
            producers=producers,
            metrics=metrics,
            admission=Admission(
                redis,
                settings.queue_name,
                settings.http_rate_limit,
                settings.http_rate_window,
                settings.http_max_queue_depth,
            ),
            trusted_proxies=parse_networks(settings.http_trusted_proxies),
            status_reader=StatusReader(settings),
            reads=ReadRouter(settings) if settings.database_read_url else None,
            anonymous_events=anonymous_events,
            session_key=session_key(settings, fallback=secrets.token_bytes(32)),
        )
        if settings.http_session_secret is None and (
            settings.admin_token_sha256 or settings.reader_token_sha256
        ):
            log.warning(
                "http.session_secret_unset", effect="logins hold only on this process, until it restarts"
            )
        log.info("http.started", producers=None if producers is None else len(producers.by_digest))
        try:
            yield
        finally:
            await app.state.http.status_reader.close()
            if app.state.http.reads is not None:
                await app.state.http.reads.dispose()
            await redis.aclose(close_connection_pool=True)
            await db.dispose()
            log.info("http.stopped")

    app = FastAPI(
        title="eventworker",
        summary="CloudEvents over HTTP into eventworker's queue, and the operator API.",
        version=_version(),
        lifespan=lifespan,
    )
    app.add_exception_handler(Problem, problem_response)
    app.add_exception_handler(RequestValidationError, _validation_problem)
    app.add_exception_handler(HTTPException, _http_problem)
    app.include_router(events.router)
    app.include_router(operator.router)
    app.include_router(health.router)
    app.include_router(dashboard.router)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if hooks.ACTIVE is not None:  # outermost: the span covers the metrics' timing too
        app.add_middleware(TracingMiddleware)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("eventworker")
    except PackageNotFoundError:  # pragma: no cover - a checkout run without installing
        return "0"
