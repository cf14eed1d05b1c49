#!/usr/bin/env python3
"""One entry point for people and CI: sets up ./.venv on first use, then runs a task.

    python3 dev.py demo      # the demo, on embedded SQLite + in-process Redis unless the URLs are set
    python3 dev.py test      # the whole test suite (needs PostgreSQL, Redis, MariaDB: docs/testing.md)
    python3 dev.py lint      # ruff, mypy and the import contracts (lint-imports)
    python3 dev.py docs      # build the documentation site strictly into docs/_build/html
    python3 dev.py docs-serve  # serve it on http://127.0.0.1:8000, rebuilt as pages change
    python3 dev.py setup     # only create .venv with everything the tests need
    python3 dev.py lock      # refresh requirements/*.txt after a change to pyproject.toml's dependencies
    python3 dev.py lock --upgrade  # ... and move every pin to the newest release its specifier allows

Extra arguments go to the underlying command (e.g. ``python3 dev.py test -k ingest``).
Only the standard library is used here, so it runs on a bare Python 3.11+. Installs go through the
lock files in requirements/ (see LOCKS below).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
DOCS = ["docs", "docs/_build/html"]  # the site's sources and where it is built

# Every install goes through a lock file in requirements/: each package pinned to one version and the
# sha256 of each of its files, so two installs a month apart run the same code. dev.txt is what the
# tests, lint and docs need (every extra); runtime.txt is the image's set (the psycopg, mysql, http,
# otel extras), pinned to the same versions. Both also pin the build backend (setuptools), and the project
# itself is installed from the tree without its dependencies and without build isolation, so nothing
# outside the lock is fetched. pip itself, the installer, is the one the Python ships.
#
# Why requirements files compiled by uv rather than uv.lock or pip-tools: installing needs nothing but
# pip (this file and the Dockerfile run on a bare Python, and `pip install --require-hashes` checks
# every file), while `uv pip compile --universal` resolves once for every Python from 3.11 and every
# platform (pip-compile resolves only for the interpreter and platform it runs on, so a lock made on
# Linux 3.11 could lack a package another Python or a Mac needs). uv is needed only to refresh the
# lock, and `dev.py lock` installs its pinned version in a throwaway virtualenv.
LOCKS = ROOT / "requirements"
#: Each lock file and the extras of pyproject.toml it holds. runtime.txt is resolved under dev.txt's
#: pins (a constraint), so a package both hold has the same version in both.
LOCK_EXTRAS = {"dev": ["dev"], "runtime": ["psycopg", "mysql", "http", "otel"]}
#: The uv that `dev.py lock` runs: a fixed version, so that the same inputs give the same lock.
UV_VERSION = "0.13.8"
INPUTS_LINE = "# inputs-sha256: "


def lock_inputs_digest(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """The sha256 of what a lock is computed from: pyproject.toml's requirements, not its comments.

    A lock file records it in its header; a different value means pyproject.toml changed since.
    """
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    project = data["project"]
    inputs = {
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
        "build-system": data.get("build-system", {}).get("requires", []),
        "lock-extras": LOCK_EXTRAS,
        "uv": UV_VERSION,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def lock_problem(name: str) -> str | None:
    """Why requirements/<name>.txt cannot be installed as it is, in one line; None when it can."""
    path = LOCKS / f"{name}.txt"
    if not path.exists():
        return f"{path.relative_to(ROOT)} is missing: run `python3 dev.py lock`"
    recorded = next((line for line in path.read_text().splitlines() if line.startswith(INPUTS_LINE)), "")
    if recorded.removeprefix(INPUTS_LINE) != lock_inputs_digest():
        return (
            f"{path.relative_to(ROOT)} does not match pyproject.toml's dependencies: "
            "run `python3 dev.py lock` (and commit requirements/ with pyproject.toml)"
        )
    return None


def _ensure_venv(lock: str) -> None:
    """Create .venv and install requirements/<lock>.txt and the project when either changed."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this file must explain itself on an old Python
        sys.exit(f"eventworker needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    problem = lock_problem(lock)
    if problem:
        sys.exit(f"dev.py: {problem}")
    lock_file = LOCKS / f"{lock}.txt"
    stamp = VENV / f".installed-{lock}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + lock_file.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    if not (BIN / "python").exists():
        print("dev.py: creating .venv", file=sys.stderr)
        venv.create(VENV, with_pip=True)
    print(f"dev.py: installing {lock_file.relative_to(ROOT)} and the project into .venv", file=sys.stderr)
    for command in install_commands(str(BIN / "python"), lock):
        subprocess.run(command, check=True, cwd=ROOT)
    stamp.write_text(digest)


def install_commands(python: str, lock: str) -> list[list[str]]:
    """The pip commands that install requirements/<lock>.txt, then the project itself, into ``python``'s
    environment: the locked files only (each checked against its hash), then the project from the tree
    (editable) with no dependency and no build step fetched."""
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    return [
        [*pip, "--require-hashes", "-r", f"requirements/{lock}.txt"],
        [*pip, "--no-deps", "--no-build-isolation", "-e", "."],
    ]


def lock(extra_args: list[str]) -> int:
    """Compute requirements/*.txt from pyproject.toml with a pinned uv (in a throwaway virtualenv).

    An existing lock's pins are kept where they still fit (uv reads the output file as preferences),
    so adding one dependency changes only what it brings; ``--upgrade`` (or ``--upgrade-package
    NAME``) moves pins forward.
    """
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    requires_python = data["project"]["requires-python"]
    if not requires_python.startswith(">="):
        sys.exit(f"dev.py lock: requires-python {requires_python!r} is not of the form '>=X.Y'")
    # The build backend goes in the lock too: the project is installed without build isolation.
    build_requires = "\n".join(data["build-system"]["requires"]) + "\n"
    LOCKS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="eventworker-lock-") as tool:
        venv.create(tool, with_pip=True)
        tool_bin = Path(tool) / ("Scripts" if os.name == "nt" else "bin")
        print(f"dev.py lock: installing uv {UV_VERSION} into a throwaway virtualenv", file=sys.stderr)
        subprocess.run(
            [
                str(tool_bin / "python"),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--only-binary=:all:",
                f"uv=={UV_VERSION}",
            ],
            check=True,
        )
        for name, extras in LOCK_EXTRAS.items():
            output = LOCKS / f"{name}.txt"
            constraints = [] if name == "dev" else ["--constraint", "requirements/dev.txt"]
            command = [
                str(tool_bin / "uv"), "pip", "compile", "pyproject.toml", "-",  # "-": the build backend
                *(f"--extra={extra}" for extra in extras), *constraints,
                "--universal", f"--python-version={requires_python.removeprefix('>=')}",
                "--generate-hashes", "--no-header", "--quiet", f"--output-file={output.relative_to(ROOT)}",
                *extra_args,
            ]  # fmt: skip
            print(f"dev.py lock: {output.relative_to(ROOT)}", file=sys.stderr)
            compiled = subprocess.run(command, input=build_requires, text=True, cwd=ROOT)
            if compiled.returncode:
                return compiled.returncode
            header = [
                "# Generated by `python3 dev.py lock` from pyproject.toml: do not edit by hand.",
                f"# Extras: {', '.join(extras)}; for every Python {requires_python} and every platform.",
                "# A pin without `# via` is the build backend (pyproject.toml's build-system requires).",
                f"{INPUTS_LINE}{lock_inputs_digest()}",
            ]
            output.write_text("\n".join(header) + "\n" + output.read_text())
    return 0


def _run(command: list[str]) -> int:
    return subprocess.run(command, cwd=ROOT).returncode


def main(argv: list[str]) -> int:
    task, rest = (argv[0], argv[1:]) if argv else ("help", [])
    if task == "demo":
        _ensure_venv("runtime")
        return _run([str(BIN / "eventworker"), "demo", *rest])
    if task == "lock":
        return lock(rest)
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
