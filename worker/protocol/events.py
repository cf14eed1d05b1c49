"""The event schema (CloudEvents 1.0, JSON form) and pure batch validation.

No I/O here and no SQLAlchemy: producers import this module to build events,
and the ingest job calls :func:`validate_batch` before touching the database.
An event's identity is ``(source, id)``.

:func:`validate_batch` validates a whole list at once: a screen per input proves with
orjson what the model's Python validators would check (see :func:`_screen`), then one
pydantic-core validator builds the :class:`CloudEvent` of every screened input in Rust.
Inputs the screen cannot vouch for, and any the fast validator refuses, go through
:func:`validate_one`, so every rejection carries the same errors either way.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC
from typing import Annotated, Any, Literal, TypeGuard

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import SchemaValidator
from pydantic_core import core_schema as cs

from worker.constants import MAX_ID_LENGTH, MAX_SOURCE_LENGTH, MAX_SUBJECT_LENGTH, MAX_TYPE_LENGTH
from worker.protocol.serialization import JsonList

#: CloudEvents: extension attribute names MUST be lower-case ASCII letters or digits.
EXTENSION_NAME = re.compile(r"[a-z0-9]+")

NonEmpty = Annotated[str, Field(min_length=1)]
#: A number in a string: pydantic would read it as a Unix timestamp, which RFC 3339 is not.
_NUMBER = re.compile(r"\s*[+-]?\d+(\.\d*)?\s*")


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 event. Unknown attributes are extensions and are kept."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=False)

    specversion: Literal["1.0"]
    id: Annotated[NonEmpty, Field(max_length=MAX_ID_LENGTH)]
    source: Annotated[NonEmpty, Field(max_length=MAX_SOURCE_LENGTH)]
    type: Annotated[NonEmpty, Field(max_length=MAX_TYPE_LENGTH)]
    time: AwareDatetime | None = None
    subject: Annotated[str, Field(max_length=MAX_SUBJECT_LENGTH)] | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    data: JsonValue = None
    data_base64: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _check_raw(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError(f"an event must be a JSON object, got {_json_type(value)}")
        for key in ("id", "source", "type", "subject", "specversion"):
            if key in value and value[key] is not None and not isinstance(value[key], str):
                raise ValueError(f"{key} must be a string, got {_json_type(value[key])}")
        if "time" in value and value["time"] is not None and not isinstance(value["time"], str):
            raise ValueError(f"time must be an RFC 3339 string, got {_json_type(value['time'])}")
        bad = _first_unstorable_string(value)
        if bad is not None:
            raise ValueError(f"{bad}: strings must be valid UTF-8 without NUL characters")
        if value.get("data") is not None and value.get("data_base64") is not None:
            raise ValueError("data and data_base64 are mutually exclusive")
        return value

    @field_validator("time", mode="before")
    @classmethod
    def _rfc3339(cls, value: Any) -> Any:
        if isinstance(value, str) and _NUMBER.fullmatch(value):
            raise ValueError("time must be an RFC 3339 timestamp (e.g. 2026-01-02T03:04:05Z), not a number")
        return value

    @model_validator(mode="after")
    def _check_time_range(self) -> CloudEvent:
        if self.time is not None:
            try:
                self.time.astimezone(UTC)
            except OverflowError:
                raise ValueError("time is outside the years 1 to 9999 once converted to UTC") from None
        return self

    @model_validator(mode="after")
    def _check_extensions(self) -> CloudEvent:
        for name, extension in (self.model_extra or {}).items():
            if not EXTENSION_NAME.fullmatch(name):
                raise ValueError(
                    f"extension attribute {name!r}: names are lower-case letters and digits only"
                )
            if not isinstance(extension, str | int | float | bool):
                raise ValueError(f"extension attribute {name!r}: value must be a string, number or boolean")
        return self

    @property
    def extensions(self) -> dict[str, Any]:
        """Extension attributes, as received."""
        return dict(self.model_extra or {})

    def to_json_dict(self) -> dict[str, Any]:
        """The event in CloudEvents JSON form (what a producer sends)."""
        return self.model_dump(mode="json", exclude_none=True)


#: The attributes CloudEvent declares; any other key of an event is an extension.
ATTRIBUTES = frozenset(CloudEvent.model_fields)


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _first_unstorable_string(value: Any, path: str = "event") -> str | None:
    """Path of the first string (key or value) a database cannot store: NUL or lone surrogates."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if "\x00" in item or not _utf8_encodable(item):
                return where
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and ("\x00" in key or not _utf8_encodable(key)):
                    return f"{where} (a key)"
                stack.append((child, f"{where}.{key}"))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))
    return None


def _utf8_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def encode_raw(value: Any) -> bytes:
    """JSON bytes of a received value, kept exactly enough to re-send it.

    orjson refuses lone surrogates and non-string keys; the stdlib escapes them instead.
    """
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        pass
    try:
        return json.dumps(value, ensure_ascii=True, default=repr).encode()
    except RecursionError:  # nested deeper than either encoder goes: write it without recursion
        return _encode_deep(value).encode()


def _encode_deep(value: Any) -> str:
    """JSON text of arbitrarily deep lists and objects, built with an explicit stack."""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Token):
            out.append(item.text)
        elif isinstance(item, list):
            stack.append(_Token("]"))
            for index in range(len(item) - 1, -1, -1):
                stack.append(item[index])
                if index:
                    stack.append(_Token(","))
            out.append("[")
        elif isinstance(item, dict):
            stack.append(_Token("}"))
            entries = list(item.items())
            for index in range(len(entries) - 1, -1, -1):
                key, child = entries[index]
                stack.append(child)
                stack.append(_Token(json.dumps(str(key), ensure_ascii=True) + ":"))
                if index:
                    stack.append(_Token(","))
            out.append("{")
        else:
            out.append(json.dumps(item, ensure_ascii=True, default=repr))
    return "".join(out)


@dataclass(frozen=True, slots=True)
class _Token:
    text: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """One input that is not a storable event, with why."""

    raw: bytes
    reason: Literal["invalid", "too_large", "not_a_list", "undecodable_job"]
    errors: list[dict[str, Any]]
    position: int = 0
    source: str | None = None
    event_id: str | None = None

    @property
    def message(self) -> str:
        """One line saying what is wrong."""
        return "; ".join(f"{e['loc'] or '<event>'}: {e['msg']}" for e in self.errors)


@dataclass(slots=True)
class FirstOfEach:
    """Which identities a batch has kept, and how many of its inputs repeated one (in-batch duplicates)."""

    duplicates: int = 0
    _kept: set[tuple[str, str]] = field(default_factory=set, init=False, repr=False, compare=False)

    def first(self, source: str, event_id: str) -> bool:
        """Whether ``(source, event_id)`` is new to the batch; if not, count the input as a duplicate."""
        if (source, event_id) in self._kept:
            self.duplicates += 1
            return False
        self._kept.add((source, event_id))
        return True


@dataclass(slots=True)
class Batch(FirstOfEach):
    """A validated batch: storable events (first of each identity), rejections, in-batch duplicates."""

    events: list[CloudEvent] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    # No input values: an error message must not carry the (possibly huge, possibly secret) payload.
    return [
        {
            "loc": ".".join(map(str, e["loc"])),
            "msg": e["msg"].removeprefix("Value error, "),
            "type": e["type"],
        }
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    ]


def _identity(value: Any) -> tuple[str | None, str | None]:
    if not isinstance(value, dict):
        return None, None
    source, event_id = value.get("source"), value.get("id")
    return (
        source[:MAX_SOURCE_LENGTH] if _storable(source) else None,
        event_id[:MAX_ID_LENGTH] if _storable(event_id) else None,
    )


def _storable(value: Any) -> TypeGuard[str]:
    """A string a text column can hold: valid UTF-8, no NUL."""
    return isinstance(value, str) and "\x00" not in value and _utf8_encodable(value)


def validate_one(value: Any, max_event_bytes: int, position: int = 0) -> CloudEvent | Rejection:
    """Validate one received value (the ``position``-th of its job) into an event, or say why not."""
    raw = encode_raw(value)
    source, event_id = _identity(value)
    if len(raw) > max_event_bytes:
        msg = f"event is {len(raw)} bytes, over the {max_event_bytes}-byte limit"
        error = {"loc": "", "msg": msg, "type": "too_large"}
        return Rejection(raw, "too_large", [error], position, source, event_id)
    try:
        return CloudEvent.model_validate(value)
    except ValidationError as exc:
        return Rejection(raw, "invalid", _errors(exc), position, source, event_id)


#: orjson options under which it refuses, instead of converting, what is not plain JSON data
#: (datetimes, dataclasses, subclasses of str/int/dict/list); the bytes are the same otherwise.
_PLAIN_JSON = (
    orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def _optional(schema: cs.CoreSchema) -> cs.CoreSchema:
    return cs.with_default_schema(cs.nullable_schema(schema), default=None)


def _fast_validator() -> SchemaValidator:
    """A list validator making :class:`CloudEvent` instances in Rust, or passing an input through as is.

    CloudEvent's own constraints, strict about types, without the Python validators
    (:func:`_screen` has done their checks) and with ``data`` taken as it is (the screen
    proved it plain JSON, which is all ``JsonValue`` checks).
    """

    def text(max_length: int | None = None, min_length: int | None = None) -> cs.StringSchema:
        return cs.str_schema(min_length=min_length, max_length=max_length, strict=True)

    fields = {
        "specversion": cs.model_field(cs.literal_schema(["1.0"])),
        "id": cs.model_field(text(MAX_ID_LENGTH, 1)),
        "source": cs.model_field(text(MAX_SOURCE_LENGTH, 1)),
        "type": cs.model_field(text(MAX_TYPE_LENGTH, 1)),
        "time": cs.model_field(
            _optional(cs.datetime_schema(tz_constraint="aware", microseconds_precision="truncate"))
        ),
        "subject": cs.model_field(_optional(text(MAX_SUBJECT_LENGTH))),
        "datacontenttype": cs.model_field(_optional(text())),
        "dataschema": cs.model_field(_optional(text())),
        "data": cs.model_field(cs.with_default_schema(cs.any_schema(), default=None)),
        "data_base64": cs.model_field(_optional(text())),
    }
    assert fields.keys() == ATTRIBUTES, "the fast validator must declare exactly CloudEvent's attributes"
    event = cs.model_schema(
        CloudEvent,
        cs.model_fields_schema(fields, extra_behavior="allow", model_name="CloudEvent"),
        config=cs.CoreConfig(extra_fields_behavior="allow"),
    )
    return SchemaValidator(cs.list_schema(cs.union_schema([event, cs.any_schema()], mode="left_to_right")))


_FAST = _fast_validator()


def _screen(value: Any, max_event_bytes: int, decoded: bool) -> bool:
    """Whether ``value`` may take the fast path: it passes every check CloudEvent's Python validators make.

    False means "not sure", never "invalid": :func:`validate_one` then decides. orjson
    refuses lone surrogates, non-string keys and (with :data:`_PLAIN_JSON`) non-JSON types;
    a NUL anywhere shows as ``\\u0000`` in its output. A value ``decoded`` from JSON holds
    nothing else; any other must read back from that output as itself (no tuples, UUIDs,
    enums or NaN), which is all ``data: JsonValue`` checks. The rest is :func:`_screen_shape`.
    """
    if type(value) is not dict:
        return False
    try:
        raw = orjson.dumps(value, option=_PLAIN_JSON)
    except (TypeError, orjson.JSONEncodeError):
        return False
    if len(raw) > max_event_bytes or b"\\u0000" in raw or not _screen_shape(value):
        return False
    return decoded or bool(orjson.loads(raw) == value)


#: Years whose times may leave the datetime range once converted to UTC: the slow path checks them.
_EDGE_YEARS = frozenset({"0001", "9999"})


def fast_time(when: str) -> bool:
    """Whether a fast path may parse ``when`` as CloudEvent's time: it has a colon (no number does, so
    it is never read as a Unix time) and its year cannot leave the datetime range once in UTC."""
    return ":" in when and when[:4] not in _EDGE_YEARS


def _screen_shape(value: dict[str, Any]) -> bool:
    """The checks of :func:`_screen` that need no encoding, for an object with string keys.

    A time must have a colon: no number does, so the fast path never reads one as a Unix
    timestamp. Extension names and values are looked at only when the event has any.
    """
    when = value.get("time")
    if when is not None and (type(when) is not str or not fast_time(when)):
        return False
    if value.get("data") is not None and value.get("data_base64") is not None:
        return False
    if ATTRIBUTES.issuperset(value):
        return True
    return all(
        EXTENSION_NAME.fullmatch(name) and isinstance(value[name], str | int | float | bool)
        for name in value.keys() - ATTRIBUTES
    )


def _screen_batch(payload: list[Any], max_event_bytes: int, decoded: bool) -> list[bool]:
    """:func:`_screen` of every input, with one orjson pass for the whole batch when it can vouch for all.

    Each input's JSON is a piece of the list's, so if the list encodes, is no larger than
    ``max_event_bytes`` and shows no NUL, so does every input. Otherwise (an input that is not
    plain JSON, a batch over the limit as a whole) each input is screened on its own.
    """
    if decoded:
        try:
            whole = orjson.dumps(list(payload), option=_PLAIN_JSON)  # JsonList is a subclass orjson refuses
        except (TypeError, orjson.JSONEncodeError):
            whole = b""
        if whole and len(whole) <= max_event_bytes and b"\\u0000" not in whole:
            return [type(value) is dict and _screen_shape(value) for value in payload]
    return [_screen(value, max_event_bytes, decoded) for value in payload]


def validate_batch(payload: Any, max_event_bytes: int) -> Batch:
    """Split a job's argument into storable events, rejections and in-batch duplicates.

    ``payload`` should be a list of event objects; anything else is one rejection.
    Of several events with one identity, the first is kept and the rest are duplicates.
    The result is the same as :func:`validate_one` on each input, only faster.
    """
    batch = Batch()
    if not isinstance(payload, list):
        error = {
            "loc": "",
            "msg": f"expected a list of events, got {_json_type(payload)}",
            "type": "not_a_list",
        }
        batch.rejected.append(Rejection(encode_raw(payload), "not_a_list", [error]))
        return batch
    for outcome in validate_each(payload, max_event_bytes, decoded=type(payload) is JsonList):
        if isinstance(outcome, Rejection):
            batch.rejected.append(outcome)
        elif batch.first(outcome.source, outcome.id):
            batch.events.append(outcome)
    return batch


def validate_each(
    values: list[Any], max_event_bytes: int, *, decoded: bool = False
) -> list[CloudEvent | Rejection]:
    """:func:`validate_one` of every value, in order (duplicates kept), through the fast path.

    ``decoded``: the values came out of a JSON decoder, so they hold nothing but JSON (see :func:`_screen`).
    """
    screened = _screen_batch(values, max_event_bytes, decoded)
    fast = iter(_FAST.validate_python([value for value, ok in zip(values, screened, strict=True) if ok]))
    outcomes: list[CloudEvent | Rejection] = []
    for position, (value, ok) in enumerate(zip(values, screened, strict=True)):
        outcome = next(fast) if ok else None
        if not isinstance(outcome, CloudEvent):
            outcome = validate_one(value, max_event_bytes, position)
        outcomes.append(outcome)
    return outcomes
