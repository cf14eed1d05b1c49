"""CLI commands beyond the core ones in ``worker.cli``, one module per area; ``worker.cli`` registers them."""
