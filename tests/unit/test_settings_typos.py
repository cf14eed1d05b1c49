"""A misspelt setting is reported, with the closest name, never silently ignored; strict mode refuses it.

Also: every ``EVENTWORKER_*`` name the project itself mentions (code, tests, docs, CI) is either a
setting or one of :data:`worker.config.OTHER_VARIABLES`, so that list stays the one place naming them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from worker.config import OTHER_VARIABLES, load_settings, setting_variables, unknown_variables
from worker.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
#: Names the tests spell wrong on purpose, and the prefix the docs' tests keep (EVENTWORKER_TEST...).
DELIBERATE = {
    "EVENTWORKER_MAX_JOB",
    "EVENTWORKER_POLDELAY",
    "EVENTWORKER_DATABASE_ULR",
    "EVENTWORKER_WHATEVER_ELSE",
    "EVENTWORKER_RETENTON_DAYS",
    "EVENTWORKER_TEST",
}


@pytest.mark.parametrize(
    ("variable", "closest"),
    [
        ("EVENTWORKER_MAX_JOB", "EVENTWORKER_MAX_JOBS"),
        ("EVENTWORKER_POLDELAY", "EVENTWORKER_POLL_DELAY"),
        ("eventworker_max_trys", "EVENTWORKER_MAX_TRIES"),  # read without regard to case, as settings are
        ("EVENTWORKER_DATABASE_ULR", "EVENTWORKER_DATABASE_URL"),
        ("EVENTWORKER_WHATEVER_ELSE", None),
    ],
)
def test_an_unknown_variable_is_reported_with_the_closest_setting(monkeypatch, variable, closest):
    monkeypatch.setenv(variable, "3")
    [unknown] = unknown_variables()
    assert (unknown.name, unknown.file, unknown.suggestion) == (variable, None, closest)
    load_settings()  # a warning, not an error


def test_settings_and_the_projects_other_variables_are_known(monkeypatch):
    """A setting (either spelling of the URLs) or a variable read elsewhere is never reported."""
    for name in ["DATABASE_URL", "EVENTWORKER_DATABASE_URL", "EVENTWORKER_MAX_JOBS", *OTHER_VARIABLES]:
        monkeypatch.setenv(name, "redis://h/0" if "REDIS" in name else "postgresql://h/db")
    monkeypatch.delenv("EVENTWORKER_ENV_FILE")  # it would name a file that does not exist
    assert unknown_variables() == []


def test_unknown_keys_of_the_env_file_are_reported(tmp_path):
    """A key without the prefix points at the prefixed setting; anything else no setting reads is named."""
    env_file = tmp_path / "settings.env"
    env_file.write_text("MAX_JOBS=3\nEVENTWORKER_MAX_TRIES=2\nDATABASE_URL=postgresql://h/db\nFOO=1\n")
    found = [(u.name, u.file, u.suggestion) for u in unknown_variables(env_file)]
    assert found == [("MAX_JOBS", str(env_file), "EVENTWORKER_MAX_JOBS"), ("FOO", str(env_file), None)]
    assert load_settings(env_file).max_tries == 2


def test_strict_settings_make_a_typo_a_configuration_error(monkeypatch, tmp_path):
    """EVENTWORKER_STRICT_SETTINGS=true, from the environment or the file itself: one ConfigError."""
    monkeypatch.setenv("EVENTWORKER_MAX_JOB", "3")
    monkeypatch.setenv("EVENTWORKER_STRICT_SETTINGS", "true")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert str(raised.value) == (
        "EVENTWORKER_MAX_JOB: not a setting, refused as EVENTWORKER_STRICT_SETTINGS is on;"
        " did you mean EVENTWORKER_MAX_JOBS?"
    )
    monkeypatch.delenv("EVENTWORKER_MAX_JOB")
    monkeypatch.delenv("EVENTWORKER_STRICT_SETTINGS")
    env_file = tmp_path / "strict.env"
    env_file.write_text("EVENTWORKER_STRICT_SETTINGS=true\nEVENTWORKER_RETENTON_DAYS=30\n")
    with pytest.raises(ConfigError, match=r"^EVENTWORKER_RETENTON_DAYS: not a setting \(in .*strict.env\)"):
        load_settings(env_file)


#: Where the project's own files are (docs/_build and caches left out).
SOURCES = ("worker", "jobs", "bench", "tests", "docs", "examples", ".ci")
SKIPPED = {"_build", "__pycache__", ".mypy_cache", ".ruff_cache"}


def _project_files() -> list[Path]:
    files = [path for path in ROOT.iterdir() if path.is_file() and not path.name.startswith(".")]
    for folder in SOURCES:
        files += [
            path
            for path in (ROOT / folder).rglob("*")
            if path.is_file() and not SKIPPED.intersection(path.relative_to(ROOT).parts)
        ]
    return [path for path in files if path.suffix not in {".png", ".sqlite3", ".gz", ".pyc"}]


def test_every_eventworker_variable_the_project_names_is_known():
    """grep the tree: a name that is neither a setting nor in OTHER_VARIABLES belongs in that list."""
    named: dict[str, str] = {}
    for path in _project_files():
        text = path.read_text(errors="replace")
        for variable in re.findall(r"(?<!\w)EVENTWORKER_[A-Z0-9_]*[A-Z0-9]", text):
            named.setdefault(variable, str(path.relative_to(ROOT)))
    known = setting_variables() | set(OTHER_VARIABLES) | DELIBERATE
    assert {name: where for name, where in named.items() if name not in known} == {}
    assert len(named) > 40  # the settings the docs and tests name, at least: the grep found the files
