"""ingest_events and store_undecodable_job, on a SQLite file, called directly and through a real arq worker.

The worker runs in this process in burst mode on the in-process Redis (fakeredis),
the way ``eventworker demo`` runs it: producer, queue, worker loop, job runner,
database, all real except the network.
"""

from __future__ import annotations

import base64
import pickle
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from arq.jobs import Job
from sqlalchemy import func, select

from jobs import ingest
from jobs.ingest import ingest_events
from jobs.undecodable import store_undecodable_job
from worker.constants import DEFAULT_QUEUE, INGEST_JOB, UNDECODABLE_JOB
from worker.db.models import DeadLetter, Event, FailedJob
from worker.db.sql import statements
from worker.errors import JobFailed
from worker.protocol.producer import EventProducer
from worker.protocol.serialization import deserialize


def event(event_id: str, **fields) -> dict:
    return {"specversion": "1.0", "id": event_id, "source": "/shop", "type": "order.created", **fields}


async def rows(db, model, *order_by):
    async with db.transaction() as session:
        return list((await session.scalars(select(model).order_by(*order_by))).all())


async def stored_ids(db) -> list[str]:
    return [e.event_id for e in await rows(db, Event, Event.seq)]


async def test_ingest_stores_valid_events_and_dead_letters_the_rest(make_ctx, db):
    """Valid events become rows, invalid inputs dead letters at their positions; the counts are returned."""
    payload = [
        event("a", time="2024-05-01T10:30:00Z", data={"amount": 12}, traceparent="00-1"),
        "not an event",
        event("b"),
        event("a", data={"amount": 99}),  # in-batch duplicate: the first is kept
        event(7),
    ]
    result = await ingest_events(make_ctx(job_id="job-1"), payload)
    assert result == {"accepted": 2, "duplicates": 1, "rejected": 2}

    first, second = await rows(db, Event, Event.seq)
    assert (first.source, first.event_id, first.type, first.specversion) == (
        "/shop",
        "a",
        "order.created",
        "1.0",
    )
    assert first.data == {"amount": 12}
    assert first.extensions == {"traceparent": "00-1"}
    assert first.job_id == "job-1"
    assert (second.event_id, second.data, second.extensions) == ("b", None, None)

    junk, bad_id = await rows(db, DeadLetter, DeadLetter.position)
    assert (junk.position, junk.reason, junk.raw) == (1, "invalid", b'"not an event"')
    assert (bad_id.position, bad_id.reason, bad_id.raw) == (4, "invalid", orjson.dumps(payload[4]))
    assert (bad_id.source, bad_id.event_id) == ("/shop", None)
    assert bad_id.errors == [{"loc": "", "msg": "id must be a string, got number", "type": "value_error"}]
    assert {d.job_id for d in (junk, bad_id)} == {"job-1"}
    assert {d.job_name for d in (junk, bad_id)} == {INGEST_JOB}


async def test_duplicates_across_batches_are_stored_once(make_ctx, db):
    """An event already stored by an earlier job is counted as a duplicate and not stored again."""
    first = await ingest_events(make_ctx(job_id="job-1"), [event("a"), event("b")])
    second = await ingest_events(make_ctx(job_id="job-2"), [event("b", data={"changed": True}), event("c")])
    assert first == {"accepted": 2, "duplicates": 0, "rejected": 0}
    assert second == {"accepted": 1, "duplicates": 1, "rejected": 0}
    assert sorted(await stored_ids(db)) == ["a", "b", "c"]
    [b] = [e for e in await rows(db, Event, Event.seq) if e.event_id == "b"]
    assert (b.data, b.job_id) == (None, "job-1")


async def test_rerun_of_the_same_job_stores_nothing_twice(make_ctx, db):
    """A job run again (after a crash) adds no event and no dead letter a second time."""
    payload = [event("a"), {"broken": True}, event("b")]
    await ingest_events(make_ctx(job_id="job-1", job_try=1), payload)
    again = await ingest_events(make_ctx(job_id="job-1", job_try=2), payload)
    assert again == {"accepted": 0, "duplicates": 2, "rejected": 1}
    assert len(await stored_ids(db)) == 2
    assert len(await rows(db, DeadLetter, DeadLetter.id)) == 1


async def test_payload_that_is_not_a_list(make_ctx, db):
    """A job argument that is not a list is kept whole as one dead letter."""
    result = await ingest_events(make_ctx(), {"events": [event("a")]})
    assert result == {"accepted": 0, "duplicates": 0, "rejected": 1}
    [dead] = await rows(db, DeadLetter, DeadLetter.id)
    assert (dead.reason, dead.position) == ("not_a_list", 0)
    assert orjson.loads(dead.raw) == {"events": [event("a")]}
    assert await stored_ids(db) == []


async def test_too_large_event_is_a_dead_letter(make_settings, make_ctx, db):
    """An event over max_event_bytes is kept as a too_large dead letter, byte for byte."""
    settings = make_settings(max_event_bytes=200)
    big = event("big", data="x" * 300)
    result = await ingest_events(make_ctx(settings=settings), [event("small"), big])
    assert result == {"accepted": 1, "duplicates": 0, "rejected": 1}
    [dead] = await rows(db, DeadLetter, DeadLetter.id)
    assert (dead.reason, dead.raw, dead.event_id) == ("too_large", orjson.dumps(big), "big")


async def test_unstorable_strings_are_dead_letters_kept_exactly(make_ctx, db):
    """Events with NUL or lone surrogates are dead letters whose raw bytes still decode to the input."""
    payload = [event("nul", data="a\x00b"), event("surrogate", subject="\ud800")]
    result = await ingest_events(make_ctx(), payload)
    assert result == {"accepted": 0, "duplicates": 0, "rejected": 2}
    dead = await rows(db, DeadLetter, DeadLetter.position)
    assert [deserialize(d.raw) for d in dead] == payload


async def test_empty_batch(make_ctx, db):
    """An empty list stores nothing and says so."""
    assert await ingest_events(make_ctx(), []) == {"accepted": 0, "duplicates": 0, "rejected": 0}
    assert await stored_ids(db) == []


async def test_event_times_are_stored_as_the_same_instant_in_utc(make_ctx, db):
    """An event time given with an offset is stored as that instant and read back as aware UTC."""
    payload = [event("a", time="2024-05-01T12:30:00+02:00"), event("b", time="2024-05-01T10:30:00Z")]
    await ingest_events(make_ctx(), payload)
    a, b = await rows(db, Event, Event.seq)
    assert a.time == b.time == datetime(2024, 5, 1, 10, 30, tzinfo=UTC)
    assert a.time.utcoffset() == b.received_at.utcoffset() == timedelta(0)


async def test_ingest_failure_rolls_back_everything(make_ctx, db, monkeypatch):
    """If storing fails, neither the events nor the dead letters of the batch are kept (one transaction)."""

    async def dead_letters_fail(session, rows):
        raise RuntimeError("disk full")

    monkeypatch.setattr(statements, "insert_dead_letters", dead_letters_fail)
    with pytest.raises(JobFailed):
        await ingest_events(make_ctx(job_try=3), [event("a"), "junk"])
    assert await stored_ids(db) == []
    assert await rows(db, DeadLetter, DeadLetter.id) == []
    [failed] = await rows(db, FailedJob, FailedJob.id)
    assert failed.job_name == INGEST_JOB
    assert failed.error == "unexpected, last of 3 tries: RuntimeError: disk full"
    assert orjson.loads(failed.args) == {"args": [[event("a"), "junk"]], "kwargs": {}}


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        (base64.b64encode(b"\x80\x04pickle").decode(), b"\x80\x04pickle"),
        ("not base64!", b"not base64!"),
        ("\ud800", b"\\ud800"),
        (12345, b"12345"),
    ],
)
async def test_store_undecodable_job(make_ctx, db, raw, stored):
    """The dead-letter job keeps the job's bytes (base64-decoded when they are base64) with the problem."""
    result = await store_undecodable_job(make_ctx(job_id="odd-job"), raw, "not JSON: invalid start byte")
    assert result == {"rejected": 1}
    [dead] = await rows(db, DeadLetter, DeadLetter.id)
    assert (dead.reason, dead.raw, dead.job_id, dead.job_name) == (
        "undecodable_job",
        stored,
        "odd-job",
        UNDECODABLE_JOB,
    )
    assert dead.errors == [{"loc": "", "msg": "not JSON: invalid start byte", "type": "undecodable_job"}]


async def enqueue_raw(redis, job_id: str, data: bytes) -> None:
    """Put bytes in Redis the way arq stores a job, as a foreign or malicious producer could."""
    await redis.set(f"arq:job:{job_id}", data)
    await redis.zadd(DEFAULT_QUEUE, {job_id: int(time.time() * 1000)})


async def test_worker_ingests_what_the_producer_sends(settings, db, redis, run_worker):
    """Events emitted by EventProducer are stored by a worker; each job's result has its counts."""
    batch_one = [event(f"e-{i}") for i in range(5)]
    batch_two = [event("e-3"), event("e-4"), "junk", event("e-5"), event("e-5")]
    async with EventProducer(redis=redis, batch_size=5) as producer:
        job_ids = await producer.emit(batch_one + batch_two)
    worker = await run_worker(settings)
    assert (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried) == (2, 0, 0)

    first, second = [
        await Job(job_id, redis, _deserializer=deserialize).result(timeout=5) for job_id in job_ids
    ]
    # The jobs may run in either order (or at once): e-3 and e-4 are duplicates in whichever runs second.
    assert {key: first[key] + second[key] for key in first} == {"accepted": 6, "duplicates": 3, "rejected": 1}
    assert (first["rejected"], second["rejected"]) == (0, 1)
    assert sorted(await stored_ids(db)) == [f"e-{i}" for i in range(6)]
    [junk] = await rows(db, DeadLetter, DeadLetter.id)
    assert (junk.job_id, junk.position, junk.raw) == (job_ids[1], 2, b'"junk"')
    assert await redis.zcard(DEFAULT_QUEUE) == 0


async def test_worker_stores_undecodable_job_as_dead_letter(settings, db, redis, run_worker):
    """A pickled job put straight into Redis is not unpickled but kept as an undecodable_job dead letter."""
    data = pickle.dumps({"f": INGEST_JOB, "a": [[event("a")]], "k": {}, "t": 1, "et": 1})
    await enqueue_raw(redis, "pickled", data)
    async with EventProducer(redis=redis) as producer:
        [good] = await producer.emit([event("b")])
    await run_worker(settings)

    [dead] = await rows(db, DeadLetter, DeadLetter.id)
    assert (dead.reason, dead.raw, dead.job_id, dead.job_name) == (
        "undecodable_job",
        data,
        "pickled",
        UNDECODABLE_JOB,
    )
    assert dead.errors[0]["msg"].startswith("not JSON")
    assert await stored_ids(db) == ["b"]
    assert await Job("pickled", redis, _deserializer=deserialize).result(timeout=5) == {"rejected": 1}
    assert await Job(good, redis, _deserializer=deserialize).result(timeout=5) == {
        "accepted": 1,
        "duplicates": 0,
        "rejected": 0,
    }


async def test_worker_stores_job_for_unknown_function_as_dead_letter(settings, db, redis, run_worker):
    """A JSON job naming a function this worker does not have is kept as a dead letter, not dropped."""
    data = orjson.dumps({"f": "rollup", "a": ["2024-05-01"], "k": {}, "t": None, "et": 1})
    await enqueue_raw(redis, "rollup-1", data)
    await run_worker(settings)
    [dead] = await rows(db, DeadLetter, DeadLetter.id)
    assert (dead.reason, dead.raw) == ("undecodable_job", data)
    assert dead.errors[0]["msg"] == "no job named 'rollup' on this worker"


async def test_worker_stores_job_without_try_field_as_dead_letter(settings, db, redis, run_worker):
    """A JSON job from a foreign producer that omits 't' is kept as a dead letter, not dropped by arq."""
    data = orjson.dumps({"f": INGEST_JOB, "a": [[event("a")]], "k": {}, "et": 1})
    await enqueue_raw(redis, "no-try", data)
    worker = await run_worker(settings)
    assert worker.jobs_failed == 0
    [dead] = await rows(db, DeadLetter, DeadLetter.id)
    assert (dead.reason, dead.raw, dead.job_id) == ("undecodable_job", data, "no-try")
    assert dead.errors[0]["msg"] == "job has no try number"
    assert await stored_ids(db) == []


async def test_worker_retries_then_records_a_failing_job(settings, db, redis, run_worker, monkeypatch):
    """An ingest job that keeps failing is retried by arq with back-off, then recorded in failed_jobs."""
    attempts: list[int] = []

    async def insert_fails(session, rows):
        attempts.append(len(rows))
        raise RuntimeError("storage broke")

    monkeypatch.setattr(ingest.statements, "insert_events", insert_fails)
    async with EventProducer(redis=redis) as producer:
        [job_id] = await producer.emit([event("a"), event("b")])
    worker = await run_worker(settings)

    assert attempts == [2] * settings.max_tries
    assert (worker.jobs_retried, worker.jobs_failed) == (settings.max_tries - 1, 1)
    [failed] = await rows(db, FailedJob, FailedJob.id)
    assert (failed.job_id, failed.job_name, failed.tries) == (job_id, INGEST_JOB, settings.max_tries)
    assert failed.error == "unexpected, last of 3 tries: RuntimeError: storage broke"
    assert orjson.loads(failed.args) == {"args": [[event("a"), event("b")]], "kwargs": {}}
    info = await Job(job_id, redis, _deserializer=deserialize).result_info()
    assert info is not None
    assert info.success is False
    assert info.result["error"] == "JobFailed"
    assert await stored_ids(db) == []


async def test_worker_counts_in_sql(settings, db, redis, run_worker):
    """After a run, table_counts reports the stored events and dead letters."""
    async with EventProducer(redis=redis, batch_size=2) as producer:
        await producer.emit([event("a"), event("b"), event("a"), None, event("c")])
    await run_worker(settings)
    async with db.transaction() as session:
        assert await statements.table_counts(session) == {"events": 3, "dead_letters": 1, "failed_jobs": 0}
        assert (
            await session.scalar(select(func.count()).select_from(Event).where(Event.job_id.is_not(None)))
            == 3
        )
