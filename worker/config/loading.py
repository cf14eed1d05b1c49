"""Reading the settings: from the environment and an env file, unknown variables reported with the
setting they most resemble, one :class:`~worker.errors.ConfigError` for the first bad value, and the
documented example file (``settings.env.example``) rendered from the class."""

from __future__ import annotations

import difflib
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import AliasChoices, ValidationError
from pydantic.fields import FieldInfo

from worker.config.names import DEFAULT_ENV_FILE, ENV_PREFIX, OTHER_VARIABLES, URL_VARIABLES, env_name
from worker.config.settings import Settings
from worker.errors import ConfigError


def setting_variables() -> set[str]:
    """Every variable a setting is read from (upper case), aliases included."""
    names: set[str] = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice).upper() for choice in alias.choices)
        else:
            names.add(env_name(field_name))
    return names


@dataclass(frozen=True, slots=True)
class UnknownVariable:
    """A variable (or an env file's key) that no setting reads, and the setting it most resembles."""

    name: str
    file: str | None
    """The env file that holds it; None for the environment."""
    suggestion: str | None

    def problem(self, outcome: str) -> str:
        """``not a setting (in settings.env), <outcome>; did you mean EVENTWORKER_MAX_JOBS?``"""
        where = "" if self.file is None else f" (in {self.file})"
        closest = f"; did you mean {self.suggestion}?" if self.suggestion else ""
        return f"not a setting{where}, {outcome}{closest}"


def _closest(name: str, known: set[str]) -> str | None:
    """The known variable ``name`` most likely meant; the prefix, which all share, is left out of the
    comparison (it would make any two names look alike)."""
    upper = name.upper()
    if not upper.startswith(ENV_PREFIX) and ENV_PREFIX + upper in known:
        return ENV_PREFIX + upper  # an env file key written without the prefix
    bare: dict[str, str] = {}
    for variable in sorted(known, key=lambda v: (not v.startswith(ENV_PREFIX), v)):
        bare.setdefault(variable.removeprefix(ENV_PREFIX), variable)
    matches = difflib.get_close_matches(upper.removeprefix(ENV_PREFIX), list(bare), n=1, cutoff=0.75)
    return bare[matches[0]] if matches else None


def env_file_path(env_file: str | Path | None = None) -> Path | None:
    """The env file :func:`load_settings` reads: ``env_file``, else ``$EVENTWORKER_ENV_FILE``, else
    ``./settings.env`` when it exists; None when there is none. A file named but missing is a ConfigError."""
    named = env_file or os.environ.get(ENV_PREFIX + "ENV_FILE")
    path = Path(named or DEFAULT_ENV_FILE)
    if named and not path.is_file():
        raise ConfigError(ENV_PREFIX + "ENV_FILE", f"env file {path} does not exist")
    return path if path.is_file() else None


def unknown_variables(env_file: str | Path | None = None) -> list[UnknownVariable]:
    """``EVENTWORKER_*`` variables of the environment, and keys of the env file, that no setting reads.

    Names are compared without regard to case, as the settings read them; :data:`OTHER_VARIABLES` are known.
    """
    known = setting_variables() | set(OTHER_VARIABLES)
    found = [
        UnknownVariable(name, None, _closest(name, known))
        for name in sorted(os.environ)
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known
    ]
    path = env_file_path(env_file)
    if path is not None:
        found += [
            UnknownVariable(key, str(path), _closest(key, known))
            for key in dotenv_values(path)
            if key.upper() not in known
        ]
    return found


def load_settings(env_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Read settings from the environment and an env file; raise one ConfigError on the first bad value.

    The env file is ``env_file``, else ``$EVENTWORKER_ENV_FILE``, else ``./settings.env`` if it exists.
    With ``strict_settings``, a variable no setting reads (:func:`unknown_variables`) is an error too.
    """
    path = env_file_path(env_file)
    try:
        settings = Settings(_env_file=path, **overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "settings"
        message = str(first["msg"]).removeprefix("Value error, ")
        name = env_name(field)
        prefixed = ENV_PREFIX + name
        if name in URL_VARIABLES and name not in os.environ and prefixed in os.environ:
            name = prefixed  # the error names the variable that was actually set
        raise ConfigError(name, message) from None
    if settings.strict_settings:
        unknown = unknown_variables(env_file)
        if unknown:
            typo = unknown[0]
            raise ConfigError(typo.name, typo.problem(f"refused as {ENV_PREFIX}STRICT_SETTINGS is on"))
    return settings


def env_example() -> str:
    """``settings.env.example``: every setting with its description and default."""
    lines = [
        "# eventworker settings, with their defaults.",
        "# Copy to settings.env (read from the working directory, or from $EVENTWORKER_ENV_FILE),",
        "# or set the same names in the environment, which wins over the file.",
        "# DATABASE_URL, DATABASE_READ_URL and REDIS_URL may also be given with the EVENTWORKER_ prefix.",
        "# Generated by `eventworker config --example`.",
        "",
    ]
    for name, field in Settings.model_fields.items():
        lines += [f"# {line}" for line in textwrap.wrap(field.description or "", 100)]
        value = example_value(field)
        lines.append(f"{env_name(name)}={value}" if value else f"# {env_name(name)}=")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def example_value(field: FieldInfo) -> str:
    """A setting's default as its variable would be written; empty when it has none (unset)."""
    default = field.get_default(call_default_factory=True)
    if default is None or default == []:
        return ""
    if isinstance(default, list):
        return ",".join(map(str, default))
    return str(default).lower() if isinstance(default, bool) else str(default)
