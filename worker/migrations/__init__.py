"""Alembic migrations, shipped inside the package so an installed worker can migrate itself."""
