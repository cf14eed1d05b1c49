"""Pure logic of the jobs: exports, rollups, handlers, the ingest fast path, the report.

No I/O: no session, no Redis. The database layer (``worker.db``) builds its statements from
these shapes; the jobs (``jobs/``) join the two.
"""
