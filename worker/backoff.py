"""The one back-off formula: how long to wait before trying something again.

Used by the job runner (a job's retries, :mod:`worker.runtime.retry`), the producer (enqueue
tries, :mod:`worker.protocol.producer`) and the handler runs (:class:`worker.domain.handlers.RetryTiming`),
each with its own base and cap.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff(attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Delay before the try after ``attempt``: ``base * 2**(attempt-1)`` capped, with equal jitter.

    Half the delay is fixed and half random, so retries spread out but never come at once.
    """
    delay = min(cap, base * 2.0 ** min(max(attempt - 1, 0), 64))  # 2**64: past any cap, no overflow
    return delay / 2 + rand() * delay / 2
