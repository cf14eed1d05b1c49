"""What bounds a request: its body's size and sending time, its sender's rate, the queue's depth.

- :func:`read_body`: ``Content-Length`` over the limit is refused before a byte is read, a body
  that grows past it as soon as it does (413); a body that takes longer than
  ``EVENTWORKER_HTTP_BODY_TIMEOUT`` to arrive gets 408 and the connection is closed. uvicorn bounds
  neither: it reads a body as slowly as the client sends it.
- :class:`Admission`: the rate limit (events per window, per producer or client address) and the
  queue-depth bound, checked in one Redis round trip. The counts live in Redis, so several
  ``serve`` processes share each producer's budget. A refused request gives its count back.
- :func:`client_address`: the address a request comes from, believing ``X-Forwarded-For`` only
  from the configured proxies (pure, tested with tables).
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from fastapi import Request

from worker.constants import RATE_LIMIT_KEY_PREFIX
from worker.http.problems import Problem

#: Seconds a producer refused for a full queue is told to wait: long enough for workers to drain some.
QUEUE_FULL_RETRY_S: Final = 5

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The request's body, at most ``max_bytes``, received within ``timeout_s`` seconds."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise Problem(
            "too-large", f"the body is {declared} bytes, over the {max_bytes}-byte limit", limit=max_bytes
        )
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise Problem(
                        "too-large",
                        f"the body is over the {max_bytes}-byte limit",
                        limit=max_bytes,
                        headers={"Connection": "close"},
                    )
                chunks.append(chunk)
    except TimeoutError:
        raise Problem(
            "request-timeout",
            f"the body took longer than {timeout_s:g}s to arrive ({size} bytes by then)",
            headers={"Connection": "close"},
        ) from None
    return b"".join(chunks)


def parse_networks(entries: Sequence[str]) -> tuple[Network, ...]:
    """``EVENTWORKER_HTTP_TRUSTED_PROXIES`` as networks (a bare address is a network of one)."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def client_address(peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str:
    """Who sent a request: the peer, or, while the hop before is a trusted proxy, the address it names.

    ``X-Forwarded-For`` is read from the right (the hop nearest this server first); the first
    address that is not a trusted proxy is the client. A malformed entry ends the walk at the
    proxy that passed it on. With no trusted proxies the header is ignored.
    """
    if peer is None:
        return "unknown"
    hops = [hop for header in forwarded_for for hop in header.split(",") if hop.strip()]
    current = peer
    while hops:
        address = _address(current)
        if address is None or not any(address in network for network in trusted):
            break
        forwarded = _address(hops.pop())
        if forwarded is None:
            break
        current = str(forwarded)
    return current


def request_client(request: Request, trusted: Sequence[Network]) -> str:
    """:func:`client_address` of a request."""
    peer = request.client.host if request.client else None
    return client_address(peer, request.headers.getlist("x-forwarded-for"), trusted)


@dataclass(frozen=True, slots=True)
class Admission:
    """The rate limit and the queue-depth bound; :meth:`admit` checks both for one request."""

    redis: Any
    queue_name: str
    rate_limit: int | None
    window_s: float
    max_queue_depth: int | None

    async def admit(self, who: str, events: int, now: float) -> None:
        """Count ``events`` against ``who``'s budget; raise 429 or 503 (with Retry-After) if refused."""
        if self.rate_limit is not None and events > self.rate_limit:
            raise Problem(
                "too-large",
                f"{events} events in one request: the rate limit is {self.rate_limit} events per"
                f" {self.window_s:g}s, so send smaller batches",
                limit=self.rate_limit,
            )
        if self.rate_limit is None and self.max_queue_depth is None:
            return
        window = int(now // self.window_s)
        key = f"{RATE_LIMIT_KEY_PREFIX}{who}:{window}"
        pipe = self.redis.pipeline(transaction=False)
        if self.rate_limit is not None:
            pipe.incrby(key, events)
            pipe.pexpire(key, math.ceil(self.window_s * 1000) * 2)
        if self.max_queue_depth is not None:
            pipe.zcard(self.queue_name)
        replies = await pipe.execute()
        used = replies[0] if self.rate_limit is not None else 0
        depth = replies[-1] if self.max_queue_depth is not None else 0
        if self.max_queue_depth is not None and depth >= self.max_queue_depth:
            await self._give_back(key, events)
            raise Problem(
                "queue-full",
                f"{depth} jobs are waiting, at the bound of {self.max_queue_depth}",
                retry_after=QUEUE_FULL_RETRY_S,
                headers={"Retry-After": str(QUEUE_FULL_RETRY_S)},
            )
        if self.rate_limit is not None and used > self.rate_limit:
            await self._give_back(key, events)
            wait = max(1, math.ceil((window + 1) * self.window_s - now))
            raise Problem(
                "rate-limited",
                f"over {self.rate_limit} events per {self.window_s:g}s",
                retry_after=wait,
                limit=self.rate_limit,
                headers={"Retry-After": str(wait)},
            )

    async def _give_back(self, key: str, events: int) -> None:
        if self.rate_limit is not None:
            await self.redis.decrby(key, events)
