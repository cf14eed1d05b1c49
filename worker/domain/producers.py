"""Who may send events over HTTP: the producers file, read and checked. Pure: the caller reads the file.

The file (``EVENTWORKER_PRODUCERS_FILE``) is a JSON array, one object per producer::

    [{"name": "shop", "token_sha256": "<64 hex digits>", "sources": ["/shop/", "https://shop.example/"]}]

It holds the SHA-256 of each bearer token, never the token, so the file itself grants nothing.
A producer may send only events whose ``source`` starts with one of its ``sources``: a plain
string prefix (``/shop`` also covers ``/shopping``; write ``/shop/`` to mean the path).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Final

from worker.protocol.serialization import deserialize

#: A producer's name: short and plain, since it goes into logs, metrics and dead letters' job names.
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
_KEYS: Final = frozenset({"name", "token_sha256", "sources"})


class ProducersFileError(ValueError):
    """The producers file is not what it must be; the message names the entry and the problem."""


@dataclass(frozen=True, slots=True)
class Producer:
    """One producer: its name, its token's SHA-256 (hex) and the source prefixes it may send."""

    name: str
    token_sha256: str
    sources: tuple[str, ...]

    def may_send(self, source: Any) -> bool:
        """Whether an event with this ``source`` is one of this producer's."""
        return isinstance(source, str) and source.startswith(self.sources)


def token_digest(token: str) -> str:
    """The SHA-256 of a bearer token, as hex: what the producers file and the operator settings hold."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Producers:
    """The producers of a file, found by their token's digest."""

    by_digest: dict[str, Producer]

    def find(self, token: str) -> Producer | None:
        """The producer whose token this is, or None."""
        return self.by_digest.get(token_digest(token))


def _entry(index: int, value: Any) -> Producer:
    where = f"entry {index}"
    if not isinstance(value, dict):
        raise ProducersFileError(f"{where}: must be an object with name, token_sha256 and sources")
    missing = sorted(_KEYS - value.keys())
    unknown = sorted(value.keys() - _KEYS)
    if missing or unknown:
        problem = f"missing {', '.join(missing)}" if missing else f"unknown key(s) {', '.join(unknown)}"
        raise ProducersFileError(f"{where}: {problem} (keys are name, token_sha256, sources)")
    name, digest, sources = value["name"], value["token_sha256"], value["sources"]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ProducersFileError(f"{where}: name must be 1 to 64 letters, digits, '.', '_' or '-'")
    where = f"producer {name!r}"
    if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest.lower()):
        raise ProducersFileError(
            f"{where}: token_sha256 must be 64 hex digits, the SHA-256 of the token (never the token)"
        )
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) and s for s in sources):
        raise ProducersFileError(f"{where}: sources must be a non-empty list of source prefixes")
    return Producer(name, digest.lower(), tuple(sources))


def parse_producers(text: bytes | str) -> Producers:
    """The producers a file's text lists; raises :class:`ProducersFileError` naming the first problem."""
    try:
        entries = deserialize(text)
    except ValueError as exc:
        raise ProducersFileError(f"not JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(entries, list):
        raise ProducersFileError("must be a JSON array of producers")
    by_digest: dict[str, Producer] = {}
    names: set[str] = set()
    for index, value in enumerate(entries):
        producer = _entry(index, value)
        if producer.name in names:
            raise ProducersFileError(f"producer {producer.name!r} is listed twice")
        if producer.token_sha256 in by_digest:
            raise ProducersFileError(
                f"producers {by_digest[producer.token_sha256].name!r} and {producer.name!r} share a token"
            )
        names.add(producer.name)
        by_digest[producer.token_sha256] = producer
    return Producers(by_digest)
