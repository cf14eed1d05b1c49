"""Queue figures: arq keeps running jobs in the queue's sorted set, so they are told apart by id."""

from __future__ import annotations

import pytest

from worker.runtime.queuestats import QueueSample, sample_from, sample_queue

NOW_MS = 1_000_000.0


@pytest.mark.parametrize(
    ("total", "due_total", "running_scores", "oldest", "running_ids", "expected"),
    [
        pytest.param(0, 0, [], [], set(), QueueSample("q", 0, 0, 0, 0.0), id="empty"),
        pytest.param(
            3, 2, [], [(b"a", NOW_MS - 4000)], set(), QueueSample("q", 3, 2, 0, 4.0), id="one deferred"
        ),
        pytest.param(
            3,
            3,
            [NOW_MS - 9000],
            [(b"r", NOW_MS - 9000), (b"a", NOW_MS - 1500)],
            {"r"},
            QueueSample("q", 2, 2, 1, 1.5),
            id="the oldest is running",
        ),
        pytest.param(
            1,
            1,
            [NOW_MS - 100],
            [(b"r", NOW_MS - 100)],
            {"r"},
            QueueSample("q", 0, 0, 1, 0.0),
            id="only running",
        ),
        pytest.param(
            0,
            0,
            [None],
            [],
            {"gone"},
            QueueSample("q", 0, 0, 1, 0.0),
            id="running but already out of the set",
        ),
    ],
)
def test_sample_from_the_raw_answers(total, due_total, running_scores, oldest, running_ids, expected):
    """Waiting and due exclude running jobs; the oldest due age is that of the oldest job not running."""
    assert sample_from("q", total, due_total, running_scores, oldest, running_ids, NOW_MS) == expected


async def test_sample_queue_reads_a_real_sorted_set(redis):
    """Due, deferred and running jobs in one set come out counted apart."""
    await redis.zadd(
        "q", {"running": NOW_MS - 5000, "due-1": NOW_MS - 2000, "due-2": NOW_MS, "later": NOW_MS + 60_000}
    )
    sample = await sample_queue(redis, "q", {"running"}, NOW_MS)
    assert sample == QueueSample("q", waiting=3, due=2, in_progress=1, oldest_due_age_s=2.0)
    assert sample.deferred == 1
