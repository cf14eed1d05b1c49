"""Every SQL statement eventworker runs, one module per area, named for what each does.

``statements`` (ingest, dead letters, failed jobs), ``history`` and ``export_copy`` (exports and
retention), ``handler_sql``, ``rollup_sql``, ``report_sql`` (the stats report), ``status_sql`` and
``operator_sql`` (what operators read and do). The dialect differences they share are in
:mod:`worker.db.dialect`.
"""
