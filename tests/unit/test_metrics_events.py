"""``eventworker_events_total``: counted into plain counts per batch, scraped from another thread.

The counts skip prometheus_client's ``Counter`` for speed; these tests hold the scrape to what that
``Counter`` exported (same samples, HELP text, ``_created`` series and bounded labels), check that
counts add up over batches, that the label memo stays bounded, and that a scrape from another thread
while batches are counted neither fails nor sees half a batch.
"""

from __future__ import annotations

import collections
import random
import re
import sys
import threading
import time

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import worker.runtime.metrics
from worker.protocol.events import Rejection
from worker.runtime.metrics import MAX_LABEL_VALUES, OTHER, BoundedLabel, Metrics

HELP = "Events by outcome (accepted, duplicate, rejected), source and type (bounded label values)."


class CounterReference:
    """``Metrics`` counted the same way: a prometheus_client ``Counter``, a ``labels().inc`` per pair."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["outcome", "source", "type"]
        self.events = Counter("eventworker_events", HELP, labels, registry=self.registry)
        self.dead_letters = Counter(
            "eventworker_dead_letters", "Dead letters kept, by reason.", ["reason"], registry=self.registry
        )
        self.source_label, self.type_label = BoundedLabel(), BoundedLabel()

    def count_events(self, outcome, pairs):
        for (source, type_), count in collections.Counter(pairs).items():
            self.events.labels(  # "unknown" takes no slot of the bounded labels
                outcome,
                self.source_label(source) if source else "unknown",
                self.type_label(type_) if type_ else "unknown",
            ).inc(count)

    def count_ingest(self, series, accepted, duplicates, rejected):
        self.count_events("accepted", series[:accepted])
        repeated = series[accepted:]
        self.count_events("duplicate", repeated)
        self.count_events("duplicate", [(None, None)] * max(0, duplicates - len(repeated)))
        for rejection in rejected:
            self.count_events("rejected", [(rejection.source, None)])
            self.dead_letters.labels(rejection.reason).inc()


def batches(seed: int, count: int = 12):
    """Random ingest batches: 70 sources and 30 types (past the bound), long values, drops, rejections."""
    rng = random.Random(seed)
    sources = [f"/shop/{n}" for n in range(70)] + ["/" + "s" * 250]
    types = [f"com.example.t{n}" for n in range(30)] + ["t" * 250]
    for _ in range(count):
        series = [(rng.choice(sources), rng.choice(types)) for _ in range(rng.randrange(0, 300))]
        accepted = rng.randrange(0, len(series) + 1)
        duplicates = len(series) - accepted + rng.randrange(0, 5)
        rejected = [
            Rejection(b"{}", rng.choice(["invalid", "too_large"]), [], n, source=rng.choice([*sources, None]))
            for n in range(rng.randrange(0, 4))
        ]
        yield series, accepted, duplicates, rejected


def sample_lines(registry: CollectorRegistry) -> list[str]:
    """The exposition lines of events and dead letters, ``_created`` values (clock times) blanked."""
    text = generate_latest(registry).decode()
    lines = [line for line in text.splitlines() if "eventworker_events" in line or "dead_letters" in line]
    return [re.sub(r"(_created\{.*\}) \S+$", r"\1 <created>", line) for line in lines]


def events_total(metrics: Metrics) -> dict[tuple[str, str, str], float]:
    """The ``eventworker_events_total`` samples by (outcome, source, type)."""
    return {
        (s.labels["outcome"], s.labels["source"], s.labels["type"]): s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "eventworker_events_total"
    }


@pytest.mark.parametrize("created", [True, False], ids=["with _created", "created series disabled"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_scrape_has_the_lines_prometheus_client_counter_had(monkeypatch, seed, created):
    """For the same batches, the scrape is line for line what the Counter gave: HELP, TYPE, samples, order."""
    monkeypatch.setattr(prometheus_client.metrics, "_use_created", created)
    metrics, reference = Metrics(), CounterReference()
    before = time.time()
    for batch in batches(seed):
        metrics.count_ingest(*batch)
        reference.count_ingest(*batch)
    metrics.count_events("accepted", [(None, "com.example.t1"), ("/shop/2", None)])
    reference.count_events("accepted", [(None, "com.example.t1"), ("/shop/2", None)])

    lines = sample_lines(metrics.registry)
    assert f"# HELP eventworker_events_total {HELP}" in lines
    assert any(f'source="{OTHER}"' in line for line in lines)
    assert any("<created>" in line for line in lines) == created
    assert lines == sample_lines(reference.registry)
    created_at = [
        s.value for f in metrics.registry.collect() for s in f.samples if s.name.endswith("created")
    ]
    assert all(before <= value <= time.time() for value in created_at)


def test_counts_add_up_over_batches():
    """Each series' count is the sum of its events over every batch, whatever the outcome split."""
    metrics = Metrics()
    rng = random.Random(7)
    expected: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for _ in range(20):
        series = [(f"/shop/{rng.randrange(10)}", f"t{rng.randrange(5)}") for _ in range(200)]
        accepted = rng.randrange(0, 201)
        metrics.count_ingest(series, accepted, 200 - accepted + 3, [Rejection(b"{}", "invalid", [], 0)])
        expected.update(("accepted", *pair) for pair in series[:accepted])
        expected.update(("duplicate", *pair) for pair in series[accepted:])
        expected["duplicate", "unknown", "unknown"] += 3
        expected["rejected", "unknown", "unknown"] += 1
    assert events_total(metrics) == expected
    reasons = metrics.registry.get_sample_value("eventworker_dead_letters_total", {"reason": "invalid"})
    assert reasons == 20


def test_the_51st_source_is_other_in_any_later_batch_and_the_first_50_keep_their_label():
    """Label values are bounded across batches: a source first seen past the bound stays ``other``."""
    metrics = Metrics()
    metrics.count_ingest([(f"/s{n}", "t") for n in range(MAX_LABEL_VALUES)], MAX_LABEL_VALUES, 0, [])
    metrics.count_ingest([("/late", "t"), ("/s0", "t")], 2, 0, [])
    metrics.count_ingest([("/late", "t"), ("/s0", "t")], 0, 2, [])
    counts = events_total(metrics)
    assert counts["accepted", OTHER, "t"] == 1
    assert counts["duplicate", OTHER, "t"] == 1
    assert counts["accepted", "/s0", "t"] == 2
    assert counts["duplicate", "/s0", "t"] == 1
    assert {source for _, source, _ in counts} == {f"/s{n}" for n in range(MAX_LABEL_VALUES)} | {OTHER}


def test_a_long_value_kept_while_there_was_room_keeps_its_cut_label_once_the_label_is_full():
    """Values are cut to 200 characters before they are bounded, so a kept long value is never ``other``."""
    label = BoundedLabel(limit=2)
    long = "x" * 300
    assert label(long) == "x" * 200
    assert label("b") == "b"
    assert (label(long), label("x" * 250), label("c")) == ("x" * 200, "x" * 200, OTHER)


def test_the_label_memo_stays_bounded_and_starting_over_changes_no_label(monkeypatch):
    """A tiny memo fills and starts over many times; the scrape still matches the Counter's."""
    monkeypatch.setattr(worker.runtime.metrics, "LABEL_MEMO_SIZE", 8)
    metrics, reference = Metrics(), CounterReference()
    for batch in batches(seed=4):
        metrics.count_ingest(*batch)
        reference.count_ingest(*batch)
        # Private, as nothing else shows the memo's size: the bound is what keeps memory flat.
        memo = metrics._events._memo
        assert max(len(pairs) for pairs in memo.values()) <= 8
        assert all(len(part or "") <= 200 for pairs in memo.values() for pair in pairs for part in pair)
    assert sample_lines(metrics.registry) == sample_lines(reference.registry)


def test_the_events_family_is_described_so_its_names_cannot_be_registered_twice():
    """The collector names its series, so a second ``eventworker_events`` is refused like for a Counter."""
    metrics = Metrics()
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("eventworker_events", "again", registry=metrics.registry)


def test_scraping_from_another_thread_while_counting_never_fails_and_sees_whole_batches():
    """A thread scraping without pause while batches add series: no error, totals grow by whole batches."""
    metrics = Metrics()
    totals: list[float] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def scrape() -> None:
        try:
            while not stop.is_set():
                text = generate_latest(metrics.registry).decode()
                [family] = [f for f in text_string_to_metric_families(text) if f.name == "eventworker_events"]
                totals.append(sum(s.value for s in family.samples if s.name == "eventworker_events_total"))
        except BaseException as exc:  # any failure of the scraping thread fails the test
            errors.append(exc)

    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, inside batches and scrapes
    thread = threading.Thread(target=scrape)
    thread.start()
    try:
        for n in range(400):
            series = [(f"/s{(n * 7 + i) % 60}", f"t{(n + i) % 40}") for i in range(90)]
            metrics.count_ingest(series, 60, 40, [Rejection(b"{}", "invalid", [], 0, source=f"/r{n}")])
            while n % 40 == 0 and len(totals) <= n // 40 and thread.is_alive():  # a scrape between batches
                time.sleep(0.001)
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(switch_interval)
    assert errors == []
    assert len(totals) > 10
    assert all(total % 101 == 0 for total in totals), "a scrape saw part of a batch"
    assert totals == sorted(totals)
    assert sum(events_total(metrics).values()) == 400 * 101


def test_unknown_stays_unknown_once_the_labels_are_full() -> None:
    """An unreadable source or type counts as ``unknown`` also after 50 real values filled the label."""
    metrics = Metrics()
    metrics.count_events("accepted", [(f"/s-{n}", f"t-{n}") for n in range(60)])
    metrics.count_events("rejected", [(None, None), ("/s-0", None)])
    text = generate_latest(metrics.registry).decode()
    assert 'eventworker_events_total{outcome="rejected",source="unknown",type="unknown"} 1.0' in text
    assert 'eventworker_events_total{outcome="rejected",source="/s-0",type="unknown"} 1.0' in text
    assert 'eventworker_events_total{outcome="accepted",source="other",type="other"} 10.0' in text
