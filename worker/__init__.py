"""eventworker: stores CloudEvents handed over through arq/Redis exactly once in SQL.

The package is infrastructure: configuration, database wiring, logging, the
producer client and the CLI. The jobs themselves live in the sibling package
``jobs``. Importing anything here opens no connection and reads no environment.
"""

__version__ = "0.1.0"
