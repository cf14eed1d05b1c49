"""Database errors carry no statement parameters: payloads stay out of logs and failure records."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

pytestmark = pytest.mark.integration


async def test_a_failed_statement_hides_its_parameters(db):
    """The text of a database error names the statement but not the values bound to it."""
    with pytest.raises(DBAPIError) as caught:
        async with db.transaction() as session:
            await session.execute(text("SELECT :value, no_such_column"), {"value": "payload-PII-12345"})
    assert "payload-PII-12345" not in str(caught.value)
    assert "hidden due to hide_parameters" in str(caught.value)
