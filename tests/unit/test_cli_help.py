"""Every command's --help ends with examples of it, and the root's with how to turn on shell completion."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from worker.commands.cli import main


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name)


@pytest.mark.parametrize("path", list(_commands(main)), ids=lambda path: " ".join(path) or "eventworker")
def test_every_command_help_gives_an_example(path):
    """`eventworker ... --help` ends with an Examples: section whose lines run that very command."""
    result = CliRunner().invoke(main, [*path, "--help"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "\n  Examples:\n" in result.output, result.output
    examples = result.output.split("\n  Examples:\n", 1)[1].splitlines()
    assert examples, result.output
    runs = " ".join(["eventworker", *path])
    assert any(runs in line for line in examples), examples


def test_the_root_help_says_how_to_turn_on_completion():
    """The completion line names click's variable for this program."""
    output = CliRunner().invoke(main, ["--help"]).output
    assert 'eval "$(_EVENTWORKER_COMPLETE=bash_source eventworker)"' in output
