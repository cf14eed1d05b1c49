"""Which heartbeats make `eventworker health` fail: missing, stale, of one worker or of this host's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from worker.ops.health import heartbeat_problems
from worker.runtime.tracking import WorkerBeat

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def beat(worker_id: str, age_s: float, started_min_ago: float = 60) -> WorkerBeat:
    host, _, pid = worker_id.rpartition(":")
    return WorkerBeat(
        worker_id=worker_id,
        host=host,
        pid=int(pid),
        started_at=NOW - timedelta(minutes=started_min_ago),
        last_heartbeat=NOW - timedelta(seconds=age_s),
        interval_s=10,
        jobs_running=0,
    )


LIVE_A = beat("a:1", 2)
STALE_B = beat("b:2", 45)
OLD_CRASHED_B = beat("b:1", 600, started_min_ago=120)
NEW_B = beat("b:9", 1, started_min_ago=5)
STALE_NEW_B = beat("b:9", 60, started_min_ago=5)


@pytest.mark.parametrize(
    ("beats", "options", "expected"),
    [
        pytest.param(
            [],
            {},
            ["no worker heartbeat in Redis for queue q (written every 10s by a running worker)"],
            id="none",
        ),
        pytest.param([LIVE_A], {}, [], id="one live"),
        pytest.param(
            [LIVE_A, STALE_B],
            {},
            ["worker b:2: last heartbeat 45s ago (stale after 30s)"],
            id="one of two stale",
        ),
        pytest.param([LIVE_A, STALE_B], {"worker_id": "a:1"}, [], id="the asked worker is live"),
        pytest.param(
            [LIVE_A, STALE_B],
            {"worker_id": "b:2"},
            ["worker b:2: last heartbeat 45s ago (stale after 30s)"],
            id="the asked worker is stale",
        ),
        pytest.param(
            [LIVE_A],
            {"worker_id": "c:3"},
            ["no heartbeat from worker c:3 in Redis for queue q"],
            id="the asked worker is unknown",
        ),
        pytest.param(
            [OLD_CRASHED_B, NEW_B, STALE_B],
            {"host": "a"},
            ["no heartbeat from a worker on host a in Redis for queue q"],
            id="no worker on this host",
        ),
        pytest.param(
            [LIVE_A, OLD_CRASHED_B, NEW_B], {"host": "b"}, [], id="this host's newest worker is live"
        ),
        pytest.param(
            [LIVE_A, OLD_CRASHED_B, STALE_NEW_B],
            {"host": "b"},
            ["worker b:9: last heartbeat 60s ago (stale after 30s)"],
            id="this host's newest worker is stale",
        ),
    ],
)
def test_heartbeat_problems(beats, options, expected):
    """Each problem names the worker and how late it is; healthy gives none."""
    assert heartbeat_problems(beats, NOW, queue="q", interval_s=10, **options) == expected
