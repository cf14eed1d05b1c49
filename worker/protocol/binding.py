"""The CloudEvents HTTP protocol binding 1.0, receiving side: one request's headers and body as events.

Pure: no I/O, no web framework. :func:`read_request` tells the three content modes apart by
``Content-Type``, as the binding says:

- **structured**: ``application/cloudevents+json``; the body is one event in the JSON format;
- **batched**: ``application/cloudevents-batch+json``; the body is a JSON array of events;
- **binary**: any other ``Content-Type``, or none; the attributes travel in ``ce-*`` headers
  (percent-encoded, then UTF-8), the body is the event's ``data`` and ``Content-Type`` its
  ``datacontenttype``. JSON data (``application/json``, ``*/*+json``) becomes ``data`` as JSON,
  text (``text/*`` in UTF-8) a string, anything else ``data_base64``, so the event in JSON form
  says what was sent.

A structured or batched type in a format other than JSON (``application/cloudevents+avro``), or a
charset other than UTF-8, is :class:`UnsupportedFormat` (HTTP 415). A body that cannot be read at all
(not JSON, a batch that is not an array, a header that is not percent-encoded UTF-8) is
:class:`Unreadable` (400). Everything else comes back as values in the JSON form, for
:func:`worker.protocol.events.validate_one` to judge one by one, as the ingest job does.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import unquote_to_bytes

from worker.protocol.serialization import deserialize

STRUCTURED: Final = "application/cloudevents+json"
BATCHED: Final = "application/cloudevents-batch+json"
#: Prefixes of the structured and batched media types in any event format.
_STRUCTURED_ANY: Final = "application/cloudevents+"
_BATCHED_ANY: Final = "application/cloudevents-batch+"
HEADER_PREFIX: Final = "ce-"
#: Charsets a JSON body may declare: JSON is UTF-8 (RFC 8259), and ASCII is UTF-8.
_UTF8: Final = frozenset({"utf-8", "utf8", "us-ascii"})

Mode = Literal["binary", "structured", "batched"]


class BindingError(ValueError):
    """The request as a whole cannot be read as CloudEvents; ``status`` is the HTTP status to answer."""

    status = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Unreadable(BindingError):
    """The body or a header cannot be read (not JSON, not an array, bad percent-encoding)."""

    status = 400


class UnsupportedFormat(BindingError):
    """A structured or batched content type this server cannot read (another event format or charset)."""

    status = 415


@dataclass(frozen=True, slots=True)
class Received:
    """What a request carried: its mode and each event in JSON form, as received (not yet validated)."""

    mode: Mode
    values: list[Any]


def media_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    """``text/plain; charset=UTF-8`` as ``("text/plain", {"charset": "utf-8"})``: lower case, unquoted."""
    if not content_type:
        return "", {}
    kind, *parameters = content_type.split(";")
    found = {}
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        found[name.strip().lower()] = value.strip().strip('"').lower()
    return kind.strip().lower(), found


def mode_of(content_type: str | None) -> Mode:
    """The content mode a ``Content-Type`` selects; raises :class:`UnsupportedFormat` for another format."""
    kind, parameters = media_type(content_type)
    if kind in (STRUCTURED, BATCHED):
        charset = parameters.get("charset", "utf-8")
        if charset not in _UTF8:
            raise UnsupportedFormat(f"charset {charset!r}: CloudEvents JSON is read as UTF-8 only")
        return "structured" if kind == STRUCTURED else "batched"
    if kind.startswith((_STRUCTURED_ANY, _BATCHED_ANY)):
        raise UnsupportedFormat(f"{kind}: the only event format read here is JSON ({STRUCTURED}, {BATCHED})")
    return "binary"


def read_request(content_type: str | None, headers: Iterable[tuple[bytes, bytes]], body: bytes) -> Received:
    """The events of one request: ``headers`` as raw (name, value) pairs, ``body`` as received."""
    mode = mode_of(content_type)
    if mode == "structured":
        return Received(mode, [_json(body, "the body")])
    if mode == "batched":
        batch = _json(body, "the body")
        if not isinstance(batch, list):
            raise Unreadable("a batch must be a JSON array of events")
        return Received(mode, batch)
    return Received(mode, [binary_event(content_type, headers, body)])


def _json(body: bytes, what: str) -> Any:
    try:
        return deserialize(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Unreadable(f"{what} is not JSON: {reason}") from None


def header_value(raw: bytes, name: str) -> str:
    """A ``ce-*`` header's value: percent-decoded, then read as UTF-8 (binding 1.0, section 3.1.3.2)."""
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise Unreadable(f"header {name}: not percent-encoded UTF-8") from None


def binary_event(
    content_type: str | None, headers: Iterable[tuple[bytes, bytes]], body: bytes
) -> dict[str, Any]:
    """The event a binary-mode request carries, in JSON form: attributes from ``ce-*``, data from the body."""
    event: dict[str, Any] = {}
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        if not name.startswith(HEADER_PREFIX):
            continue
        attribute = name[len(HEADER_PREFIX) :]
        if attribute in ("data", "data_base64", "datacontenttype"):
            raise Unreadable(f"header {name}: in binary mode the body is the data and Content-Type its type")
        if attribute in event:
            raise Unreadable(f"header {name} is given more than once")
        event[attribute] = header_value(raw_value, name)
    if content_type:
        event["datacontenttype"] = content_type
    if body:
        event.update(_data(content_type, body))
    return event


def is_json_type(content_type: str | None) -> bool:
    """Whether a ``datacontenttype`` says the data is JSON: ``application/json``, ``text/json``, ``+json``."""
    kind, _ = media_type(content_type)
    return kind in ("application/json", "text/json") or kind.endswith("+json")


def _data(content_type: str | None, body: bytes) -> dict[str, Any]:
    """The event's ``data`` (JSON or text) or ``data_base64`` (anything else) for a binary-mode body."""
    if is_json_type(content_type):
        return {"data": _json(body, "the body (Content-Type says JSON)")}
    kind, parameters = media_type(content_type)
    if kind.startswith("text/") and parameters.get("charset", "utf-8") in _UTF8:
        try:
            return {"data": body.decode("utf-8")}
        except UnicodeDecodeError:
            pass  # not the text it says it is: kept as the bytes it is
    return {"data_base64": base64.b64encode(body).decode("ascii")}
