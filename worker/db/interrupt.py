"""A task asked to stop while a driver held the cancellation: stop it between two statements.

asyncpg's ``executemany`` does not end when its task is cancelled: it catches the
``CancelledError`` in its own ``finally`` and goes on sending the remaining rows to a server that
has cancelled the statement, which took 57 s for the 293,000 bucket rows of a rollup over a
3-million-row transaction (a worker told to stop waited that long). A statement run alone
(``execute``) is cancelled on the server at once (asyncpg sends a CancelRequest). So a long
series of rows goes in batches, and :func:`raise_if_cancelled` between them ends a task whose
cancellation a driver swallowed: the batch in flight is the most it waits for.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """Raise ``CancelledError`` if the running task was cancelled and has not stopped yet."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
