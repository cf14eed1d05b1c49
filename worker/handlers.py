"""The event handlers' public path: ``from worker.handlers import StoredEvent, handler, sync_handler``.

The registry lives in :mod:`worker.domain.handlers`; this name stays because handler modules import it.
"""

from typing import Any

from worker.domain import handlers as _home
from worker.domain.handlers import HandlerRegistry, StoredEvent, handler, sync_handler

__all__ = ["HandlerRegistry", "StoredEvent", "handler", "sync_handler"]  # and ``registry``, below


def __getattr__(name: str) -> Any:
    # ``registry`` is looked up each time, not copied at import: tests (and a user's) may swap the
    # worker's registry for a fresh one, and a copy would keep pointing at the old.
    if name == "registry":
        return _home.registry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
