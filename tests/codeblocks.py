"""The runnable examples of a Markdown page (README, docs site): its shell and Python blocks.

A block is run unless the line right above its opening fence is an HTML comment saying why not,
``<!-- not run: docker compose needs a container engine -->`` (invisible on GitHub and on the site).
Blocks in other languages (``text``, ``toml``, none at all: program output, file contents) are shown,
not run. In a ``console`` block only the lines after a ``$ `` prompt are commands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

#: Languages whose blocks are commands for a shell, and Python code.
SHELL = frozenset({"sh", "bash", "shell", "console"})
PYTHON = frozenset({"python", "py"})
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_NOT_RUN = re.compile(r"^\s*<!--\s*not run:\s*(?P<reason>.+?)\s*-->\s*$")


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced code block of a page."""

    path: Path
    line: int  # of the opening fence, from 1
    language: str
    code: str
    not_run: str | None  # the reason it is not run, when the page gives one

    @property
    def runnable(self) -> bool:
        return self.not_run is None and self.language in SHELL | PYTHON

    @property
    def label(self) -> str:
        return f"{self.path.name}:{self.line}"

    def script(self) -> str:
        """The code to run: for a console block, only the commands after its prompts."""
        if self.language != "console":
            return self.code
        return "\n".join(line[2:] for line in self.code.splitlines() if line.startswith("$ "))


def blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path``, in order (MyST directive blocks such as ```` ```{toctree} ```` too)."""
    lines = path.read_text().splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        fence, info = match["fence"], match["info"].strip()
        above = lines[index - 1] if index else ""
        reason = _NOT_RUN.match(above)
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        body = "\n".join(line[len(match["indent"]) :] for line in lines[index + 1 : end])
        language = info.split()[0].lower() if info else ""
        found.append(Block(path, index + 1, language, body + "\n", reason["reason"] if reason else None))
        index = end + 1
    return found
