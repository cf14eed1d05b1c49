"""Sentinel-managed Redis failing under load: what a failover costs, with and without durable enqueues.

The servers are Debian's redis-server and redis-sentinel (``tests/redis_servers.py``): a primary, two
replicas, three sentinels acting within 1 s, no persistence (what is kept is what replicas hold). A
producer streams batches through the Sentinel URL while two ``eventworker run`` processes consume
them; then a fault:

(a) the primary SIGKILLed; (b) ``SENTINEL FAILOVER`` while the primary runs; (c) a sentinel killed;
(d) the old primary started again after a failover, to come back as a replica.

Each drill runs twice: ``durability="replicated"`` (``WAIT`` for 1 of the 2 replicas before a job
counts as sent) and the default ``"primary"`` (sent once the primary acknowledged it). A row of the
fault table gives, per run: the inputs of the acknowledged jobs, their distinct events, how many
were stored, duplicated (stored twice: must be 0) and lost (acknowledged, never stored), and the
seconds from the fault until the producer had a job acknowledged again.

What a failover can lose, and why, is written in docs/concepts.md ("Guarantees"); these drills are
where its figures come from. Soak mode (``--soak``) repeats each fault for longer.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis
from faults.conftest import FaultRow
from faults.harness import Ledger, Rounds, Storage, Stream, check_storage
from redis_servers import NODE_PASSWORD, RedisNode, SentinelGroup, wait_until

from worker.errors import EnqueueError
from worker.protocol.producer import EventProducer

pytestmark = pytest.mark.faults

#: How many of the two replicas a durable enqueue waits for.
REPLICAS = 1
#: Producer tries: enough to span a failover (the sentinels act within 1 s here; promotion took 1-3 s).
PRODUCER_RETRIES = 12

DURABILITY = [
    pytest.param("replicated", id="replicated"),
    pytest.param("primary", id="primary-only"),
]


async def settle(db: Any, ledger: Ledger, queue: str, redis: aioredis.Redis, within: float = 45) -> Storage:
    """The storage once every acknowledged event is stored, or once the queue is empty and stays so."""
    deadline = time.monotonic() + within
    quiet_since: float | None = None
    while True:
        storage = await check_storage(db, ledger)
        if storage.complete or time.monotonic() > deadline:
            return storage
        idle = await redis.zcard(queue) == 0
        quiet_since = (quiet_since or time.monotonic()) if idle else None
        if quiet_since is not None and time.monotonic() - quiet_since > 3:
            return storage  # nothing left to run: what is missing was lost
        await asyncio.sleep(0.2)


def runs_per_job(rig: Any) -> Counter[str]:
    """How many times each job stored its batch, over every worker's log."""
    return Counter(line["job_id"] for line in rig.log_lines("ingest.stored"))


class Drill:
    """One drill's world: the group, two workers on it, a producer with the durability asked for."""

    def __init__(self, rig: Any, group: SentinelGroup, durability: str) -> None:
        self.rig = rig
        self.group = group
        self.durability = durability
        rig.redis_url = group.url()
        rig.secrets += group.secrets
        self.ledger = Ledger()
        self.db = rig.db()

    async def __aenter__(self) -> Drill:
        await self.rig.start_workers(2, EVENTWORKER_MAX_JOBS="2")
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    def stream(self, producer: Any) -> Stream:
        """Batches of 20 events every 50 ms or so: a few hundred events a second."""
        return Stream(producer, self.ledger, batch_size=20, pause=0.05)

    def producer(self) -> Any:
        return self.rig.producer(
            durability=self.durability, replicas=REPLICAS, retries=PRODUCER_RETRIES, retry_max_delay=1.0
        )

    async def finish(self, fault: str, recovery_s: float | None, note: str, fault_report: Any) -> Storage:
        """Wait for the workers to drain the queue; check and record the outcome."""
        client = await self._primary_client()
        try:
            storage = await settle(self.db, self.ledger, self.rig.queue, client)
            texts = [str(v) for k in await client.keys("*") for v in [await _value(client, k)]]
        finally:
            await client.aclose()
        for secret in self.rig.secrets:
            assert not any(secret in text for text in texts), "a password appears in a Redis value"
        for worker in self.rig.workers:
            assert worker.process.poll() is None, f"a worker died:\n{worker.output()[-3000:]}"
        assert storage.duplicated == 0, f"{storage.duplicated} events stored twice"
        assert not storage.unexpected, storage.unexpected[:3]
        assert not storage.changed, storage.changed[:3]
        assert storage.dead_letters_duplicated == 0
        runs = runs_per_job(self.rig)
        twice = sum(1 for n in runs.values() if n > 1)
        refused = len(self.ledger.uncertain)
        fault_report.record(
            f"Sentinel: {fault} (durability={self.durability})",
            self.ledger,
            storage,
            recovery_s=recovery_s,
            note=f"{note}; {refused} batches refused with EnqueueError (never counted as sent);"
            f" {twice} jobs ran twice, absorbed by the database (0 duplicated rows)",
        )
        return storage

    async def _primary_client(self) -> aioredis.Redis:
        primary = self.group.primary()
        return aioredis.Redis(host="127.0.0.1", port=primary.port, password=primary.password)


async def _value(client: aioredis.Redis, key: bytes) -> Any:
    kind = await client.type(key)
    if kind == b"string":
        return await client.get(key)
    if kind == b"hash":
        return await client.hgetall(key)
    if kind == b"zset":
        return await client.zrange(key, 0, -1)
    return None


async def producer_back(stream: Stream, since: float) -> float:
    """Seconds from ``since`` until the producer has one more job acknowledged."""
    await stream.more(1, within=60)
    return time.monotonic() - since


@pytest.mark.parametrize("durability", DURABILITY)
async def test_a_primary_sigkilled_mid_load(rig, sentinel_group, fault_report, soak, durability):
    """(a) The primary dies: the sentinels promote the replica with the most data; everyone follows.

    With durability="replicated" every acknowledged job is on a replica, and the sentinels promote
    the replica with the largest replication offset: nothing acknowledged is lost. Without it the
    jobs the primary acknowledged but had not yet sent to a replica are lost with it.
    """
    async with Drill(rig, sentinel_group, durability) as drill:
        kills, promotion, back = Rounds(1, soak), [], []
        async with (
            drill.producer() as producer,
            drill.stream(producer) as s,
        ):
            for round in kills:
                if round:
                    await asyncio.to_thread(sentinel_group.heal)
                await s.more(10)
                old = sentinel_group.kill_primary()
                killed = time.monotonic()
                promotion.append(await asyncio.to_thread(sentinel_group.wait_promoted, old))
                back.append(await producer_back(s, killed))
                await s.more(10)
        storage = await drill.finish(
            f"primary SIGKILLed x{kills.done}",
            max(back),
            f"promotion {max(promotion):.1f} s",
            fault_report,
        )
    if durability == "replicated":
        storage.assert_exactly_once()


@pytest.mark.parametrize("durability", DURABILITY)
async def test_sentinel_failover_mid_load(rig, sentinel_group, fault_report, soak, durability):
    """(b) ``SENTINEL FAILOVER``: a replica is promoted while the old primary still takes writes.

    Until the clients learn of the new primary (within about a second: they ask the sentinels
    again), they write to the old one, which the sentinels demote and empty some 10 s later.
    """
    async with Drill(rig, sentinel_group, durability) as drill:
        rounds, promotion, back = Rounds(1, soak), [], []
        async with (
            drill.producer() as producer,
            drill.stream(producer) as s,
        ):
            for round in rounds:
                if round:
                    await asyncio.to_thread(sentinel_group.heal)
                await s.more(10)
                old = sentinel_group.failover()
                started = time.monotonic()
                promotion.append(await asyncio.to_thread(sentinel_group.wait_promoted, old))
                back.append(await producer_back(s, started))
                await s.more(10)
        storage = await drill.finish(
            f"SENTINEL FAILOVER x{rounds.done}", max(back), f"promotion {max(promotion):.1f} s", fault_report
        )
    if durability == "replicated":
        storage.assert_exactly_once()


@pytest.mark.parametrize("durability", DURABILITY)
async def test_a_sentinel_killed_mid_load(rig, sentinel_group, fault_report, durability):
    """(c) One of three sentinels dies: the primary stays, the clients ask the other two; nothing happens."""
    async with Drill(rig, sentinel_group, durability) as drill:
        async with (
            drill.producer() as producer,
            drill.stream(producer) as s,
        ):
            await s.more(20)
            primary = sentinel_group.primary()
            sentinel_group.sentinels[0].kill()
            killed = time.monotonic()
            back = await producer_back(s, killed)
            await s.more(20)
            assert sentinel_group.primary() is primary
        storage = await drill.finish("a sentinel SIGKILLed", back, "the primary stayed", fault_report)
        await asyncio.to_thread(sentinel_group.heal)
    storage.assert_exactly_once()


@pytest.mark.parametrize("durability", DURABILITY)
async def test_the_old_primary_comes_back_as_a_replica(rig, sentinel_group, fault_report, durability):
    """(d) After a failover the old primary starts again, empty (no persistence) and claiming to be primary.

    The sentinels name the new primary, so no client goes to it; they demote it to a replica of the
    new one, and it copies the new one's data. Nothing of what was acknowledged is lost to its
    empty start.
    """
    async with Drill(rig, sentinel_group, durability) as drill:
        async with (
            drill.producer() as producer,
            drill.stream(producer) as s,
        ):
            await s.more(10)
            old = sentinel_group.kill_primary()
            await asyncio.to_thread(sentinel_group.wait_promoted, old)
            await s.more(10)
            old.start()
            demoted = await asyncio.to_thread(_wait_replica_of_primary, sentinel_group, old)
            await s.more(10)
        storage = await drill.finish(
            "old primary back as a replica",
            demoted,
            f"the sentinels demoted it {demoted:.1f} s after it started again",
            fault_report,
        )
    if durability == "replicated":
        storage.assert_exactly_once()


def _wait_replica_of_primary(group: SentinelGroup, node: Any) -> float:
    def replica_in_sync() -> bool:
        client = node.client(decode_responses=True)
        try:
            info = client.info("replication")
        finally:
            client.close()
        return (
            info["role"] == "slave"
            and info["master_link_status"] == "up"
            and info["master_port"] == group.primary_port()
        )

    return wait_until(replica_in_sync, 60, "the old primary to replicate the new one", poll=0.1)


async def test_the_one_loss_replicated_still_allows(rig, tmp_path, fault_report):
    """A job acknowledged by the replica that is *not* promoted is lost: the window of a manual failover.

    What SENTINEL FAILOVER does, step by step, without sentinels so that each step lands where it
    must: replica A is promoted (REPLICAOF NO ONE) while the old primary P still runs; a producer
    still connected to P enqueues a job, and replica B, still following P, acknowledges it: WAIT 1
    is satisfied and the job is reported sent. Then B and P are made replicas of A, as the sentinels
    do next; both drop what A never had, the job with it. With 1 of 2 replicas this window stays
    open for as long as B follows P after A's promotion (about a second: the sentinels' INFO period);
    waiting for every replica (replicas=2 here) closes it, at the price of failing every enqueue
    while one replica is down.
    """
    nodes = [RedisNode(tmp_path / f"n{n}", [f"masterauth {NODE_PASSWORD}"]) for n in range(3)]
    primary, promoted, other = nodes
    try:
        for node in nodes:
            node.start()
        for node in (promoted, other):
            node.client().execute_command("REPLICAOF", "127.0.0.1", primary.port)
        wait_until(lambda: _online_replicas(primary) == 2, 20, "both replicas in sync")
        url = f"redis://:{NODE_PASSWORD}@127.0.0.1:{primary.port}/0"
        rig.secrets.append(NODE_PASSWORD)
        ledger = Ledger()
        one = {"durability": "replicated", "replicas": 1, "retries": 0, "replica_timeout": 1.0}
        both = {**one, "replicas": 2}
        async with (
            EventProducer(url, queue_name=rig.queue, **one) as producer,
            EventProducer(url, queue_name=rig.queue, **both) as every_replica,
        ):
            before = ledger.batch(5)  # on both replicas, so that A surely has it
            ledger.confirm(await every_replica.emit_batch(before), before)
            promoted.client().execute_command("REPLICAOF", "NO", "ONE")  # the sentinels' first step
            during = ledger.batch(5)
            ledger.confirm(await producer.emit_batch(during), during)  # B acknowledges: "sent"
            with pytest.raises(EnqueueError, match="1 of 2 replica"):  # only B answers: not reported sent
                await every_replica.emit_batch(ledger.batch(5))
        for node in (other, primary):  # the sentinels' next steps
            node.client().execute_command("REPLICAOF", "127.0.0.1", promoted.port)
        kept = promoted.client()
        wait_until(lambda: _online_replicas(promoted) == 2, 20, "the new replicas in sync")
        jobs = [job for job in ledger.jobs if kept.exists(f"arq:job:{job}")]
        assert jobs == ledger.jobs[:1], "the job acknowledged after A's promotion should be gone"
        for node in (other, primary):  # once each has copied the new primary's data: gone there too
            gone = node.client()
            wait_until(lambda c=gone: not c.exists(f"arq:job:{ledger.jobs[1]}"), 20, "the resync")
    finally:
        for node in nodes:
            node.stop()
    fault_report.add(
        FaultRow(
            "Sentinel, step by step: a job acknowledged by the replica not promoted (durability=replicated)",
            sent=ledger.inputs,
            events=ledger.events,
            stored=5,
            duplicated=0,
            lost=5,
            dead_letters="-",
            recovery_s=None,
            note="WAIT 1 was met by the replica that followed the old primary after the other was promoted;"
            " both resynchronised from the new primary and dropped it (replicas=2 closes this window)",
        )
    )


def _online_replicas(node: RedisNode) -> int:
    client = node.client(decode_responses=True)
    try:
        info = client.info("replication")
    finally:
        client.close()
    return sum(1 for n in range(int(info["connected_slaves"])) if info[f"slave{n}"]["state"] == "online")
