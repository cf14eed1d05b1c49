"""``event_stats``: the event statistics report over the last ``window`` (``"15m"``, ``"1h"``, ``"7d"``...).

The queries fan out over the worker's pool (see :mod:`worker.domain.report`); the job returns the
report in its JSON form and logs one summary line. A window that does not parse is a
permanent failure: it is recorded at once, not retried.
"""

from __future__ import annotations

from typing import Any

from worker.domain.report import Window, build_report, to_json
from worker.logging import get_logger
from worker.runtime.context import WorkerContext
from worker.runtime.jobrunner import job

log = get_logger("eventworker.stats")


@job
async def event_stats(ctx: WorkerContext, window: str = "1h") -> dict[str, Any]:
    """Build the report over the last ``window``; return it as JSON-ready data."""
    report = await build_report(ctx["db"], Window.last(window))
    slowest, slowest_ms = report.timing.slowest
    log.info(
        "stats.report",
        window=report.window.label,
        events=report.events,
        dead_letters=sum(n for _, n in report.dead_letters),
        wall_ms=round(report.timing.wall_ms, 2),
        slowest_query=slowest,
        slowest_ms=round(slowest_ms, 2),
    )
    return to_json(report)
