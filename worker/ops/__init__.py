"""Observation for operators: ``status``, ``health`` and the dashboard, read from Redis and the database."""
