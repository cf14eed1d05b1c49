"""Job arguments and results travel through Redis as JSON, never pickle.

A worker that unpickles whatever sits in Redis lets anyone who can write to Redis
run code on it. The worker's deserializer never fails: a payload that is not our
JSON job format, or names a job this worker does not have, is turned into a call of
:data:`~worker.constants.UNDECODABLE_JOB` carrying the raw bytes, which stores them
as a dead letter instead of dropping or retrying them.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Callable, Collection
from datetime import date, datetime
from typing import Any, NoReturn

import msgspec
import orjson

from worker.constants import UNDECODABLE_JOB

#: How much of a job's arguments arq keeps in its per-job log line (``arq.utils.truncate``).
ARQ_LOG_CHARS = 80


def _default(value: Any) -> Any:
    if isinstance(value, OutOfRangeNumber):  # as it came: a JSON number
        return orjson.Fragment(value.text)
    if isinstance(value, RawJson):  # JSON text already
        return orjson.Fragment(bytes(value))
    if isinstance(value, BaseException):
        return {"error": type(value).__name__, "message": str(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"base64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, date | datetime):  # pragma: no cover - orjson handles these natively
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def serialize(value: Any) -> bytes:
    """JSON bytes for a job or a result (exceptions become ``{"error", "message"}``).

    orjson refuses integers beyond 64 bits; JSON has no such limit, so the stdlib writes those.
    """
    try:
        return orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        if "64-bit" not in str(exc):
            raise
    return json.dumps(value, default=_stdlib_default, ensure_ascii=False, separators=(",", ":")).encode()


def _stdlib_default(value: Any) -> Any:
    if isinstance(value, RawJson):
        return deserialize(value)
    return value.text if isinstance(value, OutOfRangeNumber) else _default(value)


class OutOfRangeNumber:
    """A JSON number no float can hold (``1e400``), as its text.

    It is valid JSON, but stored it would silently become ``null`` or ``Infinity``, so it is
    not a JSON value to :func:`worker.protocol.events.validate_batch`: the event holding it is refused
    with a reason and kept as a dead letter, and the events beside it are stored.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OutOfRangeNumber) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def _parse_float(text: str) -> float | OutOfRangeNumber:
    value = float(text)
    return value if math.isfinite(value) else OutOfRangeNumber(text)


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON value")


#: The stdlib decoder, for what orjson gets wrong or refuses: orjson reads an integer beyond 64
#: bits as a float, silently changing it (``18446744073709551616`` became ``1.8446744073709552e+19``).
#: This one keeps integers exact, reads escaped lone surrogates, refuses ``NaN`` and ``Infinity``
#: (not JSON), and keeps numbers too large for a float as :class:`OutOfRangeNumber`.
_DECODER = json.JSONDecoder(parse_float=_parse_float, parse_constant=_refuse_constant)


#: Every ASCII digit mapped to ``0``: a run of 19 zeros after :func:`bytes.translate` is 19 digits in a row.
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
#: The shortest digit run that may be an integer orjson changes (``-9223372036854775809``).
_LONG_NUMBER = b"0" * 19
#: What may come before a JSON number (its minus sign aside): a number starts a value.
_BEFORE_NUMBER = frozenset(b" \t\r\n:,[")


def may_hold_a_long_integer(raw: bytes) -> bool:
    """Whether ``raw`` may hold an integer of 19 digits or more, which orjson could read wrongly.

    A run of 19 digits can be such a number only where a JSON value can start: at the beginning,
    or after whitespace, ``:``, ``,`` or ``[`` (a minus sign between). Runs inside strings (trace
    ids, 19-digit ids sent as text) come after a letter, a quote or a digit and are skipped.
    """
    zeros = raw.translate(_DIGITS_TO_ZERO)
    start = zeros.find(_LONG_NUMBER)
    while start != -1:  # the leftmost match is where its run of digits begins
        before = start - 1
        if before >= 0 and raw[before] == 0x2D:  # "-"
            before -= 1
        if before < 0 or raw[before] in _BEFORE_NUMBER:
            return True
        start = zeros.find(
            _LONG_NUMBER, start + len(_LONG_NUMBER)
        )  # past this run (or inside it: a digit before)
    return False


def deserialize(data: bytes | str) -> Any:
    """Decode JSON exactly: big integers stay integers; raises ``ValueError`` if it is not JSON.

    orjson where it is exact (no run of 19 digits where a number can start, which any integer
    beyond 64 bits needs; it refuses ``1e400``, NaN and lone surrogates by itself), the stdlib
    :data:`_DECODER` otherwise: orjson takes half the time, and the check costs far less.
    """
    raw = data.encode() if isinstance(data, str) else data
    if not may_hold_a_long_integer(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return _DECODER.decode(raw.decode())


def _job_problem(job: Any, known: Collection[str]) -> str | None:
    if not isinstance(job, dict):
        return "job is not a JSON object"
    if not isinstance(job.get("f"), str):
        return "job has no function name"
    if not isinstance(job.get("a"), list) or not isinstance(job.get("k"), dict):
        return "job arguments are not a list and an object"
    if not isinstance(job.get("et"), int):
        return "job has no enqueue time"
    if "t" not in job or not (job["t"] is None or isinstance(job["t"], int)):
        return "job has no try number"  # arq reads and compares it before running anything
    if job["f"] not in known:
        return f"no job named {job['f']!r} on this worker"
    return None


def undecodable_job(raw: bytes, problem: str) -> dict[str, Any]:
    """An arq job record that calls the dead-letter job with ``raw``."""
    return {
        "f": UNDECODABLE_JOB,
        "a": [base64.b64encode(raw).decode(), problem],
        "k": {},
        "t": None,
        "et": int(time.time() * 1000),
    }


class JsonList(list[Any]):
    """A job argument that is a list, as the worker's deserializer hands it over: decoded JSON, cheap to repr.

    Everything in it came out of :func:`deserialize`, so it holds only dicts, lists, strings,
    numbers, booleans, None and :class:`OutOfRangeNumber` (which no JSON encoder takes, so
    :func:`worker.protocol.events.validate_batch` sends it down its one-by-one path, where it is refused).

    arq builds the text of its per-job log line before it knows whether the line is logged:
    the repr of every argument, then cut to :data:`ARQ_LOG_CHARS`. For a batch of a thousand
    events that is half a megabyte of text made and thrown away per job, a tenth of a busy
    worker's time. This repr stops after the item that takes it past that length, so its
    first characters, all arq keeps, are those of the full repr.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        text = "["
        for shown, item in enumerate(self):
            if len(text) > ARQ_LOG_CHARS:
                return f"{text}, … {len(self) - shown} more]"
            text += (", " if shown else "") + repr(item)
        return text + "]"


class RawJson(bytes):
    """JSON text handed over undecoded: the list argument of a job named in ``raw_argument_jobs``.

    The worker names its ingest job, whose events :mod:`worker.domain.wire` reads from their text.
    The worker's deserializer makes one only of valid UTF-8 that msgspec read as JSON holding no
    lone surrogate. Serialized (a failed job's record, a result), it is written as the JSON it is.
    Its repr, which arq puts in its per-job log line, is the start of the text.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return self[: 4 * ARQ_LOG_CHARS + 1].decode("utf-8", "replace")


class _Job(msgspec.Struct):
    """An arq job record, its arguments left as JSON text."""

    f: str
    a: list[msgspec.Raw]
    k: dict[str, msgspec.Raw]
    t: int | None
    et: int


_JOB = msgspec.json.Decoder(_Job)


def _raw_argument_job(
    data: bytes, known_jobs: Collection[str], raw_argument_jobs: Collection[str]
) -> dict[str, Any] | None:
    """A job of ``raw_argument_jobs`` with its one list argument as :class:`RawJson`; None for any other.

    msgspec reads the record and skips over the argument checking its syntax, a tenth of what
    decoding it costs; anything it refuses, or any other shape, is left to the decoding path.
    """
    try:
        job = _JOB.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    if job.f not in raw_argument_jobs or job.f not in known_jobs or len(job.a) != 1 or job.k:
        return None
    argument = bytes(job.a[0])
    if not argument.startswith(b"[") or not _utf8(data):
        return None
    return {"f": job.f, "a": [RawJson(argument)], "k": {}, "t": job.t, "et": job.et}


def _utf8(data: bytes) -> bool:
    """Whether ``data`` is valid UTF-8 (msgspec does not look inside what it skips)."""
    if data.isascii():
        return True
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def job_deserializer(
    known_jobs: Collection[str], *, raw_argument_jobs: Collection[str] = frozenset()
) -> Callable[[bytes], dict[str, Any]]:
    """arq ``job_deserializer`` for a worker with ``known_jobs``: never raises, never unpickles.

    A job named in ``raw_argument_jobs`` whose one argument is a list gets it as :class:`RawJson`
    (the worker names its ingest job, which reads its events from their text); other list
    arguments come as :class:`JsonList`.
    """

    def deserialize_job(data: bytes) -> dict[str, Any]:
        raw = _raw_argument_job(data, known_jobs, raw_argument_jobs)
        if raw is not None:
            return raw
        try:
            job = deserialize(data)
        except (ValueError, RecursionError) as exc:
            return undecodable_job(data, f"not JSON: {exc}")
        problem = _job_problem(job, known_jobs)
        if problem is not None:
            return undecodable_job(data, problem)
        job["a"] = [JsonList(arg) if type(arg) is list else arg for arg in job["a"]]
        return job  # type: ignore[no-any-return]

    return deserialize_job
