"""Event handlers: user code run for each stored event of a type, at least once, outside the core.

A user module registers handlers with decorators::

    from worker.domain.handlers import StoredEvent, handler, sync_handler

    @handler("com.example.order.created")
    async def check_amount(event: StoredEvent, session: AsyncSession) -> None: ...

    @sync_handler("com.example.order.created")
    def legacy_audit(event: StoredEvent, session: Session) -> None: ...  # run through run_sync

and the worker imports it by name from ``EVENTWORKER_HANDLER_MODULES`` (comma-separated
import paths; see :func:`load_handler_modules`).

How runs happen (the outbox, ``handler_runs``): the ingest transaction that stores an event
also inserts one ``pending`` run per handler of its type, so a stored event never lacks its
runs. The ``run_handlers`` job (enqueued after the ingest commits, and the ``sweep_handlers``
cron job every minute in case that enqueue was lost) takes each due run in its own session
and transaction, locks the run's row, calls the handler inside a savepoint of that
transaction and marks the run ``done`` in the same commit: a handler's own writes through
the session it is given commit together with "done", or not at all. Anything else it does
(an HTTP call, a message) may happen twice, so handlers should be idempotent. A failing run is
retried with back-off (:class:`RetryTiming`) and, after ``max_tries``, marked ``failed`` with
its error for ``eventworker handlers list`` and ``eventworker handlers retry``. One handler's
failure touches only its own run: other handlers of the same event, and ingestion, go on.

A handler must not commit, roll back or close the session it is given, nor open another
transaction on the worker's database (on SQLite that would wait for itself). A sync handler
runs on the worker's event loop thread (that is what ``run_sync`` does): while it runs, the
worker's other jobs wait, and the per-call time limit cannot interrupt it. Keep it short.

This module holds the registry, the event handlers receive, the retry timing and module
loading; it does no I/O besides importing the configured modules when asked to.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

from worker.backoff import backoff
from worker.constants import MAX_TYPE_LENGTH
from worker.errors import ConfigError
from worker.protocol.events import CloudEvent

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

    from worker.config import Settings

#: Where :func:`load_handler_modules` reads the modules to import when given none.
MODULES_VARIABLE = "EVENTWORKER_HANDLER_MODULES"
#: ``handler_runs.handler`` is a String(200).
MAX_HANDLER_NAME = 200


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """What a handler receives: the event as stored, with its place in the events table."""

    seq: int
    """The event's ``events.seq``."""
    event: CloudEvent
    """The event, as it was received (extensions included)."""
    received_at: datetime
    """When it was stored (aware UTC)."""


AsyncHandler = Callable[[StoredEvent, "AsyncSession"], Awaitable[object]]
SyncHandler = Callable[[StoredEvent, "Session"], object]
A = TypeVar("A", bound=AsyncHandler)
S = TypeVar("S", bound=SyncHandler)


@dataclass(frozen=True, slots=True)
class Registration:
    """One handler: its unique name (stored in ``handler_runs.handler``), its function, its event types."""

    name: str
    function: AsyncHandler | SyncHandler
    is_sync: bool
    event_types: frozenset[str] = field(default_factory=frozenset)

    async def call(self, event: StoredEvent, session: AsyncSession) -> None:
        """Run the handler on ``event``: awaited, or a sync one through ``session.run_sync``."""
        if self.is_sync:
            await session.run_sync(_call_sync, cast("SyncHandler", self.function), event)
        else:
            await cast("AsyncHandler", self.function)(event, session)


def _call_sync(session: Session, function: SyncHandler, event: StoredEvent) -> None:
    function(event, session)


def _check_type(event_type: str) -> None:
    if not isinstance(event_type, str) or not 0 < len(event_type) <= MAX_TYPE_LENGTH:
        raise ValueError(
            f"event type must be a string of 1 to {MAX_TYPE_LENGTH} characters, got {event_type!r}"
        )


class HandlerRegistry:
    """Handlers by name, and handler names by event type.

    A name is ``module.qualname`` of the function unless given; it identifies the handler's
    runs in the database, so renaming a handler leaves its pending runs to nobody (they stay
    listed as pending). The same function may be registered for several types (stack the
    decorators); two different functions may not share a name.
    """

    def __init__(self) -> None:
        self._by_name: dict[str, Registration] = {}

    def handler(self, event_type: str, *, name: str | None = None) -> Callable[[A], A]:
        """Register ``async def f(event: StoredEvent, session: AsyncSession)`` for ``event_type``."""

        def register(function: A) -> A:
            is_async: bool = inspect.iscoroutinefunction(function)  # a bool: no narrowing of A
            if not is_async:
                raise TypeError(
                    f"@handler needs an async function; register the plain function {function!r} "
                    "with @sync_handler"
                )
            self._add(event_type, name, function, is_sync=False)
            return function

        return register

    def sync_handler(self, event_type: str, *, name: str | None = None) -> Callable[[S], S]:
        """Register ``def f(event: StoredEvent, session: Session)``, run through ``AsyncSession.run_sync``."""

        def register(function: S) -> S:
            if inspect.iscoroutinefunction(function) or not callable(function):
                raise TypeError(f"@sync_handler needs a plain function; register {function!r} with @handler")
            self._add(event_type, name, function, is_sync=True)
            return function

        return register

    def _add(self, event_type: str, name: str | None, function: Any, *, is_sync: bool) -> None:
        _check_type(event_type)
        name = name or f"{function.__module__}.{function.__qualname__}"
        if not 0 < len(name) <= MAX_HANDLER_NAME:
            raise ValueError(f"handler name must be 1 to {MAX_HANDLER_NAME} characters, got {name!r}")
        known = self._by_name.get(name)
        if known is not None and known.function is not function:
            raise ValueError(
                f"another handler is already registered as {name!r}; pass name= to tell them apart"
            )
        types = (known.event_types if known else frozenset()) | {event_type}
        self._by_name[name] = Registration(name, function, is_sync, types)

    def get(self, name: str) -> Registration | None:
        """The handler registered as ``name``."""
        return self._by_name.get(name)

    def names(self) -> list[str]:
        """Every registered handler's name, sorted."""
        return sorted(self._by_name)

    def names_by_type(self) -> dict[str, list[str]]:
        """Handler names for each event type that has handlers, sorted."""
        by_type: dict[str, list[str]] = {}
        for name in self.names():
            for event_type in self._by_name[name].event_types:
                by_type.setdefault(event_type, []).append(name)
        return by_type

    def __len__(self) -> int:
        return len(self._by_name)


#: The registry the decorators below and the worker's jobs use. It is an empty dict until a
#: handler module is imported: no connection, setting or client is made at import.
registry = HandlerRegistry()


def handler(event_type: str, *, name: str | None = None) -> Callable[[A], A]:
    """Register an async handler for ``event_type`` in the worker's registry (``registry.handler``)."""
    return registry.handler(event_type, name=name)


def sync_handler(event_type: str, *, name: str | None = None) -> Callable[[S], S]:
    """Register a sync handler for ``event_type`` in the worker's registry (``registry.sync_handler``)."""
    return registry.sync_handler(event_type, name=name)


def parse_module_list(text: str) -> list[str]:
    """``"a.b, c"`` -> ``["a.b", "c"]``."""
    return [part.strip() for part in text.split(",") if part.strip()]


def load_handler_modules(modules: Iterable[str]) -> list[str]:
    """Import the handler modules (the ``handler_modules`` setting); return their names.

    Importing registers their handlers; importing again does nothing (Python caches modules), so
    this is cheap to call before each job. A module that cannot be imported, or whose handlers
    cannot be registered, raises :class:`~worker.errors.ConfigError` naming the variable.
    Modules are looked up on ``sys.path``: an installed package, or ``PYTHONPATH``.
    """
    names = list(modules)
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise ConfigError(
                MODULES_VARIABLE, f"cannot import handler module {name!r}: {type(exc).__name__}: {exc}"
            ) from exc
    return names


def configured_registry(settings: Settings) -> HandlerRegistry:
    """The worker's registry with the configured handler modules (``handler_modules``) imported."""
    load_handler_modules(settings.handler_modules)
    return registry


#: Retry delays depend on the run through this many jitter buckets (by run id), so that whether
#: a run is due can be decided in SQL without storing its next attempt time.
JITTER_BUCKETS = 4


@dataclass(frozen=True, slots=True)
class RetryTiming:
    """When a failed run is tried again: ``worker.backoff.backoff`` after its last failure.

    The jitter is taken from the run's id (one of :data:`JITTER_BUCKETS` fractions) instead of
    a random draw, so the due time ``updated_at + delay(id, tries)`` is the same whenever it is
    computed: by the job deciding, in SQL, which runs are due, and in Python for the logs.
    """

    max_tries: int
    base: float
    cap: float

    def delay(self, run_id: int, tries: int) -> float:
        """Seconds between the ``tries``-th failure of run ``run_id`` and its next try."""
        bucket = run_id % JITTER_BUCKETS
        return backoff(tries, self.base, self.cap, rand=lambda: bucket_fraction(bucket))

    def wait(self, run_id: int, tries: int) -> float:
        """Seconds a pending run with ``tries`` failures waits after its ``updated_at``.

        None before the first try; the back-off after a failure; and the longest back-off for a
        run with more failures than ``max_tries`` now allows (the setting was lowered): it gets
        one more try, then it is failed.
        """
        if tries <= 0:
            return 0.0
        if tries >= self.max_tries:
            return self.cap
        return self.delay(run_id, tries)


def bucket_fraction(bucket: int) -> float:
    """The jitter fraction (0..1) of a bucket: evenly spread, never 0 or 1."""
    return (bucket + 0.5) / JITTER_BUCKETS


def error_text(exc: BaseException, limit: int = 10_000) -> str:
    """``Type: message`` of a handler's exception, cut to ``limit`` characters."""
    return f"{type(exc).__name__}: {exc}"[:limit]
