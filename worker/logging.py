"""Logging: structlog for our lines, the same pipeline for the standard library's (arq, SQLAlchemy).

Lines are JSON in containers and coloured key=value on a terminal. Every line,
whoever logged it, passes one redaction step before it is written: URL passwords
and the configured secrets never reach the output.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

import orjson
import structlog
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor, WrappedLogger

#: ``scheme://user:password@`` in any text. The scheme may only start where a word starts and is
#: at most 32 characters, so a long run of letters is scanned once, not once per position.
_URL_PASSWORD = re.compile(
    r"(?<![a-zA-Z0-9+.-])(?P<head>[a-zA-Z][a-zA-Z0-9+.-]{0,31}://[^\s:/@]*:)(?P<secret>[^\s@/]+)(?P<at>@)"
)
REDACTED = "***"
#: Secrets shorter than this are only scrubbed inside URLs: replacing every "ab" would mangle logs.
MIN_LITERAL_SECRET = 4


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URL passwords and each secret replaced by ``***``."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{REDACTED}{m['at']}", text)
    for secret in secrets:
        if len(secret) >= MIN_LITERAL_SECRET:
            text = text.replace(secret, REDACTED)
    return text


class RedactingRenderer:
    """Wraps a renderer so that its output has no secrets in it."""

    def __init__(self, renderer: Processor, secrets: Iterable[str] = ()) -> None:
        self._renderer = renderer
        # In JSON output a secret holding " or \ appears escaped: scrub that spelling too.
        plain = [s for s in secrets if s]
        escaped = [orjson.dumps(s).decode()[1:-1] for s in plain]
        self._secrets = tuple(dict.fromkeys(sorted([*plain, *escaped], key=len, reverse=True)))

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        rendered = self._renderer(logger, name, event_dict)
        text = rendered.decode() if isinstance(rendered, bytes) else str(rendered)
        return redact_text(text, self._secrets)


def _json_dumps(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=repr).decode()


def _shared_processors(extra: Sequence[Processor] = ()) -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        *extra,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def configure_logging(
    level: str = "INFO",
    fmt: str = "auto",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    processors: Sequence[Processor] = (),
) -> None:
    """Send structlog and standard-library records through one redacting pipeline to ``stream``.

    ``fmt``: ``json``, ``console`` or ``auto`` (console when the stream is a terminal).
    arq's own per-job INFO lines (which print job arguments) are kept only at DEBUG.
    ``processors`` run on every line, ours and the standard library's, after the bound context
    (with tracing on: the ids of the span a line is written in, ``worker.tracing.hooks.log_processors``).
    """
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    final: list[Processor] = (
        [
            # No local variables in tracebacks: they hold payloads and credentials.
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
            structlog.processors.JSONRenderer(serializer=_json_dumps),
        ]
        if use_json
        else [structlog.dev.ConsoleRenderer(colors=stream.isatty())]
    )
    renderer = RedactingRenderer(final[-1], secrets)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(processors),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final[:-1], renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    arq_logger = logging.getLogger("arq")
    arq_logger.handlers.clear()  # arq's CLI gives it a plain handler of its own; ours is the root's
    arq_logger.propagate = True
    arq_logger.setLevel(level if level == "DEBUG" else "WARNING")
    # asyncmy logs every server warning, one per skipped duplicate with its key: data, not news.
    logging.getLogger("asyncmy").setLevel("ERROR")
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(processors),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger named ``name``."""
    return structlog.stdlib.get_logger(name)
