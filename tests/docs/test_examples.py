"""Every runnable example of the README and the documentation site works as written.

Each page runs in a directory of its own, block after block, as a reader would type them: shell
blocks in bash (``set -e``), Python blocks in the project's interpreter (top-level ``await``
allowed, as in ``python -m asyncio``). The environment is a fresh machine's after "Getting
started": ``.venv/bin`` on the ``PATH``, ``DATABASE_URL`` naming a fresh migrated PostgreSQL
database, ``REDIS_URL`` the documented default (``redis://localhost:6379/0``) with arq's default
queue, emptied before and after the page. A block that must not run says why in a comment right
above it (see ``tests/codeblocks.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from codeblocks import PYTHON, Block, blocks

from worker.runtime.tracking import tracking_keys

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts)])
#: What a page may use from a checkout, linked into its directory.
CHECKOUT = ("dev.py", "examples", "bench", "settings.env.example", "pyproject.toml")
DEFAULT_REDIS = "redis://localhost:6379/0"
DEFAULT_QUEUE = "arq:queue"
BLOCK_TIMEOUT_S = 600
#: Runs a Python block as ``python -m asyncio`` would: top-level ``await`` and ``async with`` allowed.
PYTHON_RUNNER = """
import ast, asyncio, sys
source = open(sys.argv[1]).read()
code = compile(source, sys.argv[1], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
result = eval(code, {"__name__": "__main__"})
if asyncio.iscoroutine(result):
    asyncio.run(result)
"""


def _empty_default_queue() -> None:
    client = redis.Redis.from_url(DEFAULT_REDIS)
    try:
        jobs = [b"arq:job:" + job_id for job_id in client.zrange(DEFAULT_QUEUE, 0, -1)]
        client.delete(DEFAULT_QUEUE, *jobs, *tracking_keys(DEFAULT_QUEUE))
    finally:
        client.close()


def _run(block: Block, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = cwd / f"block-{block.line}.{'py' if block.language in PYTHON else 'sh'}"
    script.write_text(block.script())
    if block.language in PYTHON:
        command = [sys.executable, "-c", PYTHON_RUNNER, str(script)]
    else:
        command = ["bash", "-e", "-o", "pipefail", str(script)]
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S, check=False
    )


@pytest.mark.integration
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_examples_run(page: Path, pg_url: str, tmp_path: Path):
    """The page's runnable blocks all succeed, in order, on the real servers."""
    runnable = [block for block in blocks(page) if block.runnable]
    for name in CHECKOUT:
        (tmp_path / name).symlink_to(ROOT / name)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DATABASE_URL": pg_url,
        "REDIS_URL": DEFAULT_REDIS,
    }
    for variable in [v for v in env if v.startswith("EVENTWORKER_") and not v.startswith("EVENTWORKER_TEST")]:
        del env[variable]
    _empty_default_queue()
    try:
        for block in runnable:
            done = _run(block, tmp_path, env)
            assert done.returncode == 0, (
                f"{block.label} ({block.language}) exited {done.returncode}:\n{block.script()}\n"
                f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
            )
    finally:
        _empty_default_queue()


def test_not_run_blocks_say_why():
    """A block marked not to run gives its reason, and every page is found."""
    assert ROOT / "README.md" in PAGES
    for page in PAGES:
        for block in blocks(page):
            if block.not_run is not None:
                assert len(block.not_run) > 10, f"{block.label}: say why it is not run"
