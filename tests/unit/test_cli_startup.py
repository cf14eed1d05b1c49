"""`eventworker --help` stays quick: loading the command line loads none of what the commands run.

Every command module is imported to list its commands, so the jobs, the worker's entry, the
operator views, the migrations (alembic) and arq are imported inside the commands that need them.
"""

from __future__ import annotations

import subprocess
import sys

#: Packages and modules the command line must not load before a command runs.
NOT_AT_START = (
    "arq",
    "alembic",
    "prometheus_client",
    "http.server",
    "jobs",
    "worker.main",
    "worker.lifecycle",
    "worker.ops",
    "worker.runtime",
    "worker.db.schema",
    "worker.http",
    "fastapi",
    "uvicorn",
)


def test_the_command_line_loads_no_job_worker_or_alembic():
    code = (
        "import sys, worker.commands.cli\n"
        f"heavy = {NOT_AT_START!r}\n"
        "print(sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') for h in heavy)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.strip() == "[]"
