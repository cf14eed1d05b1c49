"""Database layer: engine and sessions, models, the SQL statements jobs call, schema checks."""
