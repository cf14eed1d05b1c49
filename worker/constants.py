"""Names shared by the producer, the worker and the CLI: job names, queue and Redis keys."""

from typing import Final

#: Job names: each is the job function's name in ``jobs/``, the name arq runs it by, and how it is
#: known in logs, metrics, ``failed_jobs`` and the database's application name.

#: The arq job that stores a batch of events. Producers in any language enqueue this name.
INGEST_JOB: Final = "ingest_events"

#: The job a worker runs in place of one whose bytes could not be decoded
#: (see ``worker.protocol.serialization``).
UNDECODABLE_JOB: Final = "store_undecodable_job"

#: The job that rebuilds the rollups of a time range from the stored events.
REBUILD_ROLLUPS_JOB: Final = "rebuild_rollups"

#: The cron job that rolls up the events stored since its last run.
UPDATE_ROLLUPS_JOB: Final = "update_rollups"

#: The job that writes stored events to a file.
EXPORT_EVENTS_JOB: Final = "export_events"

#: The job that runs registered event handlers on their pending runs (see ``worker.domain.handlers``).
RUN_HANDLERS_JOB: Final = "run_handlers"

#: The cron job that runs handler runs whose ``run_handlers`` job was never enqueued or is late.
SWEEP_HANDLERS_JOB: Final = "sweep_handlers"

#: The job that builds the event statistics report over a time window.
EVENT_STATS_JOB: Final = "event_stats"

#: The cron job that exports and deletes events older than the retention period.
APPLY_RETENTION_JOB: Final = "apply_retention"

#: The cron job that keeps partitions of a partitioned ``events`` (PostgreSQL) made ahead of now.
MAINTAIN_PARTITIONS_JOB: Final = "maintain_partitions"

#: The cron jobs every worker schedules (``worker.main.cron_jobs``), in the order ``eventworker status``
#: shows them.
CRON_JOBS: Final = (UPDATE_ROLLUPS_JOB, APPLY_RETENTION_JOB, SWEEP_HANDLERS_JOB, MAINTAIN_PARTITIONS_JOB)

#: arq's default queue; kept so that producers written against plain arq reach us.
DEFAULT_QUEUE: Final = "arq:queue"

#: Suffix arq appends to the queue name for the worker's health-check key.
HEALTH_CHECK_SUFFIX: Final = ":health-check"

#: Upper bounds on event identity fields: the unique index on (source, id) must fit every database
#: we support (MySQL/MariaDB limit an index key to 3072 bytes, 4 bytes per utf8mb4 character).
MAX_SOURCE_LENGTH: Final = 512
MAX_ID_LENGTH: Final = 255
MAX_TYPE_LENGTH: Final = 255
MAX_SUBJECT_LENGTH: Final = 1024

#: PostgreSQL truncates application_name to NAMEDATALEN - 1 bytes.
MAX_APPLICATION_NAME: Final = 63

#: Redis hashes eventworker keeps beside arq's keys, one of each per queue (the queue name follows the
#: prefix); see ``worker.runtime.tracking``. Workers: worker id -> heartbeat. Running: job id -> which worker
#: runs it since when. Cron: cron job name -> its last start and last finished run.
WORKERS_KEY_PREFIX: Final = "eventworker:workers:"
RUNNING_KEY_PREFIX: Final = "eventworker:running:"
CRON_KEY_PREFIX: Final = "eventworker:cron:"

#: Redis key counting a job's tries that met an unreachable database (for their back-off); the job id
#: follows the prefix. See ``worker.runtime.jobrunner``.
DB_WAITS_PREFIX: Final = "eventworker:db-waits:"

#: Redis key counting the events a producer (or a client address) sent over HTTP in one rate-limit window;
#: the producer and the window's number follow the prefix. See ``worker.http.limits``.
RATE_LIMIT_KEY_PREFIX: Final = "eventworker:http-rate:"

#: Redis key a producer waiting for replicas writes before ``WAIT`` when the job it enqueues was already
#: kept (an earlier try's): replication keeps the order of writes, so a replica holding this holds the job.
#: See ``worker.protocol.replicated``.
REPLICATION_MARK_KEY: Final = "eventworker:replication-mark"
