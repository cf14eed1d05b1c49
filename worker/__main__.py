"""``python -m worker`` is the ``eventworker`` command."""

from worker.cli import main

main()
