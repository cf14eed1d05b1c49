"""Prometheus metrics of the HTTP side: requests by route and status, their latency, events by outcome.

A registry of its own per application (as each worker has its own), served at ``/metrics``.
:class:`MetricsMiddleware` is plain ASGI, not Starlette's ``BaseHTTPMiddleware`` (which runs each
request in a task of its own): it reads the route template (``/api/failed-jobs/{failed_id}``, not
the path: ids would make a series each) after routing, and the status from the response's start.
"""

from __future__ import annotations

import time
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram

#: Latency buckets in seconds: a request here takes from a fraction of a millisecond to seconds.
LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: The route label of a request no route matched (404s of scanners: one series, not one per path).
UNMATCHED: Final = "unmatched"


class HttpMetrics:
    """The HTTP side's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "eventworker_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "eventworker_http_request_duration_seconds",
            "Seconds from a request's arrival to the end of its response, by route template and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.events = Counter(
            "eventworker_http_events",
            "Events received over HTTP, by producer and outcome: enqueued, rejected (invalid), refused"
            " (not the producer's source, over a limit).",
            ["producer", "outcome"],
            registry=r,
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def count_events(self, producer: str, outcome: str, n: int) -> None:
        if n:
            self.events.labels(producer, outcome).inc(n)


class MetricsMiddleware:
    """Counts and times every HTTP request into an :class:`HttpMetrics`."""

    def __init__(self, app: Any, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the application raises before answering

        async def send_noting_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            self.metrics.observe(route, scope["method"], status, time.perf_counter() - started)
