"""One trace across processes: an application's span, through Redis and a worker, to its handlers' SQL.

Three processes and a receiver: a producer process (an application with OpenTelemetry's SDK of its own,
sending orders from inside a span with :class:`~worker.producer.EventProducer`), a real ``eventworker
run`` (tracing on through ``OTEL_EXPORTER_OTLP_ENDPOINT`` alone, the example handlers loaded), and an
OTLP/HTTP receiver in this test (``http.server``, each request decoded with ``opentelemetry-proto``),
to which both export. The receiver then holds one trace from the application's span to the SQL the
handlers ran, the worker's ingest job linked to it, and the worker's log lines name that trace.

With ``EVENTWORKER_TEST_TRACE_PICTURE=docs/tracing-trace.svg`` the test also draws the trace there: the
picture in docs/tracing.md comes from such a run.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import subprocess
import sys
import textwrap
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import pg_database_url
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from support import WorkerProcess, process_env
from tracepicture import Span, svg

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


class OtlpReceiver:
    """An OTLP/HTTP trace receiver on a free loopback port: every span it was sent, decoded."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                status = 200 if self.path == "/v1/traces" else 404
                if status == 200:
                    receiver.add(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def add(self, request: ExportTraceServiceRequest) -> None:
        found = []
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(
                        {
                            "service": attributes.get("service.name", ""),
                            "scope": scope_spans.scope.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_id": span.parent_span_id.hex(),
                            "name": span.name,
                            "kind": KINDS.get(span.kind, str(span.kind)),
                            "start": span.start_time_unix_nano,
                            "end": span.end_time_unix_nano,
                            "error": span.status.code == 2,
                            "attributes": {a.key: _value(a.value) for a in span.attributes},
                            "links": [(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                        }
                    )
        with self._lock:
            self.requests += 1
            self.spans += found

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.spans)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    started = OtlpReceiver()
    yield started
    started.close()


PRODUCER = textwrap.dedent(
    """
    import asyncio, os, sys
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from worker.producer import EventProducer

    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)

    async def main():
        orders = [
            {"specversion": "1.0", "id": f"order-{n}", "source": "/shop/checkout",
             "type": "com.example.order.created", "data": {"amount": 10 + n, "currency": "EUR"}}
            for n in range(3)
        ]
        async with EventProducer(os.environ["REDIS_URL"], queue_name=os.environ["QUEUE"]) as producer:
            with trace.get_tracer("shop").start_as_current_span("POST /checkout") as span:
                await producer.emit(orders)
        print(format(span.get_span_context().trace_id, "032x"))

    asyncio.run(main())
    provider.shutdown()
    """
)


def _wait_for(receiver: OtlpReceiver, done: Any, within: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within
    while True:
        spans = receiver.snapshot()
        if done(spans):
            return spans
        assert time.monotonic() < deadline, f"{len(spans)} spans received: {[s['name'] for s in spans]}"
        time.sleep(0.1)


def _handlers_and_their_sql(trace_id: str) -> Any:
    def done(spans: list[dict[str, Any]]) -> bool:
        handlers = [s for s in spans if s["trace_id"] == trace_id and s["name"].startswith("handler ")]
        ids = {s["span_id"] for s in handlers}
        sql = [s for s in spans if s["parent_id"] in ids and s["kind"] == "CLIENT"]
        return len(handlers) == 6 and len({s["parent_id"] for s in sql}) == 6

    return done


async def test_one_trace_from_the_producers_span_to_the_handlers_sql(
    receiver, pg_database, redis_url, queue_name, tmp_path
):
    """The application's span, its send span, the six handler runs (three orders, two handlers) and their
    SQL are one trace; the worker's ingest job links to it; the worker's log lines name it; no Redis
    command outside a job (arq's polls) is a span."""
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    env = process_env(
        DATABASE_URL=pg_database_url(pg_database),
        REDIS_URL=redis_url,
        EVENTWORKER_QUEUE_NAME=queue_name,
        EVENTWORKER_POLL_DELAY="0.01",
        EVENTWORKER_HANDLER_MODULES="examples.order_totals",
        PYTHONPATH=str(ROOT),
        **otel,
    )
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        worker.wait_started()
        produced = subprocess.run(
            [sys.executable, "-c", PRODUCER],
            env={**env, "QUEUE": queue_name},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert produced.returncode == 0, produced.stderr
        trace_id = produced.stdout.strip()
        spans = _wait_for(receiver, _handlers_and_their_sql(trace_id))
        await asyncio.sleep(1.0)  # a few idle polls of arq's, which must not become spans
        assert worker.stop() == 0
    finally:
        worker.kill()
    spans = receiver.snapshot()
    by_id = {s["span_id"]: s for s in spans}
    mine = [s for s in spans if s["trace_id"] == trace_id]

    [checkout] = [s for s in mine if s["name"] == "POST /checkout"]
    [send] = [s for s in mine if s["name"] == f"send {queue_name}"]
    assert (checkout["service"], checkout["parent_id"]) == ("shop", "")
    assert (send["service"], send["kind"], send["parent_id"]) == ("shop", "PRODUCER", checkout["span_id"])
    handlers = [s for s in mine if s["name"].startswith("handler ")]
    assert sorted(s["name"] for s in handlers) == sorted(
        [
            "handler examples.order_totals.check_order_total",
            "handler examples.order_totals.count_orders_of_source",
        ]
        * 3
    )
    for span in handlers:
        assert (span["service"], span["parent_id"]) == ("eventworker", send["span_id"])
        job = by_id[span["links"][0][1]]
        assert job["name"] == f"run_handlers {queue_name}"
    counting = [s for s in handlers if s["name"].endswith("count_orders_of_source")]
    for span in counting:
        sql = [s for s in mine if s["parent_id"] == span["span_id"] and s["kind"] == "CLIENT"]
        assert any(str(s["attributes"].get("db.statement", "")).startswith("SELECT count(*)") for s in sql)

    [ingest] = [s for s in spans if s["name"] == f"ingest_events {queue_name}"]
    assert ingest["parent_id"] == ""
    assert ingest["links"] == [(trace_id, send["span_id"])]
    assert ingest["attributes"]["messaging.batch.message_count"] == 3
    assert any(by_id.get(s["parent_id"]) is ingest and s["name"].startswith("INSERT") for s in spans)

    # Every client span (SQL, Redis) belongs to a job, a handler run or the producer: none is a root.
    assert [s["name"] for s in spans if s["kind"] == "CLIENT" and not s["parent_id"]] == []
    assert not any(s["name"] in {"ZRANGEBYSCORE", "ZRANGE"} for s in spans)

    lines = [orjson.loads(line) for line in worker.output().splitlines() if line.startswith("{")]
    totals = [line for line in lines if line.get("event") == "order.total"]
    assert len(totals) == 3
    check_ids = {s["span_id"] for s in handlers if s["name"].endswith("check_order_total")}
    for line in totals:
        assert line["trace_id"] == trace_id
        assert line["span_id"] in check_ids
    [stored] = [line for line in lines if line.get("event") == "ingest.stored"]
    assert (stored["trace_id"], stored["span_id"]) == (ingest["trace_id"], ingest["span_id"])
    assert all("trace_id" not in line for line in lines if line.get("event") == "worker.started")

    picture = svg([_span(s) for s in spans], trace_id, "One order's trace: shop → Redis → eventworker → SQL")
    ET.fromstring(picture)  # well-formed
    target = os.environ.get("EVENTWORKER_TEST_TRACE_PICTURE")
    (Path(target) if target else tmp_path / "trace.svg").write_text(picture)


def _span(s: dict[str, Any]) -> Span:
    return Span(
        trace_id=s["trace_id"],
        span_id=s["span_id"],
        parent_id=s["parent_id"],
        name=s["name"],
        service=s["service"],
        kind=s["kind"],
        start_ns=s["start"],
        end_ns=s["end"],
        error=s["error"],
        links=[span_id for _, span_id in s["links"]],
        detail=" ".join(str(s["attributes"].get("db.statement", "")).split()[:5])[:48],
    )
