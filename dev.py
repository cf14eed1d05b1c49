#!/usr/bin/env python3
"""One entry point for people and CI: sets up ./.venv on first use, then runs a task.

    python3 dev.py demo      # the demo, on embedded SQLite + in-process Redis unless the URLs are set
    python3 dev.py test      # the whole test suite (needs PostgreSQL and Redis, see README)
    python3 dev.py lint      # ruff, mypy and the import contracts (lint-imports)
    python3 dev.py docs      # build the documentation site strictly into docs/_build/html
    python3 dev.py docs-serve  # serve it on http://127.0.0.1:8000, rebuilt as pages change
    python3 dev.py setup     # only create .venv with everything the tests need

Extra arguments go to the underlying command (e.g. ``python3 dev.py test -k ingest``).
Only the standard library is used here, so it runs on a bare Python 3.11+.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
DOCS = ["docs", "docs/_build/html"]  # the site's sources and where it is built


def _ensure_venv(extras: str) -> None:
    """Create .venv and install the project (with ``extras``) when pyproject.toml changed."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this file must explain itself on an old Python
        sys.exit(f"eventworker needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    stamp = VENV / f".installed-{extras or 'base'}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    if not (BIN / "python").exists():
        print("dev.py: creating .venv", file=sys.stderr)
        venv.create(VENV, with_pip=True)
    target = f".[{extras}]" if extras else "."
    print(f"dev.py: installing {target} into .venv", file=sys.stderr)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True, cwd=ROOT)
    subprocess.run([*pip, "-e", target], check=True, cwd=ROOT)
    stamp.write_text(digest)


def _run(command: list[str]) -> int:
    return subprocess.run(command, cwd=ROOT).returncode


def main(argv: list[str]) -> int:
    task, rest = (argv[0], argv[1:]) if argv else ("help", [])
    if task == "demo":
        _ensure_venv("")
        return _run([str(BIN / "eventworker"), "demo", *rest])
    if task == "setup":
        _ensure_venv("dev")
        return 0
    if task == "test":
        _ensure_venv("dev")
        return _run([str(BIN / "pytest"), *rest])
    if task == "lint":
        _ensure_venv("dev")
        checks = [
            [str(BIN / "ruff"), "check", "."],
            [str(BIN / "ruff"), "format", "--check", "."],
            [str(BIN / "mypy")],
            [str(BIN / "lint-imports"), "--no-cache"],  # the layering contracts in pyproject.toml
        ]
        return max(_run(check) for check in checks)
    if task == "docs":
        _ensure_venv("dev")
        # -W: a warning (a broken link, a page outside every toctree) fails the build. -E: read every
        # page again, as the reference pages are rendered from the code, which Sphinx does not watch.
        return _run([str(BIN / "sphinx-build"), "-E", "-W", "--keep-going", "-q", "-b", "html", *DOCS, *rest])
    if task == "docs-serve":
        _ensure_venv("dev")
        return _run([str(BIN / "sphinx-autobuild"), *DOCS, "--port", "8000", *rest])
    print(__doc__.strip())
    return 0 if task in {"help", "-h", "--help"} else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
