"""The HTTP face: ``eventworker serve``, a FastAPI application (see :mod:`worker.http.app`)."""
