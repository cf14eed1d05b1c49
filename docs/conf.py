"""Sphinx configuration of the documentation site (`python3 dev.py docs` builds it, strictly).

Pages are Markdown (MyST). The reference pages are generated from the code when the site is
built: the settings and metrics by ``_ext/eventworker_docs.py``, the CLI by ``sphinx-click``.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

project = "eventworker"
author = "the eventworker developers"
copyright = "2026, the eventworker developers"

extensions = ["myst_parser", "sphinx_click", "eventworker_docs"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "README.md"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
html_theme = "furo"
html_title = "eventworker"
html_static_path: list[str] = []
# A link to a page or a heading that does not exist is an error (the build runs with -W).
nitpicky = False
suppress_warnings: list[str] = []
