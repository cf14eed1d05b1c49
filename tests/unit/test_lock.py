"""The lock files (requirements/*.txt) agree with pyproject.toml, and every install goes through them.

A dependency added to (or changed in) pyproject.toml without `python3 dev.py lock` fails here with a
one-line message naming that command. The checks read the files only: no index is asked.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
RELOCK = "run `python3 dev.py lock` and commit requirements/ with pyproject.toml"


def _load_dev() -> ModuleType:
    """dev.py is a script at the root, not a package module: load it from its path."""
    spec = importlib.util.spec_from_file_location("eventworker_dev_script", ROOT / "dev.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dev = _load_dev()
LOCKS = sorted(dev.LOCK_EXTRAS)


def _pins(lock: str) -> Iterator[tuple[Requirement, list[str]]]:
    """Each pinned requirement of requirements/<lock>.txt with its hashes."""
    text = (ROOT / "requirements" / f"{lock}.txt").read_text()
    for entry in re.split(r"\n(?=\S)", text):  # an entry is a line and its indented continuations
        if entry.startswith("#") or not entry.strip():
            continue
        first = entry.split("\\\n", 1)[0]
        hashes = re.findall(r"--hash=(sha256:[0-9a-f]{64})", entry)
        yield Requirement(first.strip()), hashes


def _pinned_versions(lock: str) -> dict[str, list[tuple[str, Requirement]]]:
    versions: dict[str, list[tuple[str, Requirement]]] = {}
    for requirement, _ in _pins(lock):
        (version,) = (spec.version for spec in requirement.specifier)
        versions.setdefault(canonicalize_name(requirement.name), []).append((version, requirement))
    return versions


def _declared(extras: list[str]) -> list[Requirement]:
    """pyproject.toml's requirements for these extras, self-references (eventworker[docs]) expanded."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = data["project"]
    found = [Requirement(text) for text in [*project["dependencies"], *data["build-system"]["requires"]]]
    seen: set[str] = set()
    pending = list(extras)
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in project["optional-dependencies"][extra]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == canonicalize_name(project["name"]):
                pending.extend(requirement.extras)
            else:
                found.append(requirement)
    return found


@pytest.mark.parametrize("lock", LOCKS)
def test_the_lock_was_made_from_this_pyproject(lock):
    """The inputs digest in the lock's header is that of pyproject.toml's requirements as they are now."""
    problem = dev.lock_problem(lock)
    assert problem is None, problem


def test_the_digest_follows_requirements_not_comments(tmp_path):
    """A new dependency changes what the lock was made from; a reworded comment does not."""
    text = (ROOT / "pyproject.toml").read_text()
    commented = tmp_path / "commented.toml"
    commented.write_text(text.replace("dependencies = [", "dependencies = [  # reworded", 1))
    added = tmp_path / "added.toml"
    added.write_text(text.replace("dependencies = [", 'dependencies = [\n    "six>=1",', 1))
    assert dev.lock_inputs_digest(commented) == dev.lock_inputs_digest()
    assert dev.lock_inputs_digest(added) != dev.lock_inputs_digest()


@pytest.mark.parametrize("lock", LOCKS)
def test_every_declared_requirement_is_pinned_within_its_specifier(lock):
    """Each requirement pyproject.toml gives this lock's extras (and the build backend) has a pin
    that its specifier allows: the lock holds what pyproject.toml asks for."""
    pins = _pinned_versions(lock)
    for requirement in _declared(dev.LOCK_EXTRAS[lock]):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"requirements/{lock}.txt has no pin for {requirement}: {RELOCK}"
        for version, _ in pins[name]:
            assert requirement.specifier.contains(version, prereleases=True), (
                f"requirements/{lock}.txt pins {name}=={version}, outside {requirement}: {RELOCK}"
            )


@pytest.mark.parametrize("lock", LOCKS)
def test_every_pin_is_exact_and_hashed(lock):
    """One version per package (per environment marker), and the sha256 of its files, so that pip's
    --require-hashes installs exactly those files."""
    pins = list(_pins(lock))
    assert len(pins) > 10
    for requirement, hashes in pins:
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{requirement} is not pinned exactly"
        assert hashes, f"{requirement} in requirements/{lock}.txt has no hash: {RELOCK}"


def test_the_runtime_lock_has_the_dev_locks_versions():
    """The image (runtime.txt) runs the versions the tests ran (dev.txt)."""
    dev_pins = _pinned_versions("dev")
    for name, versions in _pinned_versions("runtime").items():
        assert name in dev_pins, f"{name} is in requirements/runtime.txt but not in dev.txt: {RELOCK}"
        assert {v for v, _ in versions} <= {v for v, _ in dev_pins[name]}, f"{name}: {RELOCK}"


def test_this_environment_runs_the_locked_versions():
    """The virtualenv the tests run in was installed from requirements/dev.txt (by `dev.py setup`)."""
    stale = []
    for name, versions in _pinned_versions("dev").items():
        wanted = [version for version, pin in versions if pin.marker is None or pin.marker.evaluate()]
        if not wanted:
            continue  # not for this Python or platform
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed not in wanted:
            stale.append(f"{name} {installed} (locked {wanted[0]})")
    assert not stale, (
        f"this environment is not the lock's ({', '.join(stale)}): rm -rf .venv && python3 dev.py setup"
    )


def test_every_install_goes_through_the_lock():
    """dev.py setup (and so .ci/run) and the Dockerfile install from the lock with hashes required,
    and .dockerignore lets the image's lock file into the build context."""
    for lock in LOCKS:
        first, project = dev.install_commands("python", lock)
        assert first[-3:] == ["--require-hashes", "-r", f"requirements/{lock}.txt"]
        assert {"--no-deps", "--no-build-isolation"} <= set(project)  # nothing beside the lock
    assert "python3 dev.py setup" in (ROOT / ".ci" / "run").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY requirements/runtime.txt requirements/runtime.txt" in dockerfile
    assert re.search(r"pip install [^\n]*--require-hashes [^\n]*-r requirements/runtime\.txt", dockerfile)
    assert re.search(r"pip install [^\n]*--no-deps --no-build-isolation --no-index \.", dockerfile)
    assert "!requirements/runtime.txt" in (ROOT / ".dockerignore").read_text().splitlines()
