"""Ingest counters by outcome, source and type; dead letters by reason; the pool gauges."""

from __future__ import annotations

import pytest
from sqlalchemy.pool import QueuePool

from worker.protocol.events import Rejection
from worker.runtime.metrics import MAX_LABEL_VALUES, Metrics


def events(metrics: Metrics, outcome: str, source: str, type_: str) -> float | None:
    labels = {"outcome": outcome, "source": source, "type": type_}
    return metrics.registry.get_sample_value("eventworker_events_total", labels)


@pytest.mark.parametrize(
    ("accepted", "duplicates", "expected"),
    [
        pytest.param(3, 0, {"accepted": 3, "duplicate": None}, id="all new"),
        pytest.param(0, 3, {"accepted": None, "duplicate": 3}, id="all repeated"),
        pytest.param(1, 2, {"accepted": 1, "duplicate": 2}, id="mixed: totals exact"),
    ],
)
def test_count_ingest_splits_a_batch_by_outcome(accepted, duplicates, expected):
    """A batch's valid events are counted accepted or duplicate, adding up to what the insert said."""
    metrics = Metrics()
    metrics.count_ingest([("/shop", "order")] * 3, accepted, duplicates, [])
    assert {outcome: events(metrics, outcome, "/shop", "order") for outcome in expected} == expected


def test_duplicates_dropped_within_a_batch_and_rejections_are_counted():
    """In-batch duplicates count as unknown series; each rejection is an event and a dead letter."""
    metrics = Metrics()
    rejected = [
        Rejection(b"{}", "invalid", [], 0, source="/shop"),
        Rejection(b"x" * 9, "too_large", [], 1),
    ]
    metrics.count_ingest([("/shop", "order")], 1, 2, rejected)
    value = metrics.registry.get_sample_value
    assert events(metrics, "accepted", "/shop", "order") == 1
    assert events(metrics, "duplicate", "unknown", "unknown") == 2
    assert events(metrics, "rejected", "/shop", "unknown") == 1
    assert events(metrics, "rejected", "unknown", "unknown") == 1
    assert value("eventworker_dead_letters_total", {"reason": "invalid"}) == 1
    assert value("eventworker_dead_letters_total", {"reason": "too_large"}) == 1


def test_a_hostile_producer_cannot_grow_the_series_without_bound():
    """Past MAX_LABEL_VALUES distinct sources, new ones count as "other"."""
    metrics = Metrics()
    metrics.count_ingest(
        [(f"/s{n}", "t") for n in range(MAX_LABEL_VALUES + 20)], MAX_LABEL_VALUES + 20, 0, []
    )
    sources = {
        sample.labels["source"]
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == "eventworker_events_total"
    }
    assert len(sources) == MAX_LABEL_VALUES + 1
    assert events(metrics, "accepted", "other", "t") == 20


def test_pool_gauges_never_go_negative():
    """SQLAlchemy's overflow counts up from -pool_size; the gauge shows 0 until connections overflow."""
    metrics = Metrics()
    metrics.watch_pool(QueuePool(lambda: None, pool_size=5, max_overflow=5))
    value = metrics.registry.get_sample_value
    states = {
        s: value("eventworker_db_pool_connections", {"state": s})
        for s in ("size", "idle", "checked_out", "overflow")
    }
    assert states == {"size": 5, "idle": 0, "checked_out": 0, "overflow": 0}
