"""bench/serve.py runs at tiny sizes (the HTTP figures of docs/performance.md come from its full run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_the_http_benchmark_runs_and_stores_what_it_sent(tmp_path):
    output = tmp_path / "serve.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "serve.py"),
            "--events",
            "3000",
            "--batch-size",
            "100",
            "--binary-events",
            "300",
            "--latency-seconds",
            "1",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = orjson.loads(output.read_bytes())
    assert result["http_batched_accept"]["events_per_s"] > 0
    assert result["http_binary_accept"]["accepted"] == 300
    assert result["end_to_end"]["stored_rows"] > 2500  # checked against what each way stored
    assert "end to end, HTTP / EventProducer" in done.stdout
