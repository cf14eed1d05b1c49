"""Example event handlers: ``EVENTWORKER_HANDLER_MODULES=examples.<module>``, with ``PYTHONPATH=.``."""
