"""The event handlers' public path: ``from worker.handlers import StoredEvent, handler, sync_handler``.

The registry lives in :mod:`worker.domain.handlers`; this name stays because handler modules import it.
"""

from worker.domain.handlers import HandlerRegistry, StoredEvent, handler, registry, sync_handler

__all__ = ["HandlerRegistry", "StoredEvent", "handler", "registry", "sync_handler"]
