"""The producer client's public path: ``from worker.producer import EventProducer``.

The client lives in :mod:`worker.protocol.producer`; this name stays because apps import it.
"""

from worker.errors import EnqueueError
from worker.protocol.producer import EventProducer, batches

__all__ = ["EnqueueError", "EventProducer", "batches"]
