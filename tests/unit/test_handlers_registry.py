"""The handler registry, module loading, retry timing and the event handlers receive: no database."""

from __future__ import annotations

import sys
import textwrap
from datetime import UTC, datetime

import pytest

from worker.config import load_settings
from worker.db.models import Event
from worker.db.sql.handler_sql import stored_event
from worker.domain import handlers
from worker.domain.handlers import (
    JITTER_BUCKETS,
    HandlerRegistry,
    RetryTiming,
    bucket_fraction,
    load_handler_modules,
    parse_module_list,
)
from worker.errors import ConfigError


async def on_order(event, session) -> None:
    """An async handler."""


def legacy(event, session) -> None:
    """A sync handler."""


def test_a_handler_is_registered_under_its_module_and_name():
    """The default name is module.qualname; the decorator hands the function back unchanged."""
    registry = HandlerRegistry()
    assert registry.handler("order.created")(on_order) is on_order
    registration = registry.get(f"{__name__}.on_order")
    assert registration is not None
    assert (registration.function, registration.is_sync, registration.event_types) == (
        on_order,
        False,
        frozenset({"order.created"}),
    )
    assert registry.names_by_type() == {"order.created": [f"{__name__}.on_order"]}


def test_handlers_by_type_are_sorted_and_one_function_may_serve_several_types():
    """Stacked decorators add types to one handler; each type lists its handlers by name."""
    registry = HandlerRegistry()
    registry.handler("order.created", name="b")(on_order)
    registry.handler("order.paid", name="b")(on_order)
    registry.sync_handler("order.created", name="a")(legacy)
    assert registry.names_by_type() == {"order.created": ["a", "b"], "order.paid": ["b"]}
    assert registry.names() == ["a", "b"]
    assert len(registry) == 2


def test_two_functions_cannot_share_a_name():
    """A name identifies a handler's runs in the database: a second function under it is refused."""
    registry = HandlerRegistry()
    registry.handler("order.created", name="audit")(on_order)

    async def other(event, session) -> None: ...

    with pytest.raises(ValueError, match="already registered as 'audit'; pass name="):
        registry.handler("order.created", name="audit")(other)


@pytest.mark.parametrize(
    ("decorate", "function", "message"),
    [
        (HandlerRegistry.handler, legacy, "@handler needs an async function"),
        (HandlerRegistry.sync_handler, on_order, "@sync_handler needs a plain function"),
    ],
)
def test_the_decorator_must_match_the_kind_of_function(decorate, function, message):
    """Async handlers with @handler, sync ones with @sync_handler: a mix-up fails at import, not when run."""
    with pytest.raises(TypeError, match=message):
        decorate(HandlerRegistry(), "order.created")(function)


@pytest.mark.parametrize(
    ("event_type", "name", "message"),
    [
        ("", None, "event type must be a string of 1 to 255"),
        ("x" * 256, None, "event type must be a string of 1 to 255"),
        ("order.created", "n" * 201, "handler name must be 1 to 200"),
    ],
)
def test_types_and_names_must_fit_their_columns(event_type, name, message):
    """An event type as long as the events table allows; a name as long as handler_runs.handler allows."""
    with pytest.raises(ValueError, match=message):
        HandlerRegistry().handler(event_type, name=name)(on_order)


def test_the_module_decorators_register_in_the_worker_registry(monkeypatch):
    """``handler`` and ``sync_handler`` use whatever ``worker.domain.handlers.registry`` is when applied."""
    fresh = HandlerRegistry()
    monkeypatch.setattr(handlers, "registry", fresh)
    handlers.handler("order.created", name="h")(on_order)
    handlers.sync_handler("order.created", name="s")(legacy)
    assert fresh.names_by_type() == {"order.created": ["h", "s"]}
    assert handlers.configured_registry(load_settings()) is fresh


@pytest.mark.parametrize(
    ("text", "modules"),
    [("", []), ("a", ["a"]), (" a.b , c ,, ", ["a.b", "c"])],
)
def test_the_module_list_is_comma_separated(text, modules):
    """Spaces and empty entries are ignored."""
    assert parse_module_list(text) == modules


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    """A directory on sys.path for handler modules written by the test, forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(handlers, "registry", HandlerRegistry())
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_modules_named_in_the_environment_are_imported_and_register(module_dir, monkeypatch):
    """EVENTWORKER_HANDLER_MODULES names modules by import path; importing them registers their handlers."""
    (module_dir / "shop_handlers.py").write_text(
        textwrap.dedent(
            """
            from worker.domain.handlers import handler

            @handler("order.created", name="shop")
            async def shop(event, session):
                pass
            """
        )
    )
    monkeypatch.setenv("EVENTWORKER_HANDLER_MODULES", "shop_handlers")
    settings = load_settings()
    assert settings.handler_modules == ["shop_handlers"]
    assert load_handler_modules(settings.handler_modules) == ["shop_handlers"]
    assert handlers.configured_registry(settings).names() == ["shop"]
    assert load_handler_modules(settings.handler_modules) == ["shop_handlers"]  # cached, registered once
    assert handlers.registry.names() == ["shop"]


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        (None, "ModuleNotFoundError: No module named 'missing_handlers'"),
        ("raise RuntimeError('no config')", "RuntimeError: no config"),
        (
            "from worker.domain.handlers import handler\nhandler('t')(lambda event, session: None)",
            "TypeError: @handler needs an async function",
        ),
    ],
)
def test_a_module_that_cannot_be_loaded_is_a_configuration_error(module_dir, source, problem):
    """The error names the variable and the module, and says what went wrong."""
    if source is not None:
        (module_dir / "missing_handlers.py").write_text(source)
    with pytest.raises(ConfigError) as caught:
        load_handler_modules(["missing_handlers"])
    assert caught.value.setting == "EVENTWORKER_HANDLER_MODULES"
    assert str(caught.value).startswith(
        f"EVENTWORKER_HANDLER_MODULES: cannot import handler module 'missing_handlers': {problem}"
    )


@pytest.mark.parametrize("tries", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("run_id", range(8))
def test_a_retry_waits_the_back_off_with_jitter_from_the_run_id(run_id, tries):
    """base * 2**(tries-1), capped; half fixed and half jitter, the jitter the same each time for a run."""
    timing = RetryTiming(max_tries=5, base=1.0, cap=10.0)
    full = min(10.0, 2.0 ** (tries - 1))
    delay = timing.delay(run_id, tries)
    assert full / 2 < delay < full
    assert delay == full / 2 + bucket_fraction(run_id % JITTER_BUCKETS) * full / 2
    assert timing.delay(run_id, tries) == delay


@pytest.mark.parametrize(
    ("tries", "wait"),
    [(0, 0.0), (1, 0.5 + 0.5 * bucket_fraction(1)), (2, 1 + bucket_fraction(1)), (3, 10.0), (7, 10.0)],
)
def test_a_pending_run_waits_nothing_then_its_back_off_then_the_longest(tries, wait):
    """Untried: due at once; after failures: the back-off; beyond max_tries (lowered since): the cap."""
    assert RetryTiming(max_tries=3, base=1.0, cap=10.0).wait(run_id=5, tries=tries) == pytest.approx(wait)


def test_jitter_buckets_spread_retries():
    """Runs failing together come back at JITTER_BUCKETS different times, not at once."""
    timing = RetryTiming(max_tries=5, base=1.0, cap=60.0)
    assert len({timing.delay(run_id, 3) for run_id in range(100)}) == JITTER_BUCKETS


def test_a_handler_receives_the_event_as_it_was_sent():
    """The stored row becomes the CloudEvent again, extensions and time included, with seq and received_at."""
    received = datetime(2026, 5, 1, 10, 0, 1, tzinfo=UTC)
    row = Event(
        seq=42,
        source="/shop",
        event_id="order-1",
        type="order.created",
        specversion="1.0",
        time=datetime(2026, 5, 1, 10, 0, tzinfo=UTC),
        subject="order/1",
        data={"amount": 12.5},
        extensions={"traceparent": "00-abc", "priority": 3},
        received_at=received,
    )
    stored = stored_event(row)
    assert (stored.seq, stored.received_at) == (42, received)
    assert stored.event.to_json_dict() == {
        "specversion": "1.0",
        "id": "order-1",
        "source": "/shop",
        "type": "order.created",
        "time": "2026-05-01T10:00:00Z",
        "subject": "order/1",
        "data": {"amount": 12.5},
        "traceparent": "00-abc",
        "priority": 3,
    }


class _Session:
    """Stands in for AsyncSession: run_sync calls the function with a "sync session"."""

    async def run_sync(self, function, *args):
        return function("sync-session", *args)


async def test_a_registration_awaits_async_handlers_and_runs_sync_ones_through_run_sync():
    """The worker calls every handler the same way; sync ones get the sync session run_sync hands over."""
    calls = []
    registry = HandlerRegistry()

    @registry.handler("t", name="a")
    async def asynchronous(event, session) -> None:
        calls.append(("async", event, session))

    @registry.sync_handler("t", name="s")
    def synchronous(event, session) -> None:
        calls.append(("sync", event, session))

    session = _Session()
    for name in ("a", "s"):
        registration = registry.get(name)
        assert registration is not None
        await registration.call("event", session)
    assert calls == [("async", "event", session), ("sync", "event", "sync-session")]
