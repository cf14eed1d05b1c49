"""``eventworker enqueue``: send newline-delimited JSON events from a file or stdin to the worker's queue."""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

import click

from worker.commands.base import run_or_exit, settings_or_exit
from worker.protocol.serialization import deserialize


def _read_ndjson(stream: IO[bytes]) -> Iterator[Any]:
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            yield deserialize(line)  # exact: orjson would turn integers beyond 64 bits into floats
        except ValueError as exc:
            # Sent anyway, as text: the worker keeps it as a dead letter rather than it vanishing here.
            click.echo(f"line {number}: not JSON ({exc}); sent as text, it will be a dead letter", err=True)
            yield line.decode("utf-8", "backslashreplace").rstrip("\n")


@click.command("enqueue")
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
    """Enqueue newline-delimited JSON events from SOURCE (a file, or - for stdin)."""
    from worker.protocol.producer import EventProducer  # imported here: arq, which --help does not need

    settings = settings_or_exit()

    async def send() -> tuple[int, int]:
        read = 0

        def counted() -> Iterator[Any]:  # streams: a file of any size is read one batch at a time
            nonlocal read
            for value in _read_ndjson(source):
                read += 1
                yield value

        wanted = settings.enqueue_replicas if replicas is None else replicas
        async with EventProducer(
            settings.redis_url,
            queue_name=settings.queue_name,
            batch_size=batch_size or settings.batch_size,
            durability="replicated" if wanted else "primary",
            replicas=max(wanted, 1),
            replica_timeout=settings.enqueue_replica_timeout,
        ) as producer:
            jobs = len(await producer.emit(counted()))
        return read, jobs

    count, jobs = run_or_exit(send(), settings)
    click.echo(f"enqueued {count} events in {jobs} jobs")
