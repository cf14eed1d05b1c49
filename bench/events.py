"""Synthetic CloudEvents for the benchmarks: realistic shapes, a share of duplicates and invalid inputs.

Pure and deterministic (a seed gives the same events): no I/O. Each event carries about 200
bytes of ``data`` (an order with a line or two), a subject, an RFC 3339 time with microseconds
(40,000 events a second of event time), one of 20 types and 50 sources; one in ten has a
``traceparent`` extension. Duplicates repeat an event sent shortly before (the same batch or a
recent one), as retrying producers do; invalid inputs are of the kinds real traffic has (a
missing id, a time without zone, a bad extension name, a number where an object belongs).

:func:`stored_records` gives the rows eventworker stores for a list of inputs (first of each
identity, valid only), as tuples in :data:`RECORD_COLUMNS` order: what the raw-driver
baselines insert.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from worker.domain.rows import EVENT_COLUMNS

TYPES = [
    f"com.example.{noun}.{verb}"
    for noun in ("order", "cart", "user", "invoice", "shipment")
    for verb in ("created", "updated", "deleted", "viewed")
]
SOURCES = [f"/shop/region-{n:02d}" for n in range(50)]
CURRENCIES = ("EUR", "USD", "GBP", "CHF")
#: Columns of :func:`stored_records`: the ``events`` columns an ingest writes.
RECORD_COLUMNS = EVENT_COLUMNS
_START = datetime(2026, 5, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Mix:
    """What share of the inputs are duplicates and invalid (the rest are new, valid events)."""

    duplicates: float = 0.05
    invalid: float = 0.02


def _data(n: int, rng: random.Random) -> dict[str, Any]:
    amounts = [(rng.randint(1, 5), rng.randint(99, 9999)) for _ in range(rng.randint(1, 2))]
    lines = [
        {"sku": f"SKU-{rng.randrange(100_000):05d}", "qty": qty, "price": price} for qty, price in amounts
    ]
    return {
        "order_id": f"ord-{n:09d}",
        "customer": f"cus-{rng.randrange(1_000_000):07d}",
        "amount": sum(qty * price for qty, price in amounts),
        "currency": rng.choice(CURRENCIES),
        "lines": lines,
        "channel": rng.choice(("web", "app", "store")),
        "ref": f"{rng.getrandbits(96):024x}",
    }


def valid_event(n: int, rng: random.Random, prefix: str = "evt") -> dict[str, Any]:
    """The ``n``-th valid event."""
    # 25 us apart: 40,000 events a second, about the rate they are ingested at here, so the rollup
    # tick finds the few minute buckets live traffic makes. At 7 ms apart (two hours of event time
    # in 25 s of ingestion, a replay) a tick met 136,645 buckets for 485,316 events, 4.2 s of database
    # time, and whether a tick fell inside a run moved the end-to-end ratio by a fifth.
    when = _START + timedelta(microseconds=n * 25 + rng.randrange(25))
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": f"{prefix}-{n:09d}",
        "source": SOURCES[n % len(SOURCES)],
        "type": TYPES[rng.randrange(len(TYPES))],
        "time": when.isoformat().replace("+00:00", "Z"),
        "subject": f"customer/{rng.randrange(10_000):05d}",
        "datacontenttype": "application/json",
        "data": _data(n, rng),
    }
    if n % 10 == 3:
        event["traceparent"] = f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01"
    return event


def invalid_input(n: int, rng: random.Random, prefix: str = "bad") -> Any:
    """An input that is not a storable event, of one of a few common kinds."""
    event = valid_event(n, rng, prefix)
    kind = n % 5
    if kind == 0:
        del event["id"]
    elif kind == 1:
        event["time"] = event["time"].removesuffix("Z")  # no time zone
    elif kind == 2:
        event["Trace-Id"] = "abc"  # extension names are lower-case letters and digits
    elif kind == 3:
        event["specversion"] = "0.3"
    else:
        return n  # not an object at all
    return event


def generate(count: int, mix: Mix = Mix(), seed: int = 42, prefix: str = "evt") -> Iterator[Any]:
    """``count`` inputs: new valid events, with ``mix`` of duplicates and invalid ones spread among them."""
    rng = random.Random(seed)
    recent: deque[dict[str, Any]] = deque(maxlen=2000)
    for n in range(count):
        draw = rng.random()
        if draw < mix.duplicates and recent:
            yield recent[-1 - min(int(rng.expovariate(1 / 300)), len(recent) - 1)]
        elif draw < mix.duplicates + mix.invalid:
            yield invalid_input(n, rng, prefix + "-bad")
        else:
            event = valid_event(n, rng, prefix)
            recent.append(event)
            yield event


def batches(count: int, size: int, mix: Mix = Mix(), seed: int = 42, prefix: str = "evt") -> list[bytes]:
    """The inputs of :func:`generate`, as JSON arrays of ``size`` (the last may be shorter)."""
    out: list[bytes] = []
    chunk: list[Any] = []
    for value in generate(count, mix, seed, prefix):
        chunk.append(value)
        if len(chunk) == size:
            out.append(orjson.dumps(chunk))
            chunk = []
    if chunk:
        out.append(orjson.dumps(chunk))
    return out


#: Keys that are not extensions.
_KNOWN = frozenset(RECORD_COLUMNS) | {"id"}


def _is_storable(value: Any) -> bool:
    # valid_event() makes ids, 1.0, zoned times and lower-case extension names; invalid_input() breaks one.
    return (
        isinstance(value, dict)
        and "id" in value
        and value["specversion"] == "1.0"
        and value["time"].endswith("Z")
        and all(key in _KNOWN or (key.isalnum() and key.islower()) for key in value)
    )


def stored_records(
    batch_json: list[bytes], received_at: datetime, job_id: str = "raw"
) -> list[list[tuple[Any, ...]]]:
    """The ``events`` rows eventworker stores, per batch: valid inputs, the first of each identity."""
    seen: set[tuple[str, str]] = set()
    out = []
    for chunk in batch_json:
        records = []
        for value in orjson.loads(chunk):
            if not _is_storable(value) or (value["source"], value["id"]) in seen:
                continue
            seen.add((value["source"], value["id"]))
            extensions = {k: v for k, v in value.items() if k not in _KNOWN}
            records.append(
                (
                    value["source"],
                    value["id"],
                    value["type"],
                    "1.0",
                    datetime.fromisoformat(value["time"]),
                    value.get("subject"),
                    value.get("datacontenttype"),
                    None,
                    orjson.dumps(value["data"]).decode(),
                    None,
                    orjson.dumps(extensions).decode() if extensions else None,
                    received_at,
                    job_id,
                )
            )
        out.append(records)
    return out
