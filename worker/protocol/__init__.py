"""What a producer needs and nothing more: the event schema, the job wire format, the Redis client.

Nothing here imports SQLAlchemy (an import-linter contract in ``pyproject.toml`` checks it), so an
app can enqueue events without the database layer.
"""
