"""``eventworker enqueue``: send newline-delimited JSON events from a file or stdin to the worker's queue."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import click

from worker.commands.base import examples, run_or_exit, settings_or_exit
from worker.domain.text import plural
from worker.protocol.serialization import deserialize


@dataclass(slots=True)
class Tally:
    """What one ``enqueue`` read and sent."""

    lines: int = 0
    blank: int = 0
    not_json: int = 0
    """Lines sent as text: each will be a dead letter."""
    jobs: int = 0

    @property
    def sent(self) -> int:
        return self.lines - self.blank

    def summary(self) -> str:
        """One line: lines read, events sent and in how many jobs, future dead letters, blank lines."""
        if not self.not_json:
            dead = "all JSON"
        elif self.not_json == 1:
            dead = "of which 1 is not JSON and will be a dead letter"
        else:
            dead = f"of which {self.not_json:,} are not JSON and will be dead letters"
        return (
            f"read {plural(self.lines, 'line')}: sent {plural(self.sent, 'event')} in"
            f" {plural(self.jobs, 'job')}, {dead}; skipped {plural(self.blank, 'blank line')}"
        )


def _read_ndjson(stream: IO[bytes], tally: Tally) -> Iterator[Any]:
    for number, line in enumerate(stream, start=1):
        tally.lines = number
        if not line.strip():
            tally.blank += 1
            continue
        try:
            yield deserialize(line)  # exact: orjson would turn integers beyond 64 bits into floats
        except ValueError as exc:
            # Sent anyway, as text: the worker keeps it as a dead letter rather than it vanishing here.
            tally.not_json += 1
            click.echo(f"line {number}: not JSON ({exc}); sent as text, it will be a dead letter", err=True)
            yield line.decode("utf-8", "backslashreplace").rstrip("\n")


@click.command(
    "enqueue",
    epilog=examples(
        "eventworker enqueue events.ndjson",
        "gunzip -c events.ndjson.gz | eventworker enqueue - --batch-size 1000",
    ),
)
@click.argument("source", type=click.File("rb"), default="-")
@click.option(
    "--batch-size", type=click.IntRange(min=1), help="Events per job [default: EVENTWORKER_BATCH_SIZE]."
)
@click.option(
    "--replicas",
    type=click.IntRange(min=0),
    help="Redis replicas that must acknowledge each job before it counts as sent; 0: the primary's"
    " acknowledgement [default: EVENTWORKER_ENQUEUE_REPLICAS].",
)
def enqueue_command(source: IO[bytes], batch_size: int | None, replicas: int | None) -> None:
    """Enqueue newline-delimited JSON events from SOURCE (a file, or - for stdin).

    Blank lines are skipped; a line that is not JSON is sent as text, for the worker to keep as a
    dead letter. Prints the lines read, the events sent and in how many jobs.
    """
    from worker.protocol.producer import EventProducer  # imported here: arq, which --help does not need

    settings = settings_or_exit()
    tally = Tally()

    async def send() -> int:
        wanted = settings.enqueue_replicas if replicas is None else replicas
        async with EventProducer(
            settings.redis_url,
            queue_name=settings.queue_name,
            batch_size=batch_size or settings.batch_size,
            durability="replicated" if wanted else "primary",
            replicas=max(wanted, 1),
            replica_timeout=settings.enqueue_replica_timeout,
        ) as producer:
            # Streams: a file of any size is read one batch at a time.
            return len(await producer.emit(_read_ndjson(source, tally)))

    tally.jobs = run_or_exit(send(), settings)
    click.echo(tally.summary())
