"""The ``eventworker`` command line: ``cli`` is the root group, and each other module one area of commands."""
