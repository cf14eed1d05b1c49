"""Logging: one redacting pipeline for structlog and the standard library, JSON lines without secrets."""

from __future__ import annotations

import io
import logging
import time

import orjson
import pytest
import structlog

from worker.logging import configure_logging, get_logger, redact_text

SECRET = "Tr0ub4dor-and-3"
DB_PASSWORD = "pg-pa55word"


@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        ("postgresql://app:pw@db:5432/events", (), "postgresql://app:***@db:5432/events"),
        ("postgresql+asyncpg://app:p%40ss@db/events", (), "postgresql+asyncpg://app:***@db/events"),
        ("redis://:s3cret@cache:6379/0", (), "redis://:***@cache:6379/0"),
        ("rediss://default:s3cret@cache:6380", (), "rediss://default:***@cache:6380"),
        (
            "could not connect to mysql+aiomysql://root:toor@mysql/app (timeout)",
            (),
            "could not connect to mysql+aiomysql://root:***@mysql/app (timeout)",
        ),
        (
            "a://u:one@h and b://v:two@k",
            (),
            "a://u:***@h and b://v:***@k",
        ),
        ("postgresql://app@db/events", (), "postgresql://app@db/events"),
        ("postgresql://db:5432/events", (), "postgresql://db:5432/events"),
        ("nothing to hide", (), "nothing to hide"),
        ("", (SECRET,), ""),
        (f"token={SECRET}; again {SECRET}", (SECRET,), "token=***; again ***"),
        (f"token={SECRET}", ("other-secret", SECRET), "token=***"),
        # Secrets under 4 characters are only scrubbed inside URLs: "ab" would mangle every log line.
        ("abc is short", ("abc",), "abc is short"),
        ("redis://:abc@h", ("abc",), "redis://:***@h"),
        ("abcd is not", ("abcd",), "*** is not"),
    ],
)
def test_redact_text(text, secrets, expected):
    """URL passwords and each given secret (4+ characters) are replaced by ***."""
    assert redact_text(text, secrets) == expected


def test_redact_text_is_linear_on_long_words():
    """A 200,000-character word is redacted in one pass; a quadratic scan would take minutes."""
    started = time.perf_counter()
    assert redact_text("a" * 200_000) == "a" * 200_000
    assert time.perf_counter() - started < 1.0


@pytest.fixture
def stream():
    """A JSON-configured pipeline writing to a string; DB_PASSWORD and SECRET are the configured secrets."""
    out = io.StringIO()
    configure_logging("INFO", "json", [DB_PASSWORD, SECRET], stream=out)
    return out


def lines(stream: io.StringIO) -> list[dict]:
    """Every written line, each parsed as JSON (fails if a line is not JSON)."""
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_structlog_lines_are_json(stream):
    """A structlog line is one JSON object with event, level, logger name, timestamp and fields."""
    get_logger("eventworker.test").info("ingest.stored", accepted=3, rejected=1)
    [line] = lines(stream)
    assert line["event"] == "ingest.stored"
    assert (line["level"], line["logger"]) == ("info", "eventworker.test")
    assert (line["accepted"], line["rejected"]) == (3, 1)
    assert line["timestamp"].endswith("Z")


def test_stdlib_lines_go_through_the_same_pipeline(stream):
    """SQLAlchemy's and arq's standard-library records come out as the same JSON lines."""
    logging.getLogger("sqlalchemy.engine").warning("pool %s is %d%% full", "main", 90)
    logging.getLogger("arq.worker").error("job %s failed", "abc")
    sqlalchemy_line, arq_line = lines(stream)
    assert sqlalchemy_line["event"] == "pool main is 90% full"
    assert (sqlalchemy_line["level"], sqlalchemy_line["logger"]) == ("warning", "sqlalchemy.engine")
    assert (arq_line["event"], arq_line["logger"]) == ("job abc failed", "arq.worker")


def test_secrets_are_redacted_everywhere(stream):
    """URL passwords and configured secrets never reach the output, from structlog or the stdlib."""
    log = get_logger("eventworker.test")
    log.info("connecting", url=f"postgresql+asyncpg://app:{DB_PASSWORD}@db/events")
    log.warning(f"token {SECRET} refused", token=SECRET, nested={"list": [SECRET]})
    logging.getLogger("sqlalchemy.pool").warning("reconnect to redis://:%s@cache:6379", "other-pw")
    logging.getLogger("arq").warning("password was %s", DB_PASSWORD)
    output = stream.getvalue()
    assert DB_PASSWORD not in output
    assert SECRET not in output
    assert "other-pw" not in output
    parsed = lines(stream)
    assert parsed[0]["url"] == "postgresql+asyncpg://app:***@db/events"
    assert parsed[1]["event"] == "token *** refused"
    assert parsed[1]["token"] == "***"
    assert parsed[1]["nested"] == {"list": ["***"]}
    assert parsed[2]["event"] == "reconnect to redis://:***@cache:6379"
    assert parsed[3]["event"] == "password was ***"


def test_secret_with_json_escaped_characters_is_redacted():
    """A secret containing a quote or backslash is redacted too, although JSON escapes it."""
    out = io.StringIO()
    secret = 'pa"ss\\word'
    configure_logging("INFO", "json", [secret], stream=out)
    get_logger("eventworker.test").info("login", password=secret)
    assert lines(out)[0]["password"] == "***"


def test_exception_tracebacks_have_no_local_variables(stream):
    """log.exception writes the traceback as data, without the frames' local variables."""

    def fail_with_a_secret_in_scope():
        api_token = "local-" + SECRET[::-1]  # noqa: F841 (the local variable the traceback must not show)
        raise ValueError("could not parse the payload")

    try:
        fail_with_a_secret_in_scope()
    except ValueError:
        get_logger("eventworker.test").exception("job.crashed")
    output = stream.getvalue()
    [line] = lines(stream)
    assert line["event"] == "job.crashed"
    [exception] = line["exception"]
    assert exception["exc_type"] == "ValueError"
    assert exception["exc_value"] == "could not parse the payload"
    assert [frame["name"] for frame in exception["frames"]][-1] == "fail_with_a_secret_in_scope"
    assert all("locals" not in frame for frame in exception["frames"])
    assert SECRET[::-1] not in output
    assert "api_token" not in output


def test_stdlib_exception_is_redacted(stream):
    """An exception logged through the stdlib keeps no secret in its message either."""
    try:
        raise ConnectionError(f"cannot reach postgresql://app:{DB_PASSWORD}@db/events")
    except ConnectionError:
        logging.getLogger("sqlalchemy.pool").exception("connection failed")
    assert DB_PASSWORD not in stream.getvalue()
    [line] = lines(stream)
    assert line["exception"][0]["exc_value"] == "cannot reach postgresql://app:***@db/events"


def test_contextvars_appear_on_every_line(stream):
    """Values bound with bind_contextvars are on structlog and stdlib lines alike, until cleared."""
    structlog.contextvars.bind_contextvars(job_id="job-42", job_try=2)
    get_logger("eventworker.test").info("one")
    logging.getLogger("sqlalchemy").warning("two")
    structlog.contextvars.clear_contextvars()
    get_logger("eventworker.test").info("three")
    one, two, three = lines(stream)
    assert (one["job_id"], one["job_try"]) == ("job-42", 2)
    assert (two["job_id"], two["job_try"]) == ("job-42", 2)
    assert "job_id" not in three


def test_level_filters_both_kinds_of_logger():
    """Lines below the configured level are dropped, from structlog and the stdlib."""
    out = io.StringIO()
    configure_logging("WARNING", "json", stream=out)
    get_logger("eventworker.test").info("dropped")
    logging.getLogger("sqlalchemy").info("dropped too")
    get_logger("eventworker.test").warning("kept")
    assert [line["event"] for line in lines(out)] == ["kept"]


@pytest.mark.parametrize(("level", "shown"), [("INFO", False), ("DEBUG", True)])
def test_arq_job_lines_only_at_debug(level, shown):
    """arq's per-job INFO lines (which print job arguments) are written only at DEBUG."""
    out = io.StringIO()
    configure_logging(level, "json", stream=out)
    logging.getLogger("arq.worker").info("  0.01s → job:ingest_events([{...}])")
    logging.getLogger("arq.worker").warning("kept")
    events = [line["event"] for line in lines(out)]
    assert ("  0.01s → job:ingest_events([{...}])" in events) is shown
    assert "kept" in events


def test_configure_logging_replaces_handlers():
    """Configuring twice leaves one handler on the root logger and none of arq's own."""
    logging.getLogger("arq").addHandler(logging.StreamHandler(io.StringIO()))
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", "json", stream=first)
    configure_logging("INFO", "json", stream=second)
    logging.getLogger("arq").warning("once")
    assert len(logging.getLogger().handlers) == 1
    assert logging.getLogger("arq").handlers == []
    assert first.getvalue() == ""
    assert [line["event"] for line in lines(second)] == ["once"]


def test_console_format_is_redacted_too():
    """The console renderer (a terminal) gets the same redaction as JSON."""
    out = io.StringIO()
    configure_logging("INFO", "console", [SECRET], stream=out)
    get_logger("eventworker.test").info("connecting", url="redis://:pw1234@cache", token=SECRET)
    output = out.getvalue()
    assert "connecting" in output
    assert "pw1234" not in output
    assert SECRET not in output
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(output.splitlines()[0])


def test_auto_format_is_json_when_not_a_terminal():
    """fmt='auto' writes JSON to a stream that is not a terminal."""
    out = io.StringIO()
    configure_logging("INFO", "auto", stream=out)
    get_logger("eventworker.test").info("auto")
    assert lines(out)[0]["event"] == "auto"
