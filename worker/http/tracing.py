"""A span per HTTP request (with tracing on): the request's W3C ``traceparent`` header is its parent.

A pure ASGI middleware, added by :func:`worker.http.app.create_app` only when tracing is on, so that
a server without tracing runs none of it. The span is made by the tracing hooks
(:meth:`worker.tracing.hooks.Tracing.http_request`); events a request enqueues carry the trace of the
producer span under it, unless they came with a ``traceparent`` of their own (``ce-traceparent`` in
binary mode, the attribute in structured and batched mode). Probes and scrapes are not spanned.
"""

from __future__ import annotations

from typing import Any, Final

from worker.tracing import hooks

#: Paths that get no span: probes and scrapes, polled every few seconds by machines.
UNTRACED_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics"})


class TracingMiddleware:
    """Wraps every HTTP request but the probes in a ``SERVER`` span named by its route."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        tracing = hooks.ACTIVE
        if scope["type"] != "http" or tracing is None or scope["path"] in UNTRACED_PATHS:
            await self.app(scope, receive, send)
            return
        status = 500  # what the client sees if the application raises before answering

        async def send_noting_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with tracing.http_request(scope["method"], scope["path"], scope["scheme"], scope["headers"]) as span:
            try:
                await self.app(scope, receive, send_noting_status)
            finally:
                span.ended(status, getattr(scope.get("route"), "path", None))
