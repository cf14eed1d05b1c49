"""Jobs and results travel as JSON; the worker's deserializer never raises and never unpickles."""

from __future__ import annotations

import base64
import json
import pickle
import time
from datetime import UTC, date, datetime

import orjson
import pytest

from worker.constants import INGEST_JOB, UNDECODABLE_JOB
from worker.protocol.serialization import (
    JsonList,
    OutOfRangeNumber,
    RawJson,
    deserialize,
    job_deserializer,
    may_hold_a_long_integer,
    serialize,
    undecodable_job,
)

KNOWN = frozenset({INGEST_JOB, UNDECODABLE_JOB})
#: The jobs whose list argument the worker takes as JSON text, as worker.main names them.
RAW = frozenset({INGEST_JOB})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": [1, 2.5, None, True, "é"]}, {"a": [1, 2.5, None, True, "é"]}),
        (ValueError("bad input"), {"error": "ValueError", "message": "bad input"}),
        (KeyError("k"), {"error": "KeyError", "message": "'k'"}),
        (b"\x00\xffraw", {"base64": base64.b64encode(b"\x00\xffraw").decode()}),
        (bytearray(b"ab"), {"base64": "YWI="}),
        (datetime(2024, 5, 1, 10, 30, tzinfo=UTC), "2024-05-01T10:30:00+00:00"),
        (date(2024, 5, 1), "2024-05-01"),
        ((1, "two"), [1, "two"]),
        (frozenset({3}), [3]),
        ({1: "int key"}, {"1": "int key"}),
        (
            {"result": {"accepted": 3, "error": RuntimeError("x")}},
            {"result": {"accepted": 3, "error": {"error": "RuntimeError", "message": "x"}}},
        ),
    ],
)
def test_serialize_round_trip(value, expected):
    """serialize writes JSON (exceptions, bytes, dates, tuples made JSON-ready); deserialize reads it back."""
    data = serialize(value)
    assert isinstance(data, bytes)
    assert json.loads(data) == expected
    assert deserialize(data) == expected


def test_serialize_refuses_other_objects():
    """An object with no JSON form is a TypeError, not a pickle."""
    with pytest.raises(TypeError, match="not JSON serializable"):
        serialize({"x": object()})


def test_deserialize_accepts_lone_surrogate_escapes():
    """JSON that orjson refuses (an escaped lone surrogate) is read by the stdlib, still as JSON."""
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(b'["\\ud800"]')
    assert deserialize(b'{"a": ["\\ud800", 1]}') == {"a": ["\ud800", 1]}


@pytest.mark.parametrize(
    "data",
    [
        pickle.dumps({"f": INGEST_JOB, "a": [[]], "k": {}, "t": 1, "et": 1}),
        pickle.dumps({"f": INGEST_JOB, "a": [[]], "k": {}, "t": 1, "et": 1}, protocol=0),
        b"\xff\xfe\xfa not utf-8",
        b"\xc3\x28",
        b"",
        b"not json",
        b'{"f": "ingest_events", ',
        b"[1, 2, 3]",
        b'"a string"',
        b"null",
        b'{"a": [[]], "k": {}, "t": 1, "et": 1}',
        b'{"f": 12, "a": [], "k": {}, "t": 1, "et": 1}',
        b'{"f": "ingest_events", "a": {}, "k": {}, "t": 1, "et": 1}',
        b'{"f": "ingest_events", "a": [], "k": [], "t": 1, "et": 1}',
        b'{"f": "ingest_events", "a": [], "k": {}, "t": 1}',
        b'{"f": "ingest_events", "a": [], "k": {}, "t": 1, "et": "yesterday"}',
        b'{"f": "os.system", "a": ["rm -rf /"], "k": {}, "t": 1, "et": 1}',
        b"[" * 5000 + b"]" * 5000,
        b'{"a":' * 3000 + b"1" + b"}" * 3000,
    ],
    ids=[
        "pickle",
        "pickle-protocol-0",
        "invalid-utf8",
        "invalid-utf8-short",
        "empty",
        "not-json",
        "truncated-json",
        "json-list",
        "json-string",
        "json-null",
        "no-function",
        "function-not-string",
        "args-not-list",
        "kwargs-not-object",
        "no-enqueue-time",
        "enqueue-time-not-int",
        "unknown-function",
        "deep-array",
        "deep-object",
    ],
)
def test_job_deserializer_turns_anything_else_into_the_dead_letter_job(data):
    """Bytes that are not our JSON job become a call to UNDECODABLE_JOB carrying them, base64, exactly."""
    job = job_deserializer(KNOWN, raw_argument_jobs=RAW)(data)
    assert job["f"] == UNDECODABLE_JOB
    raw, problem = job["a"]
    assert base64.b64decode(raw, validate=True) == data
    assert isinstance(problem, str)
    assert problem
    assert job["k"] == {}
    assert job["t"] is None
    assert isinstance(job["et"], int)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x80\x04K\x01.", "not JSON"),
        (b"[]", "job is not a JSON object"),
        (b'{"a": [], "k": {}, "et": 1}', "job has no function name"),
        (b'{"f": "ingest_events", "a": 1, "k": {}, "et": 1}', "job arguments are not a list and an object"),
        (b'{"f": "ingest_events", "a": [], "k": {}}', "job has no enqueue time"),
        (b'{"f": "rollup", "a": [], "k": {}, "t": 1, "et": 1}', "no job named 'rollup' on this worker"),
    ],
)
def test_job_deserializer_says_what_is_wrong(data, problem):
    """The dead-letter job's second argument says why the bytes were not a job."""
    assert job_deserializer(KNOWN, raw_argument_jobs=RAW)(data)["a"][1].startswith(problem)


def test_job_deserializer_never_unpickles():
    """A pickle that would run code when loaded is stored, not loaded."""

    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("the worker unpickled a job",))

    data = pickle.dumps({"f": INGEST_JOB, "a": [Boom()], "k": {}, "t": 1, "et": 1})
    assert job_deserializer(KNOWN, raw_argument_jobs=RAW)(data)["f"] == UNDECODABLE_JOB


@pytest.mark.parametrize(
    "job",
    [
        {
            "f": INGEST_JOB,
            "a": [[{"specversion": "1.0", "id": "1"}]],
            "k": {},
            "t": None,
            "et": 1714559400000,
        },
        {"f": INGEST_JOB, "a": [], "k": {"events": []}, "t": 3, "et": 1},
        {"f": UNDECODABLE_JOB, "a": ["AAE=", "why"], "k": {}, "t": 1, "et": 1},
    ],
)
def test_job_deserializer_passes_valid_jobs_through(job):
    """A well-formed job for a known function comes out as it went in (an ingest job's events as JSON)."""
    for data in (orjson.dumps(job), serialize(job)):
        out = job_deserializer(KNOWN, raw_argument_jobs=RAW)(data)
        assert {**out, "a": [_decoded(a) for a in out["a"]]} == job


def _decoded(argument):
    return deserialize(argument) if isinstance(argument, RawJson) else argument


@pytest.mark.parametrize(
    "data",
    [
        b'{"f":"ingest_events","a":[[{"id":"1"}]],"k":{},"t":null,"et":1}',
        b' { "t" : 2 , "et" : 1 , "f" : "ingest_events" , "k" : { } , "a" : [ [ 1 , {"x": [] } ] ] } ',
        b'{"f":"ingest_events","a":[[]],"k":{},"t":1,"et":1,"extra":"ignored, as arq ignores it"}',
        (
            '{"f":"ingest_events","a":[["é", "\\u00e9", 1e400, 123456789012345678901234567890]],'
            '"k":{},"t":1,"et":1}'
        ).encode(),
    ],
)
def test_an_ingest_jobs_events_come_as_their_json_text(data):
    """An ingest job of one list hands the job its events undecoded: their exact text, read back as before."""
    job = job_deserializer(KNOWN, raw_argument_jobs=RAW)(data)
    events = job["a"][0]
    assert type(events) is RawJson
    assert deserialize(events) == deserialize(data)["a"][0]
    assert {k: job[k] for k in ("f", "k", "t", "et")} == {
        k: deserialize(data)[k] for k in ("f", "k", "t", "et")
    }
    assert repr(events) == events.decode()[:321]  # arq's log line shows the start of the text
    # serialized again (a failed job's record), it is the JSON it is, not bytes
    assert deserialize(serialize({"args": [events]}))["args"][0] == deserialize(events)


@pytest.mark.parametrize(
    "data",
    [
        b'{"f":"ingest_events","a":[[1]],"k":{},"t":true,"et":1}',  # arq compares t as a number
        b'{"f":"ingest_events","a":[[1]],"k":{},"t":1,"et":1.5}',
        b'{"f":"ingest_events","a":[[1]],"k":{"x":1},"t":1,"et":1}',
        b'{"f":"ingest_events","a":[[1],[2]],"k":{},"t":1,"et":1}',
        b'{"f":"ingest_events","a":[{"not":"a list"}],"k":{},"t":1,"et":1}',
        rb'{"f":"ingest_events","a":[["\\ud800 \ud800"]],"k":{},"t":1,"et":1}',  # a lone surrogate
        b'{"f":"ingest_events","a":[["\xff"]],"k":{},"t":1,"et":1}',  # not UTF-8
        b'{"f":"ingest_events","a":[[NaN]],"k":{},"t":1,"et":1}',
        b'{"f":"run_handlers","a":[[1]],"k":{},"t":1,"et":1}',
    ],
)
def test_any_other_job_is_decoded_as_before(data):
    """Anything but an ingest job of one list of valid JSON text is decoded whole, as before RawJson was."""
    job = job_deserializer(KNOWN | {"run_handlers"}, raw_argument_jobs=RAW)(data)
    assert not any(isinstance(a, RawJson) for a in job["a"])
    try:
        expected = deserialize(data)
    except ValueError:
        assert job["f"] == UNDECODABLE_JOB
    else:
        assert job["a"] == expected["a"] or job["f"] == UNDECODABLE_JOB


def test_only_the_jobs_named_get_their_list_as_json_text():
    """The transport knows no job: the caller names those whose one list argument stays JSON text."""
    ingest = b'{"f":"ingest_events","a":[[{"id":"1"}]],"k":{},"t":1,"et":1}'
    other = b'{"f":"run_handlers","a":[[1, 2]],"k":{},"t":1,"et":1}'
    known = KNOWN | {"run_handlers"}
    assert type(job_deserializer(known)(ingest)["a"][0]) is JsonList
    assert type(job_deserializer(known, raw_argument_jobs={"run_handlers"})(other)["a"][0]) is RawJson
    assert type(job_deserializer(known, raw_argument_jobs={"run_handlers"})(ingest)["a"][0]) is JsonList


def test_job_deserializer_reads_lone_surrogate_escapes():
    """Events holding an escaped lone surrogate still decode (the event is rejected later, not the job)."""
    data = b'{"f": "ingest_events", "a": [[{"id": "\\udc80"}]], "k": {}, "t": 1, "et": 1}'
    assert job_deserializer(KNOWN, raw_argument_jobs=RAW)(data)["a"] == [[{"id": "\udc80"}]]


def test_job_deserializer_only_knows_the_given_jobs():
    """A job is only passed through to a worker that has that function."""
    data = orjson.dumps({"f": INGEST_JOB, "a": [], "k": {}, "t": 1, "et": 1})
    assert job_deserializer({UNDECODABLE_JOB}, raw_argument_jobs=RAW)(data)["f"] == UNDECODABLE_JOB


def test_undecodable_job_record():
    """undecodable_job builds an arq job record with the raw bytes, the problem and an enqueue time of now."""
    before = int(time.time() * 1000)
    job = undecodable_job(b"\x80raw", "not JSON")
    assert job["f"] == UNDECODABLE_JOB
    assert job["a"] == [base64.b64encode(b"\x80raw").decode(), "not JSON"]
    assert before <= job["et"] <= int(time.time() * 1000)
    assert orjson.loads(serialize(job)) == job


@pytest.mark.parametrize(
    "data",
    [
        b'{"f": "ingest_events", "a": [[]], "k": {}, "et": 1}',
        b'{"f": "ingest_events", "a": [[]], "k": {}, "t": "1", "et": 1}',
        b'{"f": "ingest_events", "a": [[]], "k": {}, "t": [1], "et": 1}',
    ],
    ids=["no-try", "try-a-string", "try-a-list"],
)
def test_job_deserializer_checks_the_try_field(data):
    """A job without an integer-or-null 't' (arq reads and compares it) becomes the dead-letter job."""
    job = job_deserializer(KNOWN, raw_argument_jobs=RAW)(data)
    assert job["f"] == UNDECODABLE_JOB
    assert job["a"] == [base64.b64encode(data).decode(), "job has no try number"]


@pytest.mark.parametrize(
    "number",
    ["18446744073709551616", "-9223372036854775809", "123456789012345678901234567890", "9" * 400],
)
def test_integers_beyond_64_bits_stay_exact(number):
    """orjson reads these as floats (or refuses them), changing them; jobs keep them exact both ways."""
    decoded = deserialize(f'{{"n": {number}}}'.encode())
    assert decoded == {"n": int(number)}
    assert type(decoded["n"]) is int
    assert serialize(decoded) == f'{{"n":{number}}}'.encode()


def test_numbers_no_float_holds_are_kept_as_their_text():
    """1e400 is valid JSON but no float: it stays as its text, unequal to any JSON value, not Infinity."""
    decoded = deserialize(b'{"a": 1E400, "b": -2e999, "c": 1.5e300, "d": 1e-400}')
    assert decoded["a"] == OutOfRangeNumber("1E400")
    assert repr(decoded["a"]) == "1E400"
    assert decoded["b"] == OutOfRangeNumber("-2e999")
    assert (decoded["c"], decoded["d"]) == (1.5e300, 0.0)
    with pytest.raises(TypeError):
        orjson.dumps(decoded)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_json_constants_make_a_job_undecodable(literal):
    """NaN and Infinity are not JSON: such a job is kept whole as a dead letter, not stored as null."""
    with pytest.raises(ValueError, match="not a JSON value"):
        deserialize(f"[{literal}]".encode())
    raw = f'{{"f": "{INGEST_JOB}", "a": [[{{"x": {literal}}}]], "k": {{}}, "t": 1, "et": 1}}'.encode()
    job = job_deserializer(KNOWN, raw_argument_jobs=RAW)(raw)
    assert job["f"] == UNDECODABLE_JOB
    assert base64.b64decode(job["a"][0]) == raw


@pytest.mark.parametrize(
    ("raw", "may"),
    [
        (b"12345678901234567890", True),
        (b"[12345678901234567890]", True),
        (b'{"a":-1234567890123456789}', True),
        (b'{"a": 12345678901234567890}', True),
        (b"[1,\n\t12345678901234567890]", True),
        (b'{"trace":"00-00000000000000000000000000000001-0000000000000001-01"}', False),
        (b'{"id":"1234567890123456789012"}', False),
        (b"[1.1234567890123456789012]", False),
        (b"[1e-1234567890123456789012]", False),
        (b'["x", 123456789012345678]', False),  # 18 digits: orjson reads every one exactly
    ],
)
def test_which_payloads_take_the_exact_decoder(raw, may):
    """Only a run of 19+ digits where a JSON number can start sends a payload past orjson."""
    assert may_hold_a_long_integer(raw) is may
    assert deserialize(raw) == json.loads(raw)


def test_long_digit_runs_in_strings_keep_big_integers_elsewhere_exact():
    """A payload with both a digit run in a string and a big integer still reads the integer exactly."""
    raw = b'{"trace": "00000000000000000000000000000001", "n": 18446744073709551616}'
    assert deserialize(raw)["n"] == 18446744073709551616
    assert type(deserialize(raw)["n"]) is int
