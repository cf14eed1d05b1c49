"""Ingestion through a real arq worker on real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path

import orjson
import pytest
from conftest import WITH_POOLER
from sqlalchemy import select
from support import count, enqueue, event, job_ctx, put_raw_job, results, run_worker, unique_source

from jobs.ingest import ingest_events
from worker.db.engine import Database
from worker.db.models import DeadLetter, Event

pytestmark = pytest.mark.integration


@pytest.fixture(params=WITH_POOLER)
def backend(request: pytest.FixtureRequest) -> str:
    """Every driver, and asyncpg and psycopg through PgBouncer in transaction mode too."""
    return str(request.param)


async def test_batches_are_stored_once_and_counted(settings, db):
    """Duplicates within a batch and across batches are counted, not stored twice."""
    source = unique_source()
    first = [event(i, source) for i in range(300)] + [event(5, source), event(6, source)]
    second = [event(i, source) for i in range(250, 400)]
    job_ids = await enqueue(settings, [first, second])
    worker = await run_worker(settings)
    assert worker.jobs_complete == 2
    outcomes = await results(settings, job_ids)
    # The two jobs run concurrently, so which one stores the shared 250..299 varies; the sums do not.
    assert sum(o["accepted"] for o in outcomes) == 400
    assert sum(o["duplicates"] for o in outcomes) == 2 + 50
    assert outcomes[0]["accepted"] + outcomes[0]["duplicates"] == 302
    assert await count(db, Event) == 400


async def test_stored_event_keeps_every_attribute(settings, db):
    """Optional attributes, extensions and data survive the round trip."""
    sent = event(
        "full",
        unique_source(),
        subject="order/1",
        datacontenttype="application/json",
        dataschema="https://example.com/s.json",
        traceparent="00-abc",
        priority=3,
    )
    await enqueue(settings, [[sent]])
    await run_worker(settings)
    async with db.transaction() as session:
        stored = (await session.scalars(select(Event))).one()
    assert (stored.source, stored.event_id, stored.type) == (sent["source"], "evt-full", sent["type"])
    assert stored.subject == "order/1"
    assert stored.dataschema == "https://example.com/s.json"
    assert stored.data == sent["data"]
    assert stored.extensions == {"traceparent": "00-abc", "priority": 3}
    assert stored.time is not None
    assert stored.time.isoformat() == "2026-01-02T03:04:05.123456+00:00"
    assert stored.seq >= 1
    assert stored.received_at is not None
    assert stored.job_id


BAD_INPUTS = [
    {"specversion": "1.0", "id": "no-source", "type": "t"},
    {"specversion": "1.0", "id": 42, "source": "/s", "type": "t"},
    {"specversion": "1.0", "id": "bad-time", "source": "/s", "type": "t", "time": "tomorrow"},
    {"specversion": "1.0", "id": "nul", "source": "/s", "type": "t", "data": "a\x00b"},
    {"specversion": "1.0", "id": "huge", "source": "/s", "type": "t", "data": "x" * 2_000_000},
    "a plain string",
    None,
    [1, 2, 3],
]


async def test_invalid_events_become_dead_letters_and_valid_ones_are_stored(settings, db):
    """Every invalid input is kept byte for byte with its errors; valid neighbours are stored."""
    source = unique_source()
    batch = [event(1, source), *BAD_INPUTS, event(2, source)]
    [job_id] = await enqueue(settings, [batch])
    await run_worker(settings)
    assert await results(settings, [job_id]) == [
        {"accepted": 2, "duplicates": 0, "rejected": len(BAD_INPUTS)}
    ]
    async with db.transaction() as session:
        letters = (await session.scalars(select(DeadLetter).order_by(DeadLetter.position))).all()
    assert [letter.position for letter in letters] == list(range(1, len(BAD_INPUTS) + 1))
    for letter, sent in zip(letters, BAD_INPUTS, strict=True):
        assert orjson.loads(letter.raw) == sent
        assert letter.errors
        assert letter.job_id == job_id
    assert {letter.reason for letter in letters} == {"invalid", "too_large"}
    assert await count(db, Event) == 2


async def test_a_non_list_argument_is_kept(settings, db):
    """A job whose argument is not a list keeps the whole argument as one dead letter."""
    [job_id] = await enqueue(settings, [{"not": "a list"}])
    await run_worker(settings)
    assert await results(settings, [job_id]) == [{"accepted": 0, "duplicates": 0, "rejected": 1}]
    async with db.transaction() as session:
        letter = (await session.scalars(select(DeadLetter))).one()
    assert letter.reason == "not_a_list"
    assert orjson.loads(letter.raw) == {"not": "a list"}


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


async def test_a_pickled_job_is_kept_and_never_unpickled(settings, db, tmp_path):
    """Bytes that are not our JSON (here a pickle that would create a file) are stored raw, not executed."""
    marker = tmp_path / "pwned"
    raw = pickle.dumps({"f": "ingest_events", "a": [_Exploit(marker)], "k": {}, "t": 1, "et": 0})
    job_id = await put_raw_job(settings, raw)
    await run_worker(settings)
    assert not marker.exists()
    async with db.transaction() as session:
        letter = (await session.scalars(select(DeadLetter))).one()
    assert letter.reason == "undecodable_job"
    assert letter.raw == raw
    assert letter.job_id == job_id
    assert "not JSON" in letter.errors[0]["msg"]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"t":1,"f":"ingest_events","a":[[{"specversion":"1.0","id":"\xff\xfe","source":"/s","type":"t"}]],'
        b'"k":{},"et":1}',
        b'{"t":1,"f":"ingest_events","a":[[',
        b"\x00\x01\x02 binary garbage",
    ],
    ids=["invalid-utf8", "truncated-json", "binary"],
)
async def test_job_bytes_that_are_not_json_are_kept_raw(settings, db, raw):
    """Invalid UTF-8, truncated JSON or binary in a job key become one dead letter with the exact bytes."""
    job_id = await put_raw_job(settings, raw)
    worker = await run_worker(settings)
    assert worker.jobs_complete == 1
    assert worker.jobs_failed == 0
    async with db.transaction() as session:
        letter = (await session.scalars(select(DeadLetter))).one()
    assert letter.reason == "undecodable_job"
    assert letter.raw == raw
    assert letter.job_id == job_id


async def test_a_job_for_an_unknown_function_is_kept(settings, db):
    """A JSON job naming a function this worker lacks is kept, not silently failed."""
    raw = orjson.dumps({"f": "ingest_event", "a": [[event(1)]], "k": {}, "t": 1, "et": 1})
    job_id = await put_raw_job(settings, raw)
    await run_worker(settings)
    async with db.transaction() as session:
        letter = (await session.scalars(select(DeadLetter))).one()
    assert letter.raw == raw
    assert letter.job_id == job_id
    assert "ingest_event" in letter.errors[0]["msg"]


async def test_a_rerun_job_stores_nothing_twice(settings, db):
    """Running the same job again (as after a crash) adds no event and no dead letter."""
    batch = [event(1), "bad", event(2)]
    first = await ingest_events(job_ctx(settings, db, "job-1"), batch)
    again = await ingest_events(job_ctx(settings, db, "job-1", job_try=2), batch)
    assert first == {"accepted": 2, "duplicates": 0, "rejected": 1}
    assert again == {"accepted": 0, "duplicates": 2, "rejected": 1}
    assert await count(db, Event) == 2
    assert await count(db, DeadLetter) == 1


async def test_concurrent_jobs_with_overlapping_events_store_each_once(settings):
    """Jobs racing on separate sessions over shared identities store each event exactly once."""
    source = unique_source()
    dbs = [Database.from_settings(settings) for _ in range(4)]
    try:
        batches = [
            [event(i, source) for i in range(k * 50, k * 50 + 400)][:: -1 if k % 2 else 1] for k in range(4)
        ]
        outcomes = await asyncio.gather(
            *(
                ingest_events(job_ctx(settings, d, f"job-{k}"), b)
                for k, (d, b) in enumerate(zip(dbs, batches, strict=True))
            )
        )
        assert sum(o["accepted"] for o in outcomes) == 550
        assert sum(o["duplicates"] for o in outcomes) == 4 * 400 - 550
        assert await count(dbs[0], Event) == 550
    finally:
        for d in dbs:
            await d.dispose()


async def test_identities_are_compared_byte_for_byte(settings, db):
    """Case and trailing spaces make different identities on every database (binary collation)."""
    source = unique_source()
    batch = [
        event("Order-1", source),
        event("order-1", source),
        event("order-1 ", source),
        event("Order-1", source),
    ]
    [job_id] = await enqueue(settings, [batch])
    await run_worker(settings)
    assert await results(settings, [job_id]) == [{"accepted": 3, "duplicates": 1, "rejected": 0}]
    async with db.transaction() as session:
        ids = sorted((await session.scalars(select(Event.event_id))).all())
    assert ids == ["evt-Order-1", "evt-order-1", "evt-order-1 "]


async def test_times_are_stored_as_the_same_instant_in_utc(settings, db):
    """An event time with an offset reads back as the same instant, in UTC, on every database."""
    sent = event("tz", unique_source(), time="2026-03-04T05:06:07.891011+02:00")
    await enqueue(settings, [[sent]])
    await run_worker(settings)
    async with db.transaction() as session:
        stored = (await session.scalars(select(Event))).one()
    assert stored.time is not None
    assert stored.time.isoformat() == "2026-03-04T03:06:07.891011+00:00"
    assert stored.received_at.tzinfo is not None
