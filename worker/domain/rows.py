"""The ``events`` row: the one shape both ingest paths build, the database stores and an export reads.

:class:`EventRow` is that shape and :data:`EVENT_COLUMNS` its columns, in its order (``seq`` and
``txid`` come from the server). The slow path makes a row with :func:`event_row` from a validated
:class:`~worker.protocol.events.CloudEvent`; the fast path (:mod:`worker.domain.wire`) writes the
same dict inline in its loop, declared an :class:`EventRow` so that mypy holds it to this shape (a
call per event would be extra work in the ingest job's hottest loop). ``worker.db.sql.statements``
stores rows in :data:`EVENT_COLUMNS` order (COPY staging and INSERT), and
``worker.domain.export`` takes the columns an export reads from it.

A storage shape, not the wire protocol: producers never see it, so it lives here rather than
in ``worker.protocol``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict

from worker.protocol.events import CloudEvent


class EventRow(TypedDict):
    """One ``events`` row as an ingest writes it (a plain dict at run time)."""

    source: str
    event_id: str
    type: str
    specversion: str
    time: datetime | None
    subject: str | None
    datacontenttype: str | None
    dataschema: str | None
    data: Any
    data_base64: str | None
    extensions: dict[str, Any] | None
    received_at: datetime
    job_id: str | None


#: The columns an ingest writes, in :class:`EventRow`'s order.
EVENT_COLUMNS: tuple[str, ...] = tuple(EventRow.__annotations__)


def event_row(event: CloudEvent, received_at: datetime, job_id: str | None) -> EventRow:
    """The ``events`` row for a validated event."""
    fields = event.__dict__  # one lookup instead of ten attribute reads: a hot loop of the ingest job
    extensions = event.__pydantic_extra__
    return {
        "source": fields["source"],
        "event_id": fields["id"],
        "type": fields["type"],
        "specversion": fields["specversion"],
        "time": fields["time"],
        "subject": fields["subject"],
        "datacontenttype": fields["datacontenttype"],
        "dataschema": fields["dataschema"],
        "data": fields["data"],
        "data_base64": fields["data_base64"],
        "extensions": dict(extensions) if extensions else None,
        "received_at": received_at,
        "job_id": job_id,
    }
