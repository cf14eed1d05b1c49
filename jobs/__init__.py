"""The worker's jobs, one module per job: thin coroutines over pure helpers."""
