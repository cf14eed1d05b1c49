"""Column types that mean the same on every database we support.

Used by the models and by the migrations (a migration must produce the columns the
models expect, so both take the types from here).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, String
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime everywhere.

    PostgreSQL keeps ``timestamptz``; MySQL/MariaDB (``DATETIME(6)``) and SQLite have no
    time zone, so values are stored as naive UTC and read back as aware UTC. A naive
    value is refused rather than guessed.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "mysql":
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()}: eventworker stores aware UTC times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name in {"mysql", "sqlite"} else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class IdentityString(TypeDecorator[str]):
    """A string compared byte for byte, as event identities must be.

    MySQL/MariaDB compare strings case-insensitively and ignore trailing spaces by
    default, which would make ``"Order-1"``, ``"order-1"`` and ``"order-1 "`` one event;
    there the column gets a binary no-pad collation. PostgreSQL and SQLite compare
    bytes already.
    """

    impl = String
    cache_ok = True

    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.length = length

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "mysql":
            is_mariadb = getattr(dialect, "is_mariadb", False)
            collation = "utf8mb4_nopad_bin" if is_mariadb else "utf8mb4_0900_bin"
            return dialect.type_descriptor(mysql.VARCHAR(self.length, charset="utf8mb4", collation=collation))
        return dialect.type_descriptor(String(self.length))


class SqliteJson(TypeDecorator[Any]):
    """SQLite's JSON type, keeping a bare JSON number as the text it was sent as.

    SQLite gives a column declared ``JSON`` numeric affinity: a value that is a bare number
    (``0.0``, ``18446744073709551617``, ``0.30000000000000004``) is stored as an INTEGER or a
    REAL, so it came back changed (``0``, a rounded integer, 15 significant digits once cast to
    text) and the JSON type could not read it back at all. Bound as UTF-8 bytes (a BLOB, which
    affinity leaves alone) the text is kept as it is; ``CAST(data AS TEXT)`` and the JSON
    deserializer read bytes as they read text. Objects, arrays, strings and literals were never
    converted and are bound as before, as JSON text.
    """

    impl = JSON
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Any:
        serialize = dialect.type_descriptor(self.impl_instance).bind_processor(dialect)

        def process(value: Any) -> Any:
            bound = serialize(value) if serialize is not None else value
            if isinstance(value, int | float) and not isinstance(value, bool) and isinstance(bound, str):
                return bound.encode()
            return bound

        return process

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        deserialize = dialect.type_descriptor(self.impl_instance).result_processor(dialect, coltype)

        def process(value: Any) -> Any:
            if isinstance(value, int | float):  # stored before this type: SQLite had made it a number
                return value
            return deserialize(value) if deserialize is not None else value

        return process
