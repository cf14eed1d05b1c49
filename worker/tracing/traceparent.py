"""W3C Trace Context values as they travel with events and requests: read, checked, written back.

Pure: no OpenTelemetry here, so the rules for what counts as a trace context are tested on their own
(``tests/unit/test_traceparent.py``). A ``traceparent`` comes from outside (an event's attribute of the
CloudEvents Distributed Tracing extension, a request's header), so anything may be in it: a value that
is not exactly what the specification allows (https://www.w3.org/TR/trace-context/) reads as None,
never as an error. A trace attribute is optional: an event is never refused for it and a job never
fails on it; a bad one is only not followed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

#: Longer values are not read at all: a valid ``traceparent`` of version 00 has 55 characters, and one
#: of a later version is that and a few more fields.
MAX_TRACEPARENT: Final = 512
#: The specification asks to pass on at least 512 characters of ``tracestate``; longer ones are dropped.
MAX_TRACESTATE: Final = 512
#: List members a ``tracestate`` may hold.
MAX_TRACESTATE_MEMBERS: Final = 32

#: version "-" trace-id "-" parent-id "-" trace-flags, lower-case hex, with optional spaces or tabs
#: around (a header's optional whitespace); a version after 00 may add fields after a "-".
_TRACEPARENT = re.compile(
    r"[ \t]*(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})-(?P<flags>[0-9a-f]{2})"
    r"(?P<rest>-[^ \t]*)?[ \t]*"
)
_KEY = re.compile(
    r"[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}", re.ASCII
)
_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]", re.ASCII)
#: Trace flags: bit 0 says the caller sampled (recorded) the trace.
SAMPLED: Final = 0x01


@dataclass(frozen=True, slots=True)
class TraceParent:
    """A valid ``traceparent``: whose span (trace and span id) a message or request came from."""

    trace_id: int
    span_id: int
    flags: int

    @property
    def sampled(self) -> bool:
        """Whether the caller recorded its trace (a link to an unrecorded one leads nowhere)."""
        return bool(self.flags & SAMPLED)

    def header(self) -> str:
        """The value as version 00 writes it."""
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-{self.flags:02x}"


def parse_traceparent(value: object) -> TraceParent | None:
    """The trace context ``value`` names, or None if it is not a valid ``traceparent``.

    Invalid: anything but a string, longer than :data:`MAX_TRACEPARENT`, upper-case hex, version
    ``ff``, an all-zero trace or span id, version 00 with anything after its flags, a later
    version whose extra part does not start with ``-``.
    """
    if type(value) is not str or len(value) > MAX_TRACEPARENT:
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, rest = match["version"], match["rest"]
    if version == "ff" or (version == "00" and rest is not None):
        return None
    trace_id, span_id = int(match["trace"], 16), int(match["span"], 16)
    if not trace_id or not span_id:
        return None
    # A later version keeps the fields this one knows; its flags are read as version 00's, as the
    # specification says, but only the sampled bit is kept.
    flags = int(match["flags"], 16)
    return TraceParent(trace_id, span_id, flags if version == "00" else flags & SAMPLED)


def parse_tracestate(value: object) -> list[tuple[str, str]] | None:
    """The ``(key, value)`` members of a ``tracestate``, in order; None if it is not a valid one.

    A ``tracestate`` that breaks any rule is dropped whole, as the specification says: too long,
    more than :data:`MAX_TRACESTATE_MEMBERS` members, a bad key or value, a key given twice.
    Empty members (``a=1,,b=2``) are allowed and skipped.
    """
    if type(value) is not str or len(value) > MAX_TRACESTATE:
        return None
    members: list[tuple[str, str]] = []
    for member in value.split(","):
        member = member.strip(" \t")
        if not member:
            continue
        key, equals, item = member.partition("=")
        if not equals or _KEY.fullmatch(key) is None or _VALUE.fullmatch(item) is None:
            return None
        members.append((key, item))
    if len(members) > MAX_TRACESTATE_MEMBERS or len({key for key, _ in members}) != len(members):
        return None
    return members


def distinct_parents(values: Iterable[object]) -> list[tuple[TraceParent, int]]:
    """The valid trace contexts among ``values`` (each event's ``traceparent``), first seen first, each
    with how many values named it. A batch from one producer call usually names one context 500 times:
    each distinct value is read once."""
    counts: dict[object, int] = {}
    for value in values:
        if type(value) is str:
            counts[value] = counts.get(value, 0) + 1
    found: dict[TraceParent, int] = {}
    for value, count in counts.items():
        parent = parse_traceparent(value)
        if parent is not None:
            # Spellings that differ only in whitespace or in a later version's extra fields are one context.
            key = TraceParent(parent.trace_id, parent.span_id, parent.flags)
            found[key] = found.get(key, 0) + count
    return list(found.items())


def choose_links(
    parents: list[tuple[TraceParent, int]], limit: int
) -> tuple[list[tuple[TraceParent, int]], int]:
    """Which of a batch's trace contexts a span links to when it may keep only ``limit`` links, and how
    many are left out.

    The sampled ones first (a link to a trace nobody recorded leads nowhere), each group in the
    order the batch named them.
    """
    if len(parents) <= limit:
        return parents, 0
    ordered = [p for p in parents if p[0].sampled] + [p for p in parents if not p[0].sampled]
    kept = ordered[: max(limit, 0)]
    return kept, len(parents) - len(kept)
