"""Run one export under tracemalloc and print its row count and peak traced memory, as JSON.

A helper for ``test_export.py``'s flat-memory test, run in a process of its own so that
nothing else the test session allocates is counted:

    python export_peak.py DATABASE_URL TARGET CHUNK_SIZE
"""

from __future__ import annotations

import asyncio
import json
import sys
import tracemalloc
from pathlib import Path

from jobs.export import export_to_file
from worker.config import load_settings
from worker.db.engine import Database
from worker.domain.export import ExportFilter


async def main(url: str, target: Path, chunk_size: int) -> dict[str, int]:
    db = Database.from_settings(load_settings(database_url=url, redis_url="redis://127.0.0.1:6379/15"))
    try:
        # A first export that matches nothing warms the pool, the dialect and the statement cache.
        await export_to_file(db, target, ExportFilter(type="warm-up"), chunk_size=chunk_size)
        tracemalloc.start()
        summary = await export_to_file(db, target, ExportFilter(), chunk_size=chunk_size)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        await db.dispose()
    return {"rows": summary.rows, "peak": peak}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])))))
