"""The CloudEvents schema and batch validation: pure functions, tested as tables."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from worker.domain.rows import event_row
from worker.protocol.events import CloudEvent, Rejection, encode_raw, validate_batch, validate_one

LIMIT = 1_048_576
SECRET = "sk_live_hunter2-TOPSECRET"


def event(**fields: Any) -> dict[str, Any]:
    """A minimal valid event in JSON form, with ``fields`` changed (None removes a field)."""
    base: dict[str, Any] = {"specversion": "1.0", "id": "e-1", "source": "/shop", "type": "order.created"}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


FULL = event(
    time="2024-05-01T12:30:00.123456+02:00",
    subject="order/42",
    datacontenttype="application/json",
    dataschema="https://example.com/schemas/order.json",
    data={"amount": 1250, "currency": "EUR", "items": [{"sku": "A-1", "qty": 2}], "note": "ünïcødé 😀"},
)


@pytest.mark.parametrize(
    ("value", "check"),
    [
        (event(), {"id": "e-1", "source": "/shop", "type": "order.created", "time": None, "data": None}),
        (
            FULL,
            {
                "time": datetime(2024, 5, 1, 10, 30, 0, 123456, tzinfo=UTC),
                "subject": "order/42",
                "data": FULL["data"],
            },
        ),
        (event(time="2024-05-01T10:30:00Z"), {"time": datetime(2024, 5, 1, 10, 30, tzinfo=UTC)}),
        (event(data_base64="AAEC"), {"data_base64": "AAEC", "data": None}),
        (event(data="plain text"), {"data": "plain text"}),
        (event(data=[1, 2.5, True, None]), {"data": [1, 2.5, True, None]}),
        (event(id="x" * 255, source="s" * 512), {"id": "x" * 255}),
        (event(subject=None, time=None), {"subject": None}),
    ],
    ids=["minimal", "full", "utc-time", "data_base64", "string-data", "array-data", "max-lengths", "nulls"],
)
def test_valid_event(value, check):
    """A valid event becomes a CloudEvent with its attributes as given (times made aware)."""
    result = validate_one(value, LIMIT)
    assert isinstance(result, CloudEvent)
    assert {name: getattr(result, name) for name in check} == check


def test_time_keeps_its_instant():
    """An event time with an offset is the same instant as the text says."""
    result = validate_one(event(time="2024-05-01T12:30:00+02:00"), LIMIT)
    assert isinstance(result, CloudEvent)
    assert result.time == datetime(2024, 5, 1, 12, 30, tzinfo=timezone(timedelta(hours=2)))


@pytest.mark.parametrize(
    "extensions",
    [
        {"traceparent": "00-abc-def-01"},
        {"comexampleextension1": "value", "partitionkey": 7, "sampled": True, "rate": 0.25},
        {"a1": ""},
    ],
)
def test_extensions_are_kept(extensions):
    """Extension attributes (lower-case letters and digits) are kept, as received."""
    result = validate_one(event(**extensions), LIMIT)
    assert isinstance(result, CloudEvent)
    assert result.extensions == extensions
    assert result.to_json_dict() == event(**extensions)


@pytest.mark.parametrize(
    ("value", "loc", "fragment"),
    [
        (event(id=None), "id", "Field required"),
        (event(source=None), "source", "Field required"),
        (event(type=None), "type", "Field required"),
        (event(specversion=None), "specversion", "Field required"),
        (event(specversion="0.3"), "specversion", "Input should be '1.0'"),
        (event(id=""), "id", "at least 1 character"),
        (event(id="x" * 256), "id", "at most 255 characters"),
        (event(source="s" * 513), "source", "at most 512 characters"),
        (event(id=42), "", "id must be a string, got number"),
        (event(source=["/shop"]), "", "source must be a string, got array"),
        (event(type=True), "", "type must be a string, got boolean"),
        (event(specversion=1.0), "", "specversion must be a string, got number"),
        (event(time=1714559400), "", "time must be an RFC 3339 string, got number"),
        (event(time="2024-05-01T10:30:00"), "time", "timezone"),
        (event(time="2024-05-01"), "time", "timezone"),
        (event(time="yesterday"), "time", "valid datetime"),
        (event(time="01/05/2024 10:30"), "time", "valid datetime"),
        (event(data="a\x00b"), "", "event.data: strings must be valid UTF-8 without NUL"),
        (event(subject="\x00"), "", "event.subject: strings must be"),
        (event(data={"k\x00": 1}), "", "event.data (a key): strings must be"),
        (event(data={"nested": ["ok", "\ud800"]}), "", "event.data.nested[1]: strings must be"),
        (event(source="/shop\udcff"), "", "event.source: strings must be"),
        (event(data={"a": 1}, data_base64="AAEC"), "", "data and data_base64 are mutually exclusive"),
        (event(Traceparent="x"), "", "extension attribute 'Traceparent'"),
        (event(my_ext="x"), "", "extension attribute 'my_ext'"),
        (event(**{"my-ext": "x"}), "", "extension attribute 'my-ext'"),
        (event(ext={"a": 1}), "", "extension attribute 'ext': value must be a string, number or boolean"),
        (event(ext=[1]), "", "extension attribute 'ext': value must be"),
        ("an event", "", "an event must be a JSON object, got string"),
        (7, "", "an event must be a JSON object, got number"),
        (None, "", "an event must be a JSON object, got null"),
        ([event()], "", "an event must be a JSON object, got array"),
    ],
)
def test_invalid_event(value, loc, fragment):
    """An invalid event is a Rejection 'invalid' saying where and what, as plain JSON-ready dicts."""
    result = validate_one(value, LIMIT)
    assert isinstance(result, Rejection)
    assert result.reason == "invalid"
    assert [e["loc"] for e in result.errors][:1] == [loc]
    assert fragment in result.errors[0]["msg"]
    assert all(set(e) == {"loc", "msg", "type"} for e in result.errors)
    assert orjson.loads(orjson.dumps(result.errors)) == result.errors
    assert fragment in result.message


@pytest.mark.parametrize("time", ["1714559400", "1714559400.5"])
def test_time_as_digit_string_is_not_rfc3339(time):
    """A time that is digits in a string is not RFC 3339 and is rejected."""
    assert isinstance(validate_one(event(time=time), LIMIT), Rejection)


def test_several_errors_are_all_reported():
    """An event with several missing fields lists each of them."""
    result = validate_one({"specversion": "1.0"}, LIMIT)
    assert isinstance(result, Rejection)
    assert sorted(e["loc"] for e in result.errors) == ["id", "source", "type"]
    assert result.message == "id: Field required; source: Field required; type: Field required"


@pytest.mark.parametrize(
    "value",
    [
        event(id=404, data={"password": SECRET}),
        event(specversion="0.3", data=SECRET),
        event(time=SECRET),
        event(id=SECRET * 20),
        event(subject=f"{SECRET}\x00"),
        event(data={"token": f"{SECRET}\ud800"}),
        event(ext=[SECRET]),
        event(type=[SECRET]),
        event(data=SECRET, data_base64=SECRET),
        event(source=None, data=SECRET),
        {"not": "an event", "but": SECRET},
    ],
)
def test_rejection_errors_carry_no_input_values(value):
    """Errors say where and what, never the values: the secret is in raw, not in errors or message."""
    result = validate_one(value, LIMIT)
    assert isinstance(result, Rejection)
    assert SECRET not in orjson.dumps(result.errors).decode()
    assert SECRET not in result.message
    assert SECRET.encode() in result.raw


def test_too_large_event():
    """An event over max_event_bytes (as JSON) is rejected 'too_large' before validation, identity kept."""
    value = event(data="x" * 2000)
    result = validate_one(value, 1000, position=4)
    assert isinstance(result, Rejection)
    assert result.reason == "too_large"
    assert result.errors == [
        {
            "loc": "",
            "msg": f"event is {len(orjson.dumps(value))} bytes, over the 1000-byte limit",
            "type": "too_large",
        }
    ]
    assert (result.position, result.source, result.event_id) == (4, "/shop", "e-1")
    assert result.raw == orjson.dumps(value)


def test_size_limit_boundary():
    """An event of exactly max_event_bytes is accepted; one byte less as limit rejects it."""
    value = event(data="payload")
    size = len(encode_raw(value))
    assert isinstance(validate_one(value, size), CloudEvent)
    assert validate_one(value, size - 1).reason == "too_large"  # type: ignore[union-attr]


def test_huge_invalid_value_is_too_large_not_invalid():
    """A huge value that is not even an event is rejected as too_large (and not validated)."""
    result = validate_one(["x" * 5000], 1000)
    assert isinstance(result, Rejection)
    assert result.reason == "too_large"


@pytest.mark.parametrize(
    ("value", "source", "event_id"),
    [
        (event(id=42), "/shop", None),
        (event(source=None), None, "e-1"),
        (event(specversion="0.3", source="s" * 600, id="i" * 300), "s" * 512, "i" * 255),
        (event(source="/x\ud800", id="ok"), None, "ok"),
        ("not an object", None, None),
    ],
)
def test_rejection_keeps_what_identity_it_can(value, source, event_id):
    """A rejection records source and id when they are storable strings, cut to the column sizes."""
    result = validate_one(value, LIMIT)
    assert isinstance(result, Rejection)
    assert (result.source, result.event_id) == (source, event_id)


@pytest.mark.parametrize(
    ("payload", "kind"),
    [({"events": []}, "object"), ("[]", "string"), (None, "null"), (3, "number"), (event(), "object")],
)
def test_batch_that_is_not_a_list(payload, kind):
    """A job argument that is not a list is one 'not_a_list' rejection holding the whole payload."""
    batch = validate_batch(payload, LIMIT)
    assert batch.events == []
    assert batch.duplicates == 0
    [rejection] = batch.rejected
    assert rejection.reason == "not_a_list"
    assert rejection.position == 0
    assert rejection.errors[0]["msg"] == f"expected a list of events, got {kind}"
    assert rejection.raw == orjson.dumps(payload)


def test_empty_batch():
    """An empty list is a batch with nothing in it."""
    batch = validate_batch([], LIMIT)
    assert (batch.events, batch.rejected, batch.duplicates) == ([], [], 0)


def test_batch_positions_are_input_indices():
    """Each rejection's position is the index of its input in the job's list."""
    payload = [event(id="a"), "junk", event(id="b"), event(id=5), 7, event(id="c", data="x" * 500), None]
    batch = validate_batch(payload, 400)
    assert [e.id for e in batch.events] == ["a", "b"]
    assert [(r.position, r.reason) for r in batch.rejected] == [
        (1, "invalid"),
        (3, "invalid"),
        (4, "invalid"),
        (5, "too_large"),
        (6, "invalid"),
    ]
    assert [r.raw for r in batch.rejected] == [orjson.dumps(payload[i]) for i in (1, 3, 4, 5, 6)]


def test_duplicates_within_a_batch_keep_the_first():
    """Of several events with one (source, id), the first is kept and the others are counted."""
    first = event(id="dup", data={"version": 1})
    payload = [
        first,
        event(id="other"),
        event(id="dup", data={"version": 2}),
        event(id="dup", source="/elsewhere"),  # same id, other source: a different event
        event(id="dup", data={"version": 3}),
    ]
    batch = validate_batch(payload, LIMIT)
    assert [(e.source, e.id) for e in batch.events] == [
        ("/shop", "dup"),
        ("/shop", "other"),
        ("/elsewhere", "dup"),
    ]
    assert batch.events[0].data == {"version": 1}
    assert batch.duplicates == 2
    assert batch.rejected == []


def test_invalid_repeat_is_rejected_not_a_duplicate():
    """A later invalid event with a stored identity is a rejection, not a duplicate."""
    batch = validate_batch([event(id="a"), event(id="a", time="soon")], LIMIT)
    assert (len(batch.events), batch.duplicates, len(batch.rejected)) == (1, 0, 1)


@pytest.mark.parametrize(
    "value",
    [
        event(),
        {"s": "ünïcødé 😀", "n": [1, 2.5, None, True, False]},
        {"lone": "\ud800", "nested": [{"x": "\udfff"}]},
        2**70,
        -(2**64),
        "just text",
        [],
        None,
    ],
)
def test_encode_raw_round_trips(value):
    """encode_raw gives JSON that decodes to the same value, including what orjson refuses."""
    assert json.loads(encode_raw(value)) == value


def test_encode_raw_is_compact_orjson_when_possible():
    """A plain value is encoded by orjson, compactly, as the producer would have sent it."""
    assert encode_raw({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()


def test_to_json_dict_is_the_wire_form():
    """to_json_dict gives the CloudEvents JSON form: no nulls, RFC 3339 UTC time, extensions inline."""
    result = validate_one(event(time="2024-05-01T10:30:00+00:00", subject=None, partitionkey="p1"), LIMIT)
    assert isinstance(result, CloudEvent)
    assert result.to_json_dict() == event(time="2024-05-01T10:30:00Z", partitionkey="p1")


def test_event_row_maps_every_column():
    """event_row gives the events row: identity, attributes, data, extensions (None when there are none)."""
    received = datetime(2024, 5, 2, tzinfo=UTC)
    full = validate_one({**FULL, "traceparent": "t"}, LIMIT)
    minimal = validate_one(event(), LIMIT)
    assert isinstance(full, CloudEvent)
    assert isinstance(minimal, CloudEvent)
    row = event_row(full, received, "job-9")
    assert row == {
        "source": "/shop",
        "event_id": "e-1",
        "type": "order.created",
        "specversion": "1.0",
        "time": full.time,
        "subject": "order/42",
        "datacontenttype": "application/json",
        "dataschema": "https://example.com/schemas/order.json",
        "data": FULL["data"],
        "data_base64": None,
        "extensions": {"traceparent": "t"},
        "received_at": received,
        "job_id": "job-9",
    }
    assert event_row(minimal, received, None)["extensions"] is None
