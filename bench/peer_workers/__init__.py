"""What a user would build instead of eventworker: the same ingest job, written with bare arq and with SAQ.

``bench/peers.py`` runs each as a worker process of its own against eventworker. The job is
written once (:mod:`bench.peer_workers.store`: a pydantic model per event, a SQLAlchemy Core
``INSERT … ON CONFLICT DO NOTHING`` per batch, one ``AsyncSession`` per job), as a competent
user writes it; :mod:`~bench.peer_workers.arq_core` and :mod:`~bench.peer_workers.saq_core` are
the two queues around it. Nothing here imports eventworker: it is the code a user writes
without it.
"""
