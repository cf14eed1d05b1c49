"""Prometheus metrics of one worker process, served over HTTP when ``EVENTWORKER_METRICS_PORT`` is set.

One :class:`Metrics` per worker, made in ``on_startup`` with a registry of its own
(nothing at import). Label values a producer controls (event source and type) are
bounded: the first :data:`MAX_LABEL_VALUES` distinct values are kept, later ones
count as ``other``, so a hostile producer cannot blow up the number of series.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from sqlalchemy.pool import Pool

    from worker.events import Rejection

#: Distinct values kept per producer-controlled label before the rest become "other".
MAX_LABEL_VALUES = 50
OTHER = "other"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class BoundedLabel:
    """Maps label values to themselves until ``limit`` distinct ones were seen, then to ``other``."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self._limit:
                self._seen.add(value[:200])
                return value[:200]
        return OTHER


#: Pool figures exported: (state label, Pool method). ``size`` is the configured pool size, ``idle``
#: the open connections not checked out, ``overflow`` the connections open beyond ``size``.
_POOL_STATES = (
    ("size", "size"),
    ("idle", "checkedin"),
    ("checked_out", "checkedout"),
    ("overflow", "overflow"),
)


class _PoolCollector(Collector):
    """Connection pool figures, read from the pool at scrape time."""

    def __init__(self) -> None:
        self.pool: Pool | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "eventworker_db_pool_connections",
            "Database connections of this worker, by state.",
            labels=["state"],
        )
        pool = self.pool
        if pool is not None:
            for state, method in _POOL_STATES:
                value = getattr(pool, method, None)
                if callable(value):
                    # QueuePool.overflow() counts down from -pool_size while the pool fills up.
                    family.add_metric([state], max(0.0, float(value())))
        yield family


class Metrics:
    """Every metric a worker exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs_started = Counter("eventworker_jobs_started", "Jobs started, by job.", ["job"], registry=r)
        self.jobs_succeeded = Counter(
            "eventworker_jobs_succeeded", "Jobs that succeeded.", ["job"], registry=r
        )
        self.jobs_retried = Counter(
            "eventworker_jobs_retried", "Tries that asked for a retry.", ["job"], registry=r
        )
        self.jobs_failed = Counter(
            "eventworker_jobs_failed", "Jobs recorded as failed after their last try.", ["job"], registry=r
        )
        self.job_duration = Histogram(
            "eventworker_job_duration_seconds",
            "Time a job try took.",
            ["job"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.events = Counter(
            "eventworker_events",
            "Events by outcome (accepted, duplicate, rejected), source and type (bounded label values).",
            ["outcome", "source", "type"],
            registry=r,
        )
        self.dead_letters = Counter(
            "eventworker_dead_letters", "Dead letters kept, by reason.", ["reason"], registry=r
        )
        self.queue_depth = Gauge(
            "eventworker_queue_depth",
            "Jobs in the queue not started yet, due now or deferred (sampled; the same on every worker).",
            registry=r,
        )
        self.queue_due = Gauge(
            "eventworker_queue_due",
            "Jobs in the queue due now, waiting for a free worker (sampled).",
            registry=r,
        )
        self.jobs_in_progress = Gauge(
            "eventworker_queue_in_progress", "Jobs running on any worker of the queue (sampled).", registry=r
        )
        self.oldest_job_age = Gauge(
            "eventworker_queue_oldest_job_age_seconds",
            "How long the longest-waiting due job has been due; 0 when none waits (sampled).",
            registry=r,
        )
        self.rollup_lag = Gauge(
            "eventworker_rollup_lag_events",
            "Events stored past the rollup checkpoint, counted up to a million (sampled).",
            registry=r,
        )
        self.jobs_running = Gauge(
            "eventworker_worker_jobs_running", "Jobs this worker is running now.", registry=r
        )
        self.sample_errors = Counter(
            "eventworker_sample_errors",
            "Samples of the queue (redis) or the rollup lag (database) that failed.",
            ["source"],
            registry=r,
        )
        self._pool = _PoolCollector()
        r.register(self._pool)
        self.source_label = BoundedLabel()
        self.type_label = BoundedLabel()

    def watch_pool(self, pool: Pool) -> None:
        """Report this pool's size, checked-out and overflow connections."""
        self._pool.pool = pool

    def count_events(self, outcome: str, pairs: Iterable[tuple[str | None, str | None]]) -> None:
        """Count events of one outcome by (source, type); unknown parts count as ``unknown``.

        One ``labels()`` lookup per distinct pair, not per event (a batch repeats few pairs).
        """
        for (source, type_), count in collections.Counter(pairs).items():
            self.events.labels(
                outcome, self.source_label(source or "unknown"), self.type_label(type_ or "unknown")
            ).inc(count)

    def count_ingest(
        self, series: Sequence[tuple[str, str]], accepted: int, duplicates: int, rejected: Iterable[Rejection]
    ) -> None:
        """Count one ingest batch: events by outcome, source and type, and dead letters by reason.

        ``series`` is (source, type) of each valid event offered to the insert, in order, of
        which ``accepted`` were new; ``duplicates`` counts every duplicate of the batch, also
        those dropped within it before the insert (counted with source and type ``unknown``).
        The insert reports how many rows were new, not which: in a batch mixing new and
        repeated events the totals by outcome are exact and the split across series is not.
        """
        self.count_events("accepted", series[:accepted])
        repeated = series[accepted:]
        self.count_events("duplicate", repeated)
        self.count_events("duplicate", [(None, None)] * max(0, duplicates - len(repeated)))
        for rejection in rejected:
            self.count_events("rejected", [(rejection.source, None)])
            self.dead_letters.labels(rejection.reason).inc()

    def serve(self, port: int, host: str = "0.0.0.0") -> int:  # noqa: S104 - a container's port is published
        """Serve /metrics on ``host:port`` from a background thread; return the port (0 picks a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server: WSGIServer | None = server
        return int(server.server_port)

    def close(self) -> None:
        """Stop serving."""
        server = getattr(self, "_server", None)
        if server is not None:
            server.shutdown()
            server.server_close()
            self._server = None
