"""Hostile input: whatever arrives, the worker stores it or keeps it as a dead letter, and goes on.

Property tests throw arbitrary JSON, wrong types, huge strings, deep nesting, NUL characters, lone
surrogates (what invalid UTF-8 becomes once decoded), unrepresentable times and non-list arguments
at ``ingest_events`` on a real PostgreSQL database, and random bytes at a real worker through Redis.
"""

from __future__ import annotations

import asyncio
import json
import math
import pickle
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import orjson
import pytest
from conftest import PG_URL, pg_database_url
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text
from support import job_ctx, put_raw_job, run_worker

from jobs.ingest import ingest_events
from worker.config import load_settings
from worker.db.engine import Database
from worker.db.models import DeadLetter, Event, FailedJob

pytestmark = pytest.mark.faults

MAX_EVENT_BYTES = 1_048_576
SOURCE = "/hostile/<fresh>"
REASONS = {"invalid", "too_large", "not_a_list", "undecodable_job"}
EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- strategies -------------------------------------------------------------------------------------

#: Text a database stores: no NUL, no lone surrogate.
storable_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
#: Any Python text, NUL and lone surrogates (invalid UTF-8 once decoded with surrogateescape) included.
any_text = st.text(max_size=12)
leaves = (
    st.none()
    | st.booleans()
    | st.integers()  # beyond 64 bits too
    | st.floats(allow_nan=False, allow_infinity=False)
    | storable_text
)
storable_json = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(storable_text, inner, max_size=4),
    max_leaves=10,
)
any_json = st.recursive(
    leaves | any_text | st.floats(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=10,
)
ATTRIBUTES = {
    "id",
    "source",
    "type",
    "specversion",
    "time",
    "subject",
    "datacontenttype",
    "dataschema",
    "data",
}
names = st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True).filter(lambda name: name not in ATTRIBUTES)
#: RFC 3339 offsets are whole minutes.
offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda minutes: timezone(timedelta(minutes=minutes)))
#: Years 2 to 9998: every one of these is a valid time (years 1 and 9999 are among BAD_TIMES' edges).
times = st.datetimes(datetime(2, 1, 1), datetime(9998, 12, 31), timezones=offsets).map(datetime.isoformat)


@st.composite
def valid_events(draw: st.DrawFn, source: str) -> dict[str, Any]:
    """An event every check accepts (ids from a tiny alphabet, so a batch repeats some)."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": draw(st.text("ab1", min_size=1, max_size=3)),
        "source": source,
        "type": draw(storable_text.filter(bool)),
    }
    if draw(st.booleans()):
        event["time"] = draw(times)
    if draw(st.booleans()):
        event["data"] = draw(storable_json)
    if draw(st.booleans()):
        event["subject"] = draw(storable_text)
    event.update(draw(st.dictionaries(names, st.integers() | storable_text | st.booleans(), max_size=2)))
    return event


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


BAD_TIMES = [
    "tomorrow",
    "2026-13-01T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-01-02T03:04:05",  # no time zone
    "1700000000",
    "",
    "2026-01-02T24:00:01Z",
    "+12026-01-01T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "0001-01-01T00:10:00+01:00",  # before year 1 in UTC
    "9999-12-31T23:50:00-01:00",  # after year 9999 in UTC
]


@st.composite
def hostile_events(draw: st.DrawFn, source: str) -> Any:
    """Something that looks like an event, or not at all, and is wrong in one of many ways."""
    event = draw(valid_events(source))
    kind = draw(
        st.sampled_from(
            ["wrong type", "missing", "huge", "deep", "nul", "surrogate", "bad time", "extension", "anything"]
        )
    )
    if kind == "wrong type":
        key = draw(
            st.sampled_from(["id", "source", "type", "specversion", "time", "subject", "datacontenttype"])
        )
        event[key] = draw(st.integers() | st.lists(st.integers(), max_size=2) | st.booleans() | st.just({}))
    elif kind == "missing":
        del event[draw(st.sampled_from(["id", "source", "type", "specversion"]))]
    elif kind == "huge":
        where = draw(st.sampled_from(["data", "id", "source", "type", "subject"]))
        event[where] = "x" * draw(st.sampled_from([256, 513, 1025, MAX_EVENT_BYTES + 1]))
    elif kind == "deep":
        event["data"] = nested(draw(st.sampled_from([100, 254, 255, 300, 600, 990, 1010])))
    elif kind == "nul":
        event[draw(st.sampled_from(["id", "source", "type", "subject", "data", "datacontenttype"]))] = (
            "a\x00b"
        )
    elif kind == "surrogate":
        event[draw(st.sampled_from(["id", "type", "data"]))] = "bad \ud800 text"
    elif kind == "bad time":
        event["time"] = draw(st.sampled_from(BAD_TIMES) | any_text)
    elif kind == "extension":
        event[draw(st.sampled_from(["Upper", "with-dash", "x" * 300, ""]))] = draw(any_json)
    else:
        return draw(any_json)
    return event


@st.composite
def payloads(draw: st.DrawFn) -> tuple[Any, list[dict[str, Any]]]:
    """A job argument, and the valid events in it (which must be stored whatever their neighbours)."""
    source = SOURCE  # made unique per run in _check_example: hypothesis replays examples
    if draw(st.integers(0, 9)) == 0:
        return draw(any_json.filter(lambda value: not isinstance(value, list))), []
    items = draw(
        st.lists(
            st.tuples(st.just(True), valid_events(source))
            | st.tuples(st.just(False), hostile_events(source)),
            max_size=8,
        )
    )
    return [item for _, item in items], [item for valid, item in items if valid]


# --- checks -----------------------------------------------------------------------------------------


def _same_json(sent: Any, kept: Any) -> bool:
    """Equal as JSON. NaN and infinities are not JSON: the dead letter holds null for them (a known
    limitation, docs/concepts.md "Guarantees"), or NaN where the stdlib encoded it.

    Walks with a stack, not recursion: inputs nest 1,000 levels deep, past what the C stack takes
    under hypothesis (which raises the recursion limit).
    """
    pairs = [(sent, kept)]
    while pairs:
        one, other = pairs.pop()
        if isinstance(one, float) and not math.isfinite(one):
            if not (other is None or (isinstance(other, float) and (other == one or math.isnan(other)))):
                return False
        elif isinstance(one, dict):
            if not isinstance(other, dict) or one.keys() != other.keys():
                return False
            pairs.extend((one[key], other[key]) for key in one)
        elif isinstance(one, list | tuple):
            if not isinstance(other, list) or len(one) != len(other):
                return False
            pairs.extend(zip(one, other, strict=True))
        elif one != other or isinstance(one, bool) != isinstance(other, bool):
            return False
    return True


def _fresh_source(payload: Any, valid: list[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]]]:
    """The example with a source no earlier run used (copies: hypothesis keeps the originals)."""
    if not isinstance(payload, list):
        return payload, []
    source = f"/hostile/{uuid.uuid4().hex}"
    copies = {
        id(item): {**item, "source": source}
        if isinstance(item, dict) and item.get("source") == SOURCE
        else item
        for item in payload
    }
    return [copies[id(item)] for item in payload], [copies[id(item)] for item in valid]


async def _check_example(db: Database, config: Any, payload: Any, valid: list[dict[str, Any]]) -> None:
    payload, valid = _fresh_source(payload, valid)
    job_id = uuid.uuid4().hex
    result = await ingest_events(job_ctx(config, db, job_id), payload)  # never raises: stored or kept
    if isinstance(payload, list):
        assert result["accepted"] + result["duplicates"] + result["rejected"] == len(payload)
    else:
        assert result == {"accepted": 0, "duplicates": 0, "rejected": 1}
    async with db.transaction() as session:
        stored = await session.scalar(select(func.count()).select_from(Event).where(Event.job_id == job_id))
        letters = (await session.scalars(select(DeadLetter).where(DeadLetter.job_id == job_id))).all()
        assert stored == result["accepted"]
        assert len(letters) == result["rejected"]
        for letter in letters:
            assert letter.reason in REASONS
            assert letter.errors
            if isinstance(payload, list):
                assert _same_json(payload[letter.position], json.loads(letter.raw))
            else:
                assert _same_json(payload, json.loads(letter.raw))
        # The first input with an identity is the one stored, if valid; a hostile input can be valid too.
        first: dict[tuple[Any, Any], Any] = {}
        for item in payload if isinstance(payload, list) else []:
            if (
                isinstance(item, dict)
                and isinstance(item.get("source"), str)
                and isinstance(item.get("id"), str)
            ):
                first.setdefault((item["source"], item["id"]), item)
        for event in valid:
            source, event_id = event["source"], event["id"]
            # Stored as sent, compared by PostgreSQL itself (exact for integers beyond 64 bits too).
            same = await session.scalar(
                text(
                    "SELECT type = :type AND data IS NOT DISTINCT FROM CAST(:data AS jsonb)"
                    " FROM events WHERE source = :source AND event_id = :id"
                ),
                {
                    "type": event["type"],
                    "data": None if event.get("data") is None else json.dumps(event["data"]),
                    "source": source,
                    "id": event_id,
                },
            )
            assert same is not None, f"valid event {event_id!r} not stored beside bad ones"
            if first[source, event_id] is event:
                assert same is True, f"valid event {event_id!r} not stored as sent"


async def _create(template: str) -> str:
    name = f"ew_hostile_{uuid.uuid4().hex[:10]}"
    connection = await asyncpg.connect(PG_URL)
    try:
        await connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await connection.close()
    return name


async def _drop(name: str) -> None:
    connection = await asyncpg.connect(PG_URL)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def hostile_database(pg_template: str) -> Iterator[str]:
    """One database for every example of this module (examples use sources and job ids of their own)."""
    name = asyncio.run(_create(pg_template))
    yield name
    asyncio.run(_drop(name))


def test_ingest_survives_anything(hostile_database, fault_report, soak):
    """Any job argument: no exception, every input stored or kept with a reason, valid neighbours stored."""
    from faults.conftest import FaultRow

    config = load_settings(database_url=pg_database_url(hostile_database), max_event_bytes=MAX_EVENT_BYTES)
    seen = {"examples": 0, "inputs": 0, "valid": 0}
    with asyncio.Runner() as runner:
        db = Database.from_settings(config)

        @settings(EXAMPLES, max_examples=int(60 + soak * 10))
        @given(payloads())
        def check(example: tuple[Any, list[dict[str, Any]]]) -> None:
            payload, valid = example
            runner.run(_check_example(db, config, payload, valid))
            seen["examples"] += 1
            seen["inputs"] += len(payload) if isinstance(payload, list) else 1
            seen["valid"] += len(valid)

        try:
            check()
        finally:
            runner.run(db.dispose())
    fault_report.add(
        FaultRow(
            f"hostile job arguments, {seen['examples']} hypothesis examples",
            sent=seen["inputs"],
            events=seen["valid"],
            stored=seen["valid"],
            duplicated=0,
            lost=0,
            dead_letters="all others",
            recovery_s=None,
            note="arbitrary JSON, wrong types, huge strings, deep nesting, NUL, lone surrogates, bad times,"
            " non-list arguments: accepted + duplicates + rejected = inputs, rows match",
        )
    )


# --- known faults, and bytes from elsewhere --------------------------------------------------------


@pytest.fixture
async def hostile_db(hostile_database: str) -> Any:
    config = load_settings(database_url=pg_database_url(hostile_database))
    db = Database.from_settings(config)
    yield config, db
    await db.dispose()


def _event(event_id: str, source: str, **extra: Any) -> dict[str, Any]:
    return {"specversion": "1.0", "id": event_id, "source": source, "type": "t", **extra}


async def _ingest_beside_a_valid_event(hostile_db: Any, bad: dict[str, Any]) -> None:
    config, db = hostile_db
    source = f"/hostile/{uuid.uuid4().hex}"
    result = await ingest_events(job_ctx(config, db, uuid.uuid4().hex), [_event("ok", source), bad])
    assert result == {"accepted": 1, "duplicates": 0, "rejected": 1}


@pytest.mark.parametrize("field", ["id", "source"])
async def test_nul_in_an_identity_is_kept(hostile_db, field):
    """An event whose id or source holds NUL is a dead letter, and its valid neighbour is stored."""
    bad = _event("bad", "/hostile/nul")
    bad[field] = "a\x00b"
    await _ingest_beside_a_valid_event(hostile_db, bad)


@pytest.mark.parametrize("when", ["0001-01-01T00:10:00+01:00", "9999-12-31T23:50:00-01:00"])
async def test_a_time_outside_the_utc_range_is_kept(hostile_db, when):
    """An event time that is valid RFC 3339 but outside datetime's range in UTC is a dead letter."""
    await _ingest_beside_a_valid_event(hostile_db, _event("bad", "/hostile/time", time=when))


def _job(*events: Any) -> bytes:
    return b'{"t":1,"f":"ingest_events","a":[[' + b",".join(events) + b']],"k":{},"et":1}'


async def _failed(db: Database) -> int:
    async with db.transaction() as session:
        return int(await session.scalar(select(func.count()).select_from(FailedJob)) or 0)


@pytest.fixture
def wire(hostile_database: str, fault_redis: Any) -> Any:
    """Settings for a burst worker on this module's database and the tier's Redis, on a queue of its own."""
    return load_settings(
        database_url=pg_database_url(hostile_database),
        redis_url=fault_redis.url,
        queue_name=f"faults:{uuid.uuid4().hex[:10]}",
        poll_delay=0.01,
        retry_base_delay=0.01,
        retry_max_delay=0.05,
        max_tries=2,
        log_format="json",
    )


async def test_a_big_integer_beside_a_lone_surrogate_is_stored(wire):
    """A job orjson cannot read (a lone surrogate) is read by the stdlib, keeping a 30-digit integer exact.

    orjson refused to write that integer back for the database, which failed the whole job on every try.
    """
    source = f"/hostile/{uuid.uuid4().hex}".encode()
    big = b"123456789012345678901234567890"
    raw = _job(
        b'{"specversion":"1.0","id":"big","source":"' + source + b'","type":"t","data":' + big + b"}",
        b'{"specversion":"1.0","id":"bad \\ud800","source":"' + source + b'","type":"t"}',
    )
    job_id = await put_raw_job(wire, raw)
    worker = await run_worker(wire)
    assert (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried) == (1, 0, 0)
    db = Database.from_settings(wire)
    try:
        async with db.transaction() as session:
            stored = await session.scalar(
                text("SELECT data::text FROM events WHERE source = :source"), {"source": source.decode()}
            )
            letters = await session.scalar(
                select(func.count()).select_from(DeadLetter).where(DeadLetter.job_id == job_id)
            )
        assert stored == big.decode()
        assert letters == 1
    finally:
        await db.dispose()


async def test_nesting_deeper_than_the_encoders_is_kept(wire):
    """An event nested 1010 levels deep (orjson reads 1024) is a dead letter; its neighbour is stored."""
    source = f"/hostile/{uuid.uuid4().hex}".encode()
    deep = (
        b'{"specversion":"1.0","id":"deep","source":"/s","type":"t","data":'
        + b"[" * 1010
        + b"]" * 1010
        + b"}"
    )
    ok = b'{"specversion":"1.0","id":"ok","source":"' + source + b'","type":"t"}'
    await put_raw_job(wire, _job(ok, deep))
    # arq's own limit kept low: should the job fail again, its failure record could not be written
    # either (the arguments do not serialize), and the job runner would retry that up to
    # worker.main.ARQ_TRY_LIMIT times.
    worker = await run_worker(wire, max_tries=wire.max_tries + 2)
    db = Database.from_settings(wire)
    try:
        assert await _failed(db) == 0
        assert worker.jobs_failed == 0
    finally:
        await db.dispose()


class _Exploit:
    """Unpickling this creates ``marker``: a worker that unpickled job bytes would run it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (open, (self.marker, "w"))


def test_bytes_from_elsewhere_are_kept_never_run(hostile_database, fault_redis, tmp_path, fault_report, soak):
    """Random bytes, pickles and JSON that is no job, written into Redis by someone else: each is one
    dead letter holding the exact bytes; nothing is executed, nothing fails, the worker goes on."""
    from faults.conftest import FaultRow

    marker = tmp_path / "executed"
    raw_jobs = st.lists(
        st.binary(min_size=1, max_size=64)  # zero bytes: arq drops the job as expired (docs/concepts.md)
        | any_json.map(
            lambda value: pickle.dumps({"f": "ingest_events", "a": [value], "k": {}, "t": 1, "et": 0})
        )
        | st.just(
            pickle.dumps({"f": "ingest_events", "a": [_Exploit(str(marker))], "k": {}, "t": 1, "et": 0})
        )
        | any_json.map(lambda value: json.dumps(value).encode()),
        min_size=1,
        max_size=6,
    )
    seen = {"examples": 0, "jobs": 0}
    with asyncio.Runner() as runner:

        @settings(EXAMPLES, max_examples=int(25 + soak))
        @given(raw_jobs)
        def check(raws: list[bytes]) -> None:
            config = load_settings(
                database_url=pg_database_url(hostile_database),
                redis_url=fault_redis.url,
                queue_name=f"faults:{uuid.uuid4().hex[:10]}",
                poll_delay=0.01,
                log_format="json",
            )
            runner.run(_run_raw(config, raws))
            seen["examples"] += 1
            seen["jobs"] += len(raws)

        check()
    assert not marker.exists(), "a pickle was unpickled"
    fault_report.add(
        FaultRow(
            f"foreign bytes as jobs, {seen['examples']} hypothesis examples",
            sent=seen["jobs"],
            events=0,
            stored=0,
            duplicated=0,
            lost=0,
            dead_letters=f"{seen['jobs']}/{seen['jobs']}",
            recovery_s=None,
            note="random bytes, pickles (one that would create a file), JSON that is no job: each kept"
            " byte for byte as undecodable_job, none run, none failed",
        )
    )


async def _run_raw(config: Any, raws: list[bytes]) -> None:
    ids = [await put_raw_job(config, raw) for raw in raws]
    worker = await run_worker(config)
    assert worker.jobs_failed == 0
    assert worker.jobs_retried == 0
    db = Database.from_settings(config)
    try:
        async with db.transaction() as session:
            for job_id, raw in zip(ids, raws, strict=True):
                [letter] = (
                    await session.scalars(select(DeadLetter).where(DeadLetter.job_id == job_id))
                ).all()
                assert letter.reason == "undecodable_job"
                assert letter.raw == raw
    finally:
        await db.dispose()


async def test_a_job_with_the_wrong_arguments_is_kept(wire):
    """A JSON job naming ingest_events with arguments it cannot take is recorded in failed_jobs, as sent."""
    raw = b'{"t":1,"f":"ingest_events","a":[],"k":{"extra":1},"et":1}'
    job_id = await put_raw_job(wire, raw)
    await run_worker(wire)
    db = Database.from_settings(wire)
    try:
        async with db.transaction() as session:
            [failed] = (await session.scalars(select(FailedJob).where(FailedJob.job_id == job_id))).all()
        assert "TypeError" in failed.error
        assert orjson.loads(failed.args) == {"args": [], "kwargs": {"extra": 1}}
    finally:
        await db.dispose()
