"""The benchmark suite's smoke run: every section runs end to end on tiny sizes, so bench/ cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PG_URL

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = {
    "ingest",
    "job",
    "export",
    "report",
    "overhead",
    "pgbouncer",
    "durability",
    "tracing",
    "partitions",
    "peers",
}


@pytest.mark.timeout(600)
def test_smoke_run_writes_every_section(tmp_path):
    """`python bench/run.py --smoke` exits 0 and its JSON has a result and table rows for every section."""
    output = tmp_path / "suite.json"
    completed = subprocess.run(
        [sys.executable, "bench/run.py", "--smoke", f"--output={output}", f"--pg-url={PG_URL}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=580,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    document = json.loads(output.read_text())
    assert document["errors"] == {}
    assert set(document["sections"]) == SECTIONS
    assert {row["section"].split()[1] for row in document["table"]} == SECTIONS
    assert document["sections"]["ingest"]["end_to_end"]["stored_rows"] > 0
    assert len(document["load_before"]) == 3
