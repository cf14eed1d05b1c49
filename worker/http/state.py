"""What the application holds while it runs, and the dependencies routes take it through.

The lifespan (:mod:`worker.http.app`) builds one :class:`HttpState`: the engine (as a
:class:`~worker.db.engine.Database`), the Redis pool, the producer client that enqueues through
it, the producers file, the HTTP metrics. Routes reach it with ``Depends``, and a route that
touches the database gets one ``AsyncSession`` for its request (:func:`session`), closed when the
response is sent, as SQLAlchemy's and FastAPI's documentation show.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, Final

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from worker.config import Settings
from worker.db.engine import Database
from worker.db.replica import ReadRouter
from worker.domain.producers import Producers
from worker.http.limits import Admission, Network
from worker.http.metrics import HttpMetrics
from worker.ops.status import Status, StatusReader
from worker.protocol.producer import EventProducer

#: Seconds a gathered status is served again: many open dashboards do not multiply the queries.
STATUS_CACHE_S: Final = 1.0
#: Seconds the choice between the read replica and the primary holds before the replica's lag is measured
#: again (two queries): not on every request.
READ_CHOICE_S: Final = 5.0


@dataclass(slots=True)
class HttpState:
    """The running application's resources, made in the lifespan and closed at its end."""

    settings: Settings
    db: Database
    """Writes, and reads where no read replica is configured."""
    redis: Any
    """The arq pool (``ArqRedis``) shared by every request."""
    producer: EventProducer
    """Enqueues ingest jobs exactly as a Python producer does, on :attr:`redis`."""
    producers: Producers | None
    """The producers file; None: no token needed (serve then listens on loopback only)."""
    metrics: HttpMetrics
    admission: Admission
    """The rate limit and the queue-depth bound, counted in :attr:`redis`."""
    trusted_proxies: tuple[Network, ...]
    """``EVENTWORKER_HTTP_TRUSTED_PROXIES``, parsed."""
    status_reader: StatusReader
    """What ``/api/status`` and the dashboard show; its own engine and pool, like the old dashboard's."""
    reads: ReadRouter | None = None
    """Where heavy reads go with ``DATABASE_READ_URL``: the replica while it keeps up; None without one."""
    session_key: bytes = b""
    """Signs the dashboard's logins and forms (:func:`worker.http.dashboard.session.session_key`)."""
    anonymous_events: bool = True
    """Without a producers file, whether anyone may send events: yes on loopback (serve listens only
    there then); no for ``eventworker dashboard`` told to listen further."""
    _cached_status: tuple[float, Status] | None = None
    _read_choice: tuple[float, Database] | None = None

    def forget_status(self) -> None:
        """Read the status afresh next time: an action just changed it."""
        self._cached_status = None

    async def read_db(self) -> Database:
        """The database the operator API reads: the replica while it keeps up (checked at most every
        :data:`READ_CHOICE_S`), else, and without ``DATABASE_READ_URL``, :attr:`db`."""
        if self.reads is None:
            return self.db
        if self._read_choice is not None and time.monotonic() - self._read_choice[0] < READ_CHOICE_S:
            return self._read_choice[1]
        chosen, _lag = await self.reads.choose()
        if chosen is self.reads.primary:
            chosen = self.db  # the app's own pool, rather than the router's second one
        self._read_choice = (time.monotonic(), chosen)
        return chosen

    async def status(self) -> Status:
        """The current status, read at most once per :data:`STATUS_CACHE_S` however many ask."""
        if self._cached_status is not None and time.monotonic() - self._cached_status[0] < STATUS_CACHE_S:
            return self._cached_status[1]
        status = await self.status_reader.read()
        self._cached_status = (time.monotonic(), status)
        return status


async def http_state(request: Request) -> HttpState:
    """The application's :class:`HttpState`. Every dependency here is ``async def``: FastAPI runs a plain
    ``def`` one in a thread pool, a thread hop per request for a few attribute reads."""
    state: HttpState = request.app.state.http
    return state


StateDep = Annotated[HttpState, Depends(http_state)]


async def session(state: StateDep) -> AsyncIterator[AsyncSession]:
    """One session for the request, closed (its connection back in the pool) once the response is sent."""
    async with state.db.sessionmaker() as request_session:
        yield request_session


SessionDep = Annotated[AsyncSession, Depends(session)]


async def read_session(state: StateDep) -> AsyncIterator[AsyncSession]:
    """One session for the request's reads, on the read replica where one is configured and keeps up."""
    database = await state.read_db()
    async with database.sessionmaker() as request_session:
        yield request_session


ReadSessionDep = Annotated[AsyncSession, Depends(read_session)]
