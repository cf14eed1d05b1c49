"""Example event handlers for ``com.example.order.created`` events.

Run a worker with them (from the repository root, so that ``examples`` is importable)::

    PYTHONPATH=. EVENTWORKER_HANDLER_MODULES=examples.order_totals eventworker run

``check_order_total`` is an async handler: it reads ``data.amount`` (and an optional
``data.currency``), logs the order's total, and raises on a missing or negative amount, so
that such an order's run is retried and, after the last try, listed by
``eventworker handlers list --status failed``. ``count_orders_of_source`` is a legacy
synchronous handler: it gets a plain ``Session`` (through ``AsyncSession.run_sync``) and
counts the orders stored from the event's source so far.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from worker.db.models import Event
from worker.handlers import StoredEvent, handler, sync_handler
from worker.logging import get_logger

ORDER_CREATED = "com.example.order.created"
log = get_logger("examples.order_totals")


class InvalidOrder(ValueError):
    """An order event whose data cannot make a total."""


def order_total(data: Any) -> tuple[Decimal, str]:
    """``(amount, currency)`` of an order's data; InvalidOrder when the amount is missing or negative."""
    if not isinstance(data, dict) or "amount" not in data:
        raise InvalidOrder("data.amount is missing")
    try:
        amount = Decimal(str(data["amount"]))
    except InvalidOperation:
        raise InvalidOrder(f"data.amount is not a number: {data['amount']!r}") from None
    if not amount.is_finite():
        raise InvalidOrder(f"data.amount must be a finite number, got {amount}")
    if amount < 0:
        raise InvalidOrder(f"data.amount must not be negative, got {amount}")
    return amount, str(data.get("currency", "EUR"))


@handler(ORDER_CREATED)
async def check_order_total(event: StoredEvent, session: AsyncSession) -> None:
    """Log the order's total; fail the run on a missing or negative amount."""
    amount, currency = order_total(event.event.data)
    log.info("order.total", order=event.event.id, source=event.event.source, total=f"{amount} {currency}")


@sync_handler(ORDER_CREATED)
def count_orders_of_source(event: StoredEvent, session: Session) -> None:
    """Legacy, synchronous: count this source's stored orders with a plain Session."""
    orders = session.scalar(
        select(func.count())
        .select_from(Event)
        .where(Event.type == ORDER_CREATED, Event.source == event.event.source)
    )
    log.info("order.count", source=event.event.source, orders=orders)
