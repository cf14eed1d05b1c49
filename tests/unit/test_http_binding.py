"""The CloudEvents HTTP binding, receiving side: modes by Content-Type, ce- headers decoded, data as sent."""

from __future__ import annotations

import base64

import pytest

from worker.protocol.binding import (
    Unreadable,
    UnsupportedFormat,
    binary_event,
    mode_of,
    read_request,
)


@pytest.mark.parametrize(
    ("content_type", "mode"),
    [
        ("application/cloudevents+json", "structured"),
        ("Application/CloudEvents+JSON; charset=UTF-8", "structured"),
        ("application/cloudevents-batch+json", "batched"),
        ("application/json", "binary"),
        ("text/plain; charset=utf-8", "binary"),
        ("application/octet-stream", "binary"),
        (None, "binary"),
        ("", "binary"),
    ],
)
def test_the_content_type_selects_the_mode(content_type, mode):
    """Structured and batched JSON by their media types; anything else is binary mode."""
    assert mode_of(content_type) == mode


@pytest.mark.parametrize(
    "content_type",
    [
        "application/cloudevents+avro",
        "application/cloudevents+protobuf",
        "application/cloudevents-batch+xml",
        "application/cloudevents+json; charset=latin-1",
    ],
)
def test_another_event_format_or_charset_is_unsupported(content_type):
    """A structured or batched type this server cannot read is a 415, not a binary-mode body."""
    with pytest.raises(UnsupportedFormat) as caught:
        mode_of(content_type)
    assert caught.value.status == 415


def h(**headers: str) -> list[tuple[bytes, bytes]]:
    return [(name.replace("_", "-").encode(), value.encode("latin-1")) for name, value in headers.items()]


def test_binary_headers_are_percent_decoded_utf8():
    """ce- values are percent-decoded, then read as UTF-8; names are case-insensitive."""
    headers = [
        (b"CE-SpecVersion", b"1.0"),
        (b"ce-id", b"caf%C3%A9%20%22quoted%22%20100%25"),
        (b"ce-source", b"/shop"),
        (b"ce-type", b"t"),
        (b"ce-tenant", b"%E6%9D%B1%E4%BA%AC"),
        (b"x-other", b"ignored"),
    ]
    event = binary_event("application/json", headers, b'{"n": 1}')
    assert event == {
        "specversion": "1.0",
        "id": 'café "quoted" 100%',
        "source": "/shop",
        "type": "t",
        "tenant": "東京",
        "datacontenttype": "application/json",
        "data": {"n": 1},
    }


@pytest.mark.parametrize(
    ("content_type", "body", "data"),
    [
        ("application/json", b'{"a": [1, 2]}', {"data": {"a": [1, 2]}}),
        ("application/vnd.example+json", b"[1]", {"data": [1]}),
        ("text/plain; charset=utf-8", "héllo".encode(), {"data": "héllo"}),
        ("text/plain", b"\xff\xfe", {"data_base64": base64.b64encode(b"\xff\xfe").decode()}),
        ("application/octet-stream", b"\x00\x01", {"data_base64": "AAE="}),
        (None, b"raw", {"data_base64": "cmF3"}),
        ("application/json", b"", {}),
    ],
)
def test_binary_body_becomes_data_as_the_json_format_would_say(content_type, body, data):
    """JSON data as JSON, UTF-8 text as a string, anything else as data_base64; no body, no data."""
    event = binary_event(content_type, h(ce_specversion="1.0"), body)
    assert {k: v for k, v in event.items() if k in ("data", "data_base64")} == data


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ([(b"ce-id", b"%FF")], "header ce-id: not percent-encoded UTF-8"),
        ([(b"ce-data", b"x")], "in binary mode the body is the data"),
        ([(b"ce-id", b"1"), (b"Ce-Id", b"2")], "header ce-id is given more than once"),
    ],
)
def test_unreadable_binary_headers(headers, problem):
    """Headers that cannot be one event's attributes are a 400 naming the header."""
    with pytest.raises(Unreadable, match=problem):
        binary_event("application/json", headers, b"{}")


def test_a_json_content_type_with_a_body_that_is_not_json_is_unreadable():
    with pytest.raises(Unreadable, match="Content-Type says JSON"):
        binary_event("application/json", h(ce_specversion="1.0"), b"{nope")


def test_structured_and_batched_bodies():
    """One event, a list of events; big integers stay exact; a batch must be an array."""
    one = read_request("application/cloudevents+json", [], b'{"id": "1", "n": 18446744073709551616}')
    assert (one.mode, one.values) == ("structured", [{"id": "1", "n": 18446744073709551616}])
    many = read_request("application/cloudevents-batch+json", [], b'[{"id": "1"}, 2]')
    assert (many.mode, many.values) == ("batched", [{"id": "1"}, 2])
    assert read_request("application/cloudevents-batch+json", [], b"[]").values == []
    with pytest.raises(Unreadable, match="a batch must be a JSON array"):
        read_request("application/cloudevents-batch+json", [], b'{"id": "1"}')
    with pytest.raises(Unreadable, match="the body is not JSON"):
        read_request("application/cloudevents+json", [], b"\xff")
