"""Redis over TLS, as an ACL user limited to what eventworker needs: worker, producer and commands.

The test starts its own redis-server with a ``tls-port`` and a certificate it makes with openssl, and
creates the user from the ACL rule written in docs/deploying.md, so the rule documented is the rule
tested. Everything runs through ``rediss://eventworker:...@127.0.0.1:<port>/0?ssl_ca_certs=...``;
afterwards Redis's ``ACL LOG`` must hold no refusal, and the password must appear in no output.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis_servers import RedisNode, TlsFiles, tls_files
from sqlalchemy import func, select
from support import WorkerProcess, event, process_env, unique_source

from worker.config import load_settings
from worker.db.engine import Database
from worker.db.models import Event
from worker.protocol.producer import EventProducer
from worker.protocol.redis import connect

pytestmark = pytest.mark.integration

ADMIN_PASSWORD = "tlsAdmin-pw-41d0"
USER_PASSWORD = "tlsUser-pw-8b2e"
DOCS = Path(__file__).parents[2] / "docs" / "deploying.md"


def documented_acl_rule() -> list[str]:
    """The ``ACL SETUSER eventworker ...`` line of docs/deploying.md, with this test's password."""
    line = next(line for line in DOCS.read_text().splitlines() if line.startswith("ACL SETUSER eventworker "))
    rules = line.split()[3:]  # after ACL SETUSER eventworker
    return [f">{USER_PASSWORD}" if rule == ">worker-password" else rule for rule in rules]


class TlsRedis:
    def __init__(self, node: RedisNode, files: TlsFiles) -> None:
        self.node = node
        self.files = files

    def url(self, user: str = "eventworker", password: str = USER_PASSWORD, ca: Path | None = None) -> str:
        ca = ca or self.files.ca
        return f"rediss://{user}:{password}@127.0.0.1:{self.node.port}/0?ssl_ca_certs={ca}"

    def admin(self) -> redis.Redis:
        return self.node.client(decode_responses=True)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    """A TLS-only redis-server whose ``eventworker`` user has the documented ACL rule."""
    directory = tmp_path_factory.mktemp("tls-redis")
    files = tls_files(directory / "certs")
    node = RedisNode(directory / "node", password=ADMIN_PASSWORD, tls=files)
    node.start()
    try:
        admin = node.client()
        try:
            admin.execute_command("ACL", "SETUSER", "eventworker", *documented_acl_rule())
        finally:
            admin.close()
        yield TlsRedis(node, files)
    finally:
        node.stop()


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=process_env(**env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def stored(database_url: str, source: str) -> int:
    db = Database.from_settings(load_settings(database_url=database_url))
    try:
        async with db.transaction() as session:
            query = select(func.count()).select_from(Event).where(Event.source == source)
            return int(await session.scalar(query) or 0)
    finally:
        await db.dispose()


async def test_worker_producer_and_commands_over_tls_as_the_documented_acl_user(tls_redis, pg_url, tmp_path):
    """Enqueue (Python and `enqueue`), run a worker, `status`, `check`, `failed list`: all through TLS as the
    limited user; Redis refused none of their commands and no output shows the password."""
    admin = tls_redis.admin()
    admin.execute_command("ACL", "LOG", "RESET")
    queue = f"arq:tls-{uuid.uuid4().hex[:8]}"  # under ~arq:*, as the rule's note says
    env = {
        "DATABASE_URL": pg_url,
        "REDIS_URL": tls_redis.url(),
        "EVENTWORKER_QUEUE_NAME": queue,
        "EVENTWORKER_POLL_DELAY": "0.01",
        "EVENTWORKER_HEALTH_CHECK_INTERVAL": "1",
    }
    source = unique_source()
    async with EventProducer(tls_redis.url(), queue_name=queue) as producer:
        await producer.emit([event(n, source=source) for n in range(10)])
    lines = "".join(f'{{"specversion":"1.0","id":"c{n}","source":"{source}","type":"t"}}\n' for n in range(5))
    outputs = [cli(env, "enqueue", "-", stdin=lines)]
    assert outputs[0].returncode == 0, outputs[0].stderr

    worker = WorkerProcess(process_env(**env), tmp_path / "worker.log")
    try:
        worker.wait_started()
        deadline = time.monotonic() + 30
        while await stored(pg_url, source) < 15:
            assert time.monotonic() < deadline, worker.output()[-3000:]
            await asyncio.sleep(0.1)
        outputs += [cli(env, "status", "--json"), cli(env, "check"), cli(env, "failed", "list")]
    finally:
        worker.stop()
    for done in outputs[1:]:
        assert done.returncode == 0, done.stdout + done.stderr

    refusals = admin.execute_command("ACL", "LOG")
    assert refusals == [], f"Redis refused the eventworker user: {refusals}"
    for text in [worker.output(), *(done.stdout + done.stderr for done in outputs)]:
        assert USER_PASSWORD not in text
        assert ADMIN_PASSWORD not in text
    admin.close()


@pytest.mark.parametrize(
    "command",
    [
        ("GET", "someone-else:key"),
        ("SET", "session:1", "x"),
        ("KEYS", "*"),
        ("FLUSHALL",),
        ("CONFIG", "GET", "requirepass"),
        ("CLIENT", "KILL", "TYPE", "normal"),
        ("SUBSCRIBE", "arq:anything"),
        ("EVAL", "return 1", "0"),
    ],
)
def test_the_acl_user_may_do_nothing_else(tls_redis, command):
    """Keys of other applications, dangerous commands, channels and scripts are refused to the user."""
    admin = tls_redis.admin()
    try:
        verdict = admin.execute_command("ACL", "DRYRUN", "eventworker", *command)
    finally:
        admin.close()
    assert verdict != "OK", f"{command[0]} is allowed"


def test_the_acl_user_may_wait_for_replicas_and_read_info(tls_redis):
    """WAIT (durable enqueues) and INFO (arq's start-up line, the Cluster check) are allowed."""
    admin = tls_redis.admin()
    try:
        for command in (("WAIT", "1", "0"), ("INFO", "cluster"), ("WATCH", "arq:job:x"), ("EXEC",)):
            assert admin.execute_command("ACL", "DRYRUN", "eventworker", *command) == "OK", command
    finally:
        admin.close()


async def test_a_certificate_from_another_ca_is_refused_in_one_line(tls_redis, tmp_path):
    """The server's certificate is checked against ssl_ca_certs: another CA fails, naming no password."""
    other = tls_files(tmp_path / "other", name="other")
    with pytest.raises(redis.exceptions.ConnectionError) as caught:
        await connect(tls_redis.url(ca=other.ca))
    assert re.search(r"certificate verify failed", str(caught.value))
    assert USER_PASSWORD not in str(caught.value)
    done = cli({"REDIS_URL": tls_redis.url(ca=other.ca)}, "enqueue", "-", stdin='{"specversion": "1.0"}\n')
    assert done.returncode == 1
    assert "certificate verify failed" in done.stderr.strip().splitlines()[-1]
    assert USER_PASSWORD not in done.stderr
