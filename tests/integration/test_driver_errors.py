"""Driver exceptions map to the same typed errors whichever driver raised them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, text
from sqlalchemy.exc import DBAPIError

from worker.db.engine import Database
from worker.db.failures import is_connection_error, is_unique_violation
from worker.db.models import Event
from worker.retry import classify

pytestmark = pytest.mark.integration


def _row(event_id: str) -> dict:
    return {
        "source": "/s",
        "event_id": event_id,
        "type": "t",
        "specversion": "1.0",
        "received_at": datetime.now(UTC),
    }


async def test_a_unique_violation_is_recognised(db):
    """A plain INSERT of an existing identity raises what is_unique_violation calls a duplicate."""
    async with db.transaction() as session:
        await session.execute(insert(Event), [_row("dup")])
    with pytest.raises(DBAPIError) as caught:
        async with db.transaction() as session:
            await session.execute(insert(Event), [_row("dup")])
    assert is_unique_violation(caught.value)
    assert not is_connection_error(caught.value)


async def test_an_unreachable_database_is_a_connection_error(settings, unreachable_url):
    """Connecting where nothing listens raises what is_connection_error calls retryable."""
    down = Database.from_settings(settings.model_copy(update={"database_url": unreachable_url}))
    try:
        with pytest.raises((DBAPIError, OSError)) as caught:
            async with down.transaction() as session:
                await session.execute(text("SELECT 1"))
    finally:
        await down.dispose()
    assert is_connection_error(caught.value), repr(caught.value)
    assert classify(caught.value) in {"database_unavailable", "timeout"}
    assert not is_unique_violation(caught.value)


async def test_a_syntax_error_is_neither(db):
    """An ordinary SQL error is not mistaken for a duplicate or an outage."""
    with pytest.raises(DBAPIError) as caught:
        async with db.transaction() as session:
            await session.execute(text("SELEC 1"))
    assert not is_unique_violation(caught.value)
    assert classify(caught.value) == "unexpected"
