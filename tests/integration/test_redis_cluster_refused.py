"""A REDIS_URL that points at a Redis Cluster node is refused at start-up, in one line, everywhere.

arq has no Redis Cluster support; on a cluster of several nodes a job's keys would meet ``MOVED``
mid-way. The test starts a one-node cluster (``cluster-enabled yes``, every slot assigned to it with
``CLUSTER ADDSLOTSRANGE 0 16383``): commands would even work there, which is why the refusal must come
from asking the node what it is, not from waiting for an error.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from redis_servers import RedisNode, free_port, wait_until
from support import WorkerProcess, process_env

from worker.errors import ConfigError
from worker.protocol.producer import EventProducer
from worker.protocol.redis import connect

pytestmark = pytest.mark.integration

PASSWORD = "clusterNode-pw-3a9f"
REFUSAL = "is a Redis Cluster node; eventworker runs on arq, which has no Redis Cluster support"


@pytest.fixture(scope="module")
def cluster_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisNode]:
    node = RedisNode(
        tmp_path_factory.mktemp("cluster"),
        # The cluster bus listens on a port of its own: by default the node's + 10000, which a free
        # port above 55535 cannot have (redis-server then refuses to start: a CI run met it).
        ["cluster-enabled yes", "cluster-config-file nodes.conf", f"cluster-port {free_port()}"],
        password=PASSWORD,
    )
    node.start()
    try:
        client = node.client(decode_responses=True)
        try:
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
            ok = lambda: "cluster_state:ok" in client.execute_command("CLUSTER", "INFO")  # noqa: E731
            wait_until(ok, 20, "the cluster to be ok")
        finally:
            client.close()
        yield node
    finally:
        node.stop()


def url(node: RedisNode) -> str:
    return f"redis://:{PASSWORD}@127.0.0.1:{node.port}/0"


async def test_the_producer_and_the_client_refuse_a_cluster_node(cluster_node):
    """connect() and EventProducer raise one ConfigError naming REDIS_URL, the reason and no password."""
    for attempt in (connect(url(cluster_node)), EventProducer(url(cluster_node)).__aenter__()):
        with pytest.raises(ConfigError) as caught:
            await attempt
        message = str(caught.value)
        assert message.startswith(f"REDIS_URL: redis://:***@127.0.0.1:{cluster_node.port}/0: {REFUSAL}")
        assert "\n" not in message
        assert PASSWORD not in message


def test_commands_and_the_worker_refuse_a_cluster_node(cluster_node, pg_url, tmp_path):
    """`enqueue` ends with that one line and `status` lists it as its problem (exit 1 both); a worker logs it
    and exits non-zero."""
    env = {"REDIS_URL": url(cluster_node), "DATABASE_URL": pg_url}
    for args in (("enqueue", "-"), ("status",)):
        done = subprocess.run(
            [sys.executable, "-m", "worker", *args],
            env=process_env(**env),
            input='{"specversion": "1.0"}\n',
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1, done.stdout + done.stderr
        said = done.stderr.strip().splitlines()[-1] if args[0] == "enqueue" else done.stdout
        assert REFUSAL in said, done.stdout + done.stderr
        assert PASSWORD not in done.stdout + done.stderr

    worker = WorkerProcess(process_env(**env), tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + 30
        while worker.process.poll() is None:
            assert time.monotonic() < deadline, "the worker did not refuse the cluster node"
            time.sleep(0.1)
    finally:
        worker.kill()
    assert worker.process.returncode != 0
    refused = [line for line in worker.output().splitlines() if "worker.refused_to_start" in line]
    assert len(refused) == 1
    assert REFUSAL in refused[0]
    assert PASSWORD not in worker.output()
