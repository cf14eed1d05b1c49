"""What runs around every job in a worker: its context, the job runner and retry policy, and the
worker's own bookkeeping (heartbeat, running jobs, metrics, queue samples)."""
