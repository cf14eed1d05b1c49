"""The fast paths (validate_batch's, worker.domain.wire's) give exactly what validate_one gives,
input by input."""

from __future__ import annotations

import enum
import json
import math
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from arq.utils import args_to_string
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from worker.domain import wire
from worker.domain.wire import Rows, batch_rows
from worker.protocol import events
from worker.protocol.events import CloudEvent, Rejection, validate_batch, validate_each, validate_one
from worker.protocol.serialization import JsonList, RawJson, deserialize, job_deserializer, serialize

LIMIT = 2_000


class Colour(enum.Enum):
    RED = "red"


class Text(str):
    pass


def event(**fields: Any) -> dict[str, Any]:
    """A valid event with ``fields`` changed (None removes a field)."""
    base: dict[str, Any] = {
        "specversion": "1.0",
        "id": "e-1",
        "source": "/shop",
        "type": "order.created",
        "time": "2026-01-02T03:04:05.123456Z",
        "data": {"amount": 1250, "items": [{"sku": "A-1", "qty": 2}], "note": "ünïcødé 😀"},
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


INPUTS: list[Any] = [
    event(),
    event(time=None, data=None),
    event(time="2026-01-02T04:04:05+01:00"),
    event(time="2026-01-02 03:04:05Z"),
    event(time="2026-01-02T03:04:05"),
    event(time="2026-01-02"),
    event(time="1714559400"),
    event(time=" 1714559400.5 "),
    event(time=1714559400),
    event(time=datetime(2026, 1, 2, tzinfo=UTC)),
    event(time="yesterday"),
    event(subject="order/42", datacontenttype="application/json", dataschema="https://x/s.json"),
    event(subject="s" * 1025),
    event(id="x" * 255, source="s" * 512, type="t" * 255),
    event(id="x" * 256),
    event(id=""),
    event(id=42),
    event(id=b"bytes"),
    event(id=Text("subclass")),
    event(specversion="0.3"),
    event(specversion=1.0),
    event(data="plain"),
    event(data=[1, 2.5, True, None]),
    event(data=(1, 2)),
    event(data={"id": uuid.UUID(int=1)}),
    event(data=Colour.RED),
    event(data=math.nan),
    event(data={"big": 2**70}),
    event(data={"when": datetime(2026, 1, 2, tzinfo=UTC)}),
    event(data="a\x00b"),
    event(data={"k\x00": 1}),
    event(data={"text": "\\u0000 is six characters"}),
    event(data={"nested": ["ok", "\ud800"]}),
    event(source="/shop\udcff"),
    event(data={1: "int key"}),
    event(data=None, data_base64="AAEC"),
    event(data={"a": 1}, data_base64="AAEC"),
    event(traceparent="00-abc-def-01", rate=0.25, sampled=True, n=7),
    event(Traceparent="x"),
    event(my_ext="x"),
    event(ext={"a": 1}),
    event(ext=[1]),
    event(ext=None),
    event(data={"pad": "x" * LIMIT}),
    {**event(), "id": None},
    "an event",
    7,
    None,
    [event()],
    Text("x"),
]


def outcome(result: CloudEvent | Rejection) -> tuple[Any, ...]:
    """Everything that tells two results apart."""
    if isinstance(result, Rejection):
        return ("rejected", result.reason, result.errors, result.raw, result.position, result.source)
    return ("event", type(result), result.__dict__, result.model_extra, result.model_fields_set)


def slow(values: list[Any]) -> tuple[list[Any], list[Any], int]:
    """What validate_batch must return, from validate_one on each input."""
    stored, rejected, seen, duplicates = [], [], set(), 0
    for position, value in enumerate(values):
        result = validate_one(value, LIMIT, position)
        if isinstance(result, Rejection):
            rejected.append(outcome(result))
        elif (result.source, result.id) in seen:
            duplicates += 1
        else:
            seen.add((result.source, result.id))
            stored.append(outcome(result))
    return stored, rejected, duplicates


def fast(values: list[Any]) -> tuple[list[Any], list[Any], int]:
    batch = validate_batch(values, LIMIT)
    return [outcome(e) for e in batch.events], [outcome(r) for r in batch.rejected], batch.duplicates


@pytest.mark.parametrize("value", INPUTS, ids=range(len(INPUTS)))
def test_fast_path_matches_validate_one(value):
    """Any input, valid or not, plain JSON or not, comes out of a batch as validate_one makes it."""
    assert fast([value]) == slow([value])


def test_whole_batch_matches_validate_one():
    """A batch mixing every kind of input, with repeats, keeps order, first occurrences and counts."""
    values = [*INPUTS, event(), event(id="e-2"), *INPUTS[:5]]
    assert fast(values) == slow(values)


def test_decoded_job_argument_matches_validate_one():
    """A list decoded from a job's JSON (a JsonList) takes the decoded fast path, with the same result."""
    values = [v for v in INPUTS if _json_ready(v)]
    decoded = _decoded(values)
    assert type(decoded) is JsonList
    batch = validate_batch(decoded, LIMIT)
    assert ([outcome(e) for e in batch.events], [outcome(r) for r in batch.rejected]) == slow(
        orjson.loads(orjson.dumps(values))
    )[:2]


def test_valid_events_never_take_the_slow_path(monkeypatch):
    """Ordinary valid events are validated in one go, without validate_one."""
    calls: list[Any] = []
    monkeypatch.setattr(events, "validate_one", lambda *a: calls.append(a) or validate_one(*a))
    for values in ([event(id=f"e-{n}") for n in range(50)], JsonList([event(id="x", traceparent="t")])):
        batch = validate_batch(values, LIMIT)
        assert len(batch.events) == len(values)
    assert calls == []


def _json_ready(value: Any) -> bool:
    try:
        return orjson.loads(orjson.dumps(value)) == value
    except (TypeError, orjson.JSONEncodeError):
        return False


json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
attribute = st.none() | st.text(max_size=6) | st.integers() | st.sampled_from(["1.0", "2026-01-02T03:04:05Z"])
raw_events = st.dictionaries(
    st.sampled_from(
        ["specversion", "id", "source", "type", "time", "subject", "data", "data_base64", "ext1", "Bad"]
    ),
    attribute | json_values,
    max_size=10,
).map(lambda extra: {**event(), **extra})


@settings(max_examples=300, deadline=None)
@given(st.lists(raw_events | json_values, max_size=6))
def test_fast_path_matches_validate_one_on_generated_inputs(values):
    """Generated inputs (valid, invalid and odd) give validate_one's results in a batch."""
    assert fast(values) == slow(values)


def _decoded(values: list[Any]) -> Any:
    """``values`` through a job's JSON, decoded as the worker decodes a job's list argument.

    (An ingest job's events reach the job undecodable as RawJson, see test_wire.py; when
    :mod:`worker.domain.wire` cannot split them, it decodes them to this.)
    """
    job = serialize({"t": 1, "f": "run_handlers", "a": [values], "k": {}, "et": 0})
    return job_deserializer({"run_handlers"})(job)["a"][0]


@settings(max_examples=300, deadline=None)
@given(st.lists(raw_events | json_values, max_size=6))
def test_decoded_batches_match_validate_one_on_generated_inputs(values):
    """Generated inputs decoded from a job (one screening pass when it can) give validate_one's results."""
    decoded = _decoded(values)
    assume(type(decoded) is JsonList)  # not when the job is undecodable (Infinity beside a big integer)
    assert fast(decoded) == slow(list(decoded))


def test_a_clean_decoded_batch_is_screened_in_one_pass(monkeypatch):
    """Decoded valid events, with and without extensions, are screened by one encoding of the whole list."""
    calls: list[Any] = []
    monkeypatch.setattr(events, "_screen", lambda *a: calls.append(a) or True)
    decoded = _decoded(
        [event(id=f"e-{n}", **({"traceparent": "t", "n": n} if n % 2 else {})) for n in range(20)]
    )
    assert len(validate_batch(decoded, 100 * LIMIT).events) == 20
    assert calls == []


@pytest.mark.parametrize(
    ("refused", "pad"),
    [
        (event(id="big", data={"pad": "x" * LIMIT}), LIMIT // 4),  # the batch is over the limit in all
        (event(id="nul", data="a\x00b"), 10),  # the batch is under it
        (event(id="key", data={"k\x00": 1}), 10),
    ],
    ids=["too-large", "nul", "nul-key"],
)
def test_a_decoded_batch_the_one_pass_cannot_vouch_for_is_screened_event_by_event(monkeypatch, refused, pad):
    """A decoded batch with an input the whole-batch screen cannot pass still gives validate_one's results.

    The other events still take the fast path, each screened on its own.
    """
    calls: list[Any] = []
    monkeypatch.setattr(events, "validate_one", lambda *a: calls.append(a) or validate_one(*a))
    values = [event(id=f"e-{n}", data={"pad": "x" * pad}) for n in range(8)]
    decoded = _decoded([*values[:4], refused, *values[4:]])
    assert type(decoded) is JsonList
    assert fast(decoded) == slow(list(decoded))
    assert [position for _value, _limit, position in calls] in ([4], [])  # at most the refused one


@pytest.mark.parametrize(
    "args",
    [
        [[event(id=f"e-{n}") for n in range(100)]],
        [[event()]],
        [[]],
        [[1, 2]],
        [["x" * 100, "y"]],
        [[event()], "second"],
        ["first" * 30, [event()]],
    ],
)
def test_job_list_repr_gives_arq_the_same_log_line(args):
    """arq's log line for a job is the same whether its list arguments are plain or JsonList."""
    wrapped = [JsonList(a) if type(a) is list else a for a in args]
    assert args_to_string(wrapped, {}) == args_to_string(args, {})
    assert wrapped == args
    assert orjson.loads(serialize(wrapped)) == args


def test_copy_text_of_big_integers():
    """The COPY path writes JSON orjson refuses (integers past 64 bits) as the engine's serializer does."""
    from worker.db.sql.statements import _json_bytes

    assert _json_bytes({"n": 2**70, "s": "é"}) == '{"n":1180591620717411303424,"s":"é"}'.encode()
    assert _json_bytes(None) is None


def test_copy_records_put_json_last_as_bytes_in_either_encoder():
    """COPY records hold a row's plain values, then data and extensions as JSON bytes (None stays None)."""
    from worker.db.sql.statements import _STAGE_COLUMNS, _records

    plain = {c: f"<{c}>" for c in _STAGE_COLUMNS}
    rows = [
        plain | {"data": {"a": [1, "é"]}, "extensions": None},
        plain | {"data": None, "extensions": {"x": 1}},
    ]
    expected_plain = tuple(f"<{c}>" for c in _STAGE_COLUMNS[:-2])
    assert _records(rows) == [
        (*expected_plain, b'{"a":[1,"\xc3\xa9"]}', None),
        (*expected_plain, None, b'{"x":1}'),
    ]
    # orjson refuses an integer past 64 bits: the whole batch is encoded again with the stdlib
    big = [*rows, plain | {"data": 2**70, "extensions": None}]
    assert _records(big) == [*_records(rows), (*expected_plain, b"1180591620717411303424", None)]


# -- the ingest job's fast path from the job's text (worker.domain.wire) -------------------------------

KNOWN = frozenset({"ingest_events"})
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _job(events_text: bytes) -> bytes:
    return b'{"f":"ingest_events","a":[' + events_text + b'],"k":{},"t":1,"et":0}'


def _rows_both_ways(events_text: bytes) -> tuple[Any, Any] | None:
    """batch_rows of what the worker's deserializer hands over and of the decoded path; None: undecodable."""
    job = _job(events_text)
    try:
        decoded = deserialize(job)["a"][0]
    except (ValueError, RecursionError):  # as the worker's deserializer takes them
        assert job_deserializer(KNOWN, raw_argument_jobs=KNOWN)(job)["f"] != "ingest_events"
        return None
    handed = job_deserializer(KNOWN, raw_argument_jobs=KNOWN)(job)["a"][0]
    reference = JsonList(decoded) if type(decoded) is list else decoded
    return batch_rows(handed, LIMIT, NOW, "job-1"), batch_rows(reference, LIMIT, NOW, "job-1")


def _same(got: Rows, expected: Rows) -> None:
    # serialize tells 1 from 1.0 and True from 1, which == does not
    assert serialize(got.rows) == serialize(expected.rows)
    assert got.rows == expected.rows
    assert got.rejected == expected.rejected
    assert got.duplicates == expected.duplicates


def _encodings(values: list[Any]) -> list[bytes]:
    """The same list as different producers write it."""
    return [
        serialize(values),
        json.dumps(values, ensure_ascii=True).encode(),
        json.dumps(values, ensure_ascii=False, indent=1).encode(),
    ]


@pytest.mark.parametrize("value", [v for v in INPUTS if _json_ready(v)], ids=str)
def test_wire_path_matches_the_decoding_path(value):
    """Each input of INPUTS, as three encoders write it, gives the same rows and rejections from its text."""
    for text in _encodings([value, value]):
        both = _rows_both_ways(text)
        assert both is not None
        _same(*both)


_EVENT = '"specversion":"1.0","id":"e-1","source":"/s","type":"t"'
RAW_INPUTS = [
    # numbers whose text the decoding path changes, or no double holds
    f'{{{_EVENT},"data":{{"p":1.50,"q":1E2,"r":-0,"s":0.1000000000000000055511151231257827}}}}',
    f'{{{_EVENT},"data":{{"s":1e400}}}}',
    f'{{{_EVENT},"data":-1e-400}}',
    f'{{{_EVENT},"data":{{"big":123456789012345678901234567890,"neg":-9223372036854775809}}}}',
    f'{{{_EVENT},"n":123456789012345678901234567890}}',
    f'{{{_EVENT},"rate":0.1,"big":1e308,"tiny":5e-324,"over":1e309}}',
    f'{{{_EVENT},"rate":1E2}}',
    # repeated keys: the last wins, as in a decoded object
    f'{{{_EVENT},"id":"e-2","data":1,"data":{{"a":1,"a":2}}}}',
    f'{{{_EVENT},"x1":"a","x1":"b"}}',
    # escapes
    f'{{{_EVENT},"subject":"caf\\u00e9 \\/ \\ud83d\\ude00 \\" \\\\ \\n"}}',
    f'{{{_EVENT},"data":"\\u0000"}}',
    f'{{{_EVENT},"data":"\\\\u0000 is text"}}',
    '{"specversion":"1.0","id":"e-\\u0000","source":"/s","type":"t"}',
    f'{{{_EVENT},"ext\\u0000":"x"}}',
    f'{{{_EVENT},"x":"\\u0000"}}',
    # extensions of every kind
    f'{{{_EVENT},"traceparent":"00-1-2-01","sampled":true,"n":7,"r":2.5}}',
    f'{{{_EVENT},"x":null}}',
    f'{{{_EVENT},"x":{{}}}}',
    f'{{{_EVENT},"x":[1]}}',
    f'{{{_EVENT},"Upper":"x"}}',
    f'{{{_EVENT},"with_underscore":"x"}}',
    f'{{{_EVENT},"":"x"}}',
    # times
    f'{{{_EVENT},"time":"2026-01-02T03:04:05.1234567Z"}}',
    f'{{{_EVENT},"time":"2026-01-02t03:04:05z"}}',
    f'{{{_EVENT},"time":"2026-01-02 03:04:05+05:30"}}',
    f'{{{_EVENT},"time":"0001-01-01T00:00:00+01:00"}}',
    f'{{{_EVENT},"time":"9999-12-31T23:59:59-01:00"}}',
    f'{{{_EVENT},"time":"2026-13-01T00:00:00Z"}}',
    f'{{{_EVENT},"time":"2026-01-02T03:04:05"}}',
    f'{{{_EVENT},"time":"1714559400"}}',
    f'{{{_EVENT},"time":1714559400}}',
    f'{{{_EVENT},"time":null,"subject":null,"dataschema":null}}',
    # data and data_base64
    f'{{{_EVENT},"data":null,"data_base64":"AAE="}}',
    f'{{{_EVENT},"data":{{}},"data_base64":"AAE="}}',
    f'{{{_EVENT},"data":"x","data_base64":null}}',
    # attribute types and lengths
    '{"specversion":"1.0 ","id":"e","source":"/s","type":"t"}',
    '{"specversion":"1.0","id":"","source":"/s","type":"t"}',
    '{"specversion":"1.0","id":1,"source":"/s","type":"t"}',
    '{"specversion":"1.0","id":"e","source":"/s","type":"t","subject":' + json.dumps("s" * 1025) + "}",
    '{"specversion":"1.0","id":' + json.dumps("😀" * 255) + ',"source":"/s","type":"t"}',
    '{"specversion":"1.0","id":' + json.dumps("😀" * 256) + ',"source":"/s","type":"t"}',
    '{"specversion":"1.0","source":"/s","type":"t"}',
    # sizes: near the limit (LIMIT is small here), past it
    f'{{{_EVENT},"data":' + json.dumps("x" * (LIMIT // 5)) + "}",
    f'{{{_EVENT},"data":' + json.dumps("x" * (LIMIT - 100)) + "}",
    f'{{{_EVENT},"data":' + json.dumps("x" * LIMIT) + "}",
    # not events
    "1",
    '"x"',
    "null",
    "[]",
    "true",
    "{}",
]


@pytest.mark.parametrize("text", RAW_INPUTS)
def test_wire_path_matches_the_decoding_path_on_odd_json(text):
    """JSON no Python encoder writes (odd numbers, repeated keys, escapes): the same rows and rejections."""
    for events_text in (f"[{text}]", f"[ {text} , {text} ]", f"[{_EVENT.join('{}')},{text}]"):
        both = _rows_both_ways(events_text.encode())
        if both is not None:
            _same(*both)


@pytest.mark.parametrize(
    "events_text",
    [b"{}", b'"not a list"', b"[]", b'[{"x":"\\ud800"}]', b"[" * 200 + b"1" + b"]" * 200],
)
def test_wire_path_matches_the_decoding_path_on_whole_batches(events_text):
    """An argument that is not a list, an empty list, a lone surrogate, deep nesting: as the decoding path."""
    both = _rows_both_ways(events_text)
    assert both is not None
    _same(*both)


@pytest.mark.parametrize("depth", [600, 1100, 5000, 100_000])
def test_deeply_nested_events_do_not_break_the_deserializer(depth):
    """Nesting past what the decoders take: the job is undecodable, or its events rejected, as before."""
    text = b"[" + b'{"a":' * depth + b"1" + b"}" * depth + b"]"
    both = _rows_both_ways(text)
    if both is not None:
        _same(*both)


@settings(max_examples=300, deadline=None)
@given(st.lists(raw_events | json_values, max_size=6), st.integers(0, 2))
def test_wire_path_matches_the_decoding_path_on_generated_inputs(values, encoding):
    """Generated inputs, written by one of three encoders: the same rows and rejections from their text."""
    assume(_json_ready(values))
    both = _rows_both_ways(_encodings(values)[encoding])
    if both is not None:
        _same(*both)


def test_valid_events_take_the_wire_path(monkeypatch):
    """Ordinary valid events, with and without extensions, never reach validate_one from the job's text."""
    calls: list[Any] = []
    monkeypatch.setattr(wire, "validate_one", lambda *a: calls.append(a) or validate_one(*a))
    values = [
        event(id=f"e-{n}", **({"traceparent": "t", "n": n, "r": 0.5} if n % 2 else {})) for n in range(50)
    ]
    values.append(event(id="floats", data={"price": 19.99, "rate": 1e-3, "list": [1.5, 2]}))
    values.append(event(id="long", data={"n": 10**18 - 1, "trace": "1234567890123456789012"}))
    for text in _encodings(values):
        handed = job_deserializer(KNOWN, raw_argument_jobs=KNOWN)(_job(text))["a"][0]
        assert type(handed) is RawJson
        rows = batch_rows(handed, LIMIT, NOW, "job-1")
        assert (len(rows.rows), rows.rejected, rows.duplicates) == (len(values), [], 0)
    assert calls == []


@settings(max_examples=300, deadline=None)
@given(st.lists(raw_events | json_values, max_size=6))
def test_validate_each_is_validate_one_on_each_input_duplicates_kept(values):
    """validate_each (serve's check of a request's events) answers for every input, in order, as
    validate_one would, through the fast path: a repeated event is valid each time, not a duplicate."""
    values = values + values[:1]
    decoded = _decoded(values)
    assume(type(decoded) is JsonList)  # not when the JSON is undecodable (Infinity beside a big integer)
    outcomes = validate_each(decoded, LIMIT, decoded=True)
    assert outcomes == [validate_one(value, LIMIT, position) for position, value in enumerate(decoded)]
