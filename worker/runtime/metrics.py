"""Prometheus metrics of one worker process, served over HTTP when ``EVENTWORKER_METRICS_PORT`` is set.

One :class:`Metrics` per worker, made in ``on_startup`` with a registry of its own
(nothing at import). Label values a producer controls (event source and type) are
bounded: the first :data:`MAX_LABEL_VALUES` distinct values are kept, later ones
count as ``other``, so a hostile producer cannot blow up the number of series.

Events by outcome, source and type are counted on every ingest batch, so they skip
prometheus_client's ``Counter`` (a lock and a child lookup per series and batch):
:class:`_EventCounts` keeps plain counts, adds a batch under one lock and exports them at
scrape time.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from sqlalchemy.pool import Pool

    from worker.protocol.events import Rejection

#: Distinct values kept per producer-controlled label before the rest become "other".
MAX_LABEL_VALUES = 50
#: Characters a label value keeps; longer values are cut.
MAX_LABEL_LENGTH = 200
OTHER = "other"
UNKNOWN = "unknown"
#: Raw (source, type) pairs :class:`_EventCounts` remembers per outcome (when full it starts over), so
#: endless new values from a producer cost label lookups, not memory. Only pairs of values no longer
#: than :data:`MAX_LABEL_LENGTH` are remembered: about 2 MB per outcome when full of ASCII values.
LABEL_MEMO_SIZE = 4096
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class BoundedLabel:
    """Maps label values to themselves until ``limit`` distinct ones were seen, then to ``other``."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        # Cut first: a long value kept while there was room stays kept, as its cut form was seen.
        value = value[:MAX_LABEL_LENGTH]
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self._limit:
                self._seen.add(value)
                return value
        return OTHER


#: (source, type) of an event as read, either part ``None`` when it could not be read.
RawPair = tuple[str | None, str | None]
#: The label values of one series of ``eventworker_events_total``: (outcome, source, type).
EventKey = tuple[str, str, str]


class _Series:
    """One series' count and when it was first counted (its ``_created`` sample)."""

    __slots__ = ("created", "value")

    def __init__(self, created: float) -> None:
        self.value = 0
        self.created = created


class _EventCounts(Collector):
    """``eventworker_events_total`` by outcome and bounded source and type, exported at scrape time.

    Batches are counted on the worker's event loop and scraped from the HTTP server's thread; one
    lock per batch (and per scrape, to copy the counts) keeps the two apart, so a scrape sees
    whole batches. A raw pair's label values are decided once (a value keeps its label for good),
    so each outcome remembers which series a raw pair counts in, up to :data:`LABEL_MEMO_SIZE`
    pairs, and the common case makes no :class:`BoundedLabel` call.
    """

    name = "eventworker_events"
    documentation = (
        "Events by outcome (accepted, duplicate, rejected), source and type (bounded label values)."
    )
    labelnames = ("outcome", "source", "type")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[EventKey, _Series] = {}
        self._memo: dict[str, dict[RawPair, _Series]] = {}
        self._source_label = BoundedLabel()
        self._type_label = BoundedLabel()

    def add(self, batch: Iterable[tuple[str, Iterable[RawPair]]]) -> None:
        """Count each raw (source, type) under its outcome; new label values take slots in the order met.

        One pass over the events, a memo lookup and an increment each: cheaper than grouping them
        with a ``collections.Counter`` first, which hashes every event all the same.
        """
        with self._lock:
            for outcome, pairs in batch:
                memo = self._memo.setdefault(outcome, {})
                remembered = memo.get
                for pair in pairs:
                    series = remembered(pair)
                    if series is None:
                        series = self._remember(outcome, pair, memo)
                    series.value += 1

    def _remember(self, outcome: str, pair: RawPair, memo: dict[RawPair, _Series]) -> _Series:
        source, type_ = pair
        # "unknown" (a part that could not be read) takes none of the label's slots: it is always itself.
        key = (
            outcome,
            self._source_label(source) if source else UNKNOWN,
            self._type_label(type_) if type_ else UNKNOWN,
        )
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(time.time())
        if max(len(source or ""), len(type_ or "")) <= MAX_LABEL_LENGTH:
            if len(memo) >= LABEL_MEMO_SIZE:
                memo.clear()
            memo[pair] = series
        return series

    def describe(self) -> Iterator[CounterMetricFamily]:
        """The family without samples, so the registry checks its names without a scrape."""
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[CounterMetricFamily]:
        """A counter sample per series, with ``_created`` as prometheus_client's ``Counter`` has it."""
        with self._lock:
            snapshot = [(key, s.value, s.created) for key, s in self._series.items()]
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        # Honours PROMETHEUS_DISABLE_CREATED_SERIES / disable_created_metrics() as Counter does.
        use_created = prometheus_metrics._use_created
        for key, value, created in snapshot:
            family.add_metric(key, float(value), created if use_created else None)
        yield family


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
        self._events = _EventCounts()
        r.register(self._events)
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

    def job_started(self, job: str) -> None:
        """Count a try of ``job`` that started."""
        self.jobs_started.labels(job).inc()

    def job_succeeded(self, job: str, seconds: float) -> None:
        """Count a try of ``job`` that succeeded after ``seconds``."""
        self.job_duration.labels(job).observe(seconds)
        self.jobs_succeeded.labels(job).inc()

    def job_raised(self, job: str, seconds: float) -> None:
        """Note how long a try of ``job`` ran before it raised (whatever is decided then)."""
        self.job_duration.labels(job).observe(seconds)

    def job_retried(self, job: str) -> None:
        """Count a try of ``job`` that asked arq for a retry."""
        self.jobs_retried.labels(job).inc()

    def job_failed(self, job: str) -> None:
        """Count a job recorded in failed_jobs."""
        self.jobs_failed.labels(job).inc()

    def watch_pool(self, pool: Pool) -> None:
        """Report this pool's size, checked-out and overflow connections."""
        self._pool.pool = pool

    def count_events(self, outcome: str, pairs: Iterable[tuple[str | None, str | None]]) -> None:
        """Count events of one outcome by (source, type); unknown parts count as ``unknown``."""
        self._events.add([(outcome, pairs)])

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
        repeated = series[accepted:]
        dropped = itertools.repeat((None, None), max(0, duplicates - len(repeated)))
        rejections = list(rejected)
        self._events.add(
            [
                ("accepted", series[:accepted]),
                ("duplicate", itertools.chain(repeated, dropped)),
                ("rejected", [(r.source, None) for r in rejections]),
            ]
        )
        for reason, count in collections.Counter(r.reason for r in rejections).items():
            self.dead_letters.labels(reason).inc(count)

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
