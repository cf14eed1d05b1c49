"""The application's routes by area: ``events`` (CloudEvents in), ``operator`` (the JSON API under
``/api``), ``health`` (probes and metrics). The dashboard's pages are in :mod:`worker.http.dashboard`."""
