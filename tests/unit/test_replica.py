"""The read replica's lag as status shows it: WAL positions, the line in the text, the verdict."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from worker.db.replica import ReplicaLag, lsn_bytes
from worker.ops.status import Status, problems
from worker.ops.status_text import to_json, to_text

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("lsn", "position"), [("0/0", 0), ("0/16B3748", 0x16B3748), ("16/B374D848", (0x16 << 32) + 0xB374D848)]
)
def test_a_wal_position_reads_as_bytes(lsn, position):
    """``pg_lsn`` text is two hex halves of a 64-bit byte position."""
    assert lsn_bytes(lsn) == position


def _status(replica: ReplicaLag | None) -> Status:
    return Status(generated_at=NOW, queue_name="q", replica=replica)


def test_status_shows_the_lag_of_a_replica_it_read():
    """One line: seconds and bytes behind, and that the database sections came from the replica."""
    lines = to_text(_status(ReplicaLag(standby=True, seconds=2.5, bytes_behind=123456)))
    assert "read replica: 2.5s behind (123,456 bytes of WAL); read from it" in lines
    assert not [p for p in problems(_status(ReplicaLag(True, 2.5, 123456))) if "replica" in p]


def test_a_bypassed_replica_is_a_problem_saying_why():
    """Reads that went to the primary instead are named first, with the reason."""
    lag = ReplicaLag(True, 45.0, None).bypassed(
        "45.0 s behind, more than EVENTWORKER_READ_REPLICA_MAX_LAG=30"
    )
    status = _status(lag)
    assert "read replica bypassed, read from the primary: 45.0 s behind" in problems(status)[-1]
    assert (
        "read replica: 45.0s behind (? bytes of WAL); bypassed, read from the primary (45.0 s"
        in "\n".join(to_text(status))
    )
    assert to_json(status)["replica"] == {
        "standby": True,
        "seconds": 45.0,
        "bytes_behind": None,
        "used": False,
        "reason": "45.0 s behind, more than EVENTWORKER_READ_REPLICA_MAX_LAG=30",
    }


def test_without_a_read_url_status_says_nothing_of_replicas():
    """No DATABASE_READ_URL: no line, and null in the JSON."""
    status = _status(None)
    assert not [line for line in to_text(status) if "replica" in line]
    assert to_json(status)["replica"] is None
