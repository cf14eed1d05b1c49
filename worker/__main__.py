"""``python -m worker`` is the ``eventworker`` command."""

from worker.commands.cli import main

main()
