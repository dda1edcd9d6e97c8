"""Alembic migrations of the audit store; applied at start-up by `service.audit.migrate` (no alembic.ini needed)."""
