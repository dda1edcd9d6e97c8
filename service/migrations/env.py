"""Alembic environment for the audit store.

Run programmatically by `service.audit.migrate`, which passes an open connection in `config.attributes`. For hand
use (`alembic -c <ini>` with `script_location = service/migrations`), the URL comes from `sqlalchemy.url` or
QUELL_AUDIT_URL. Our version table is `quell_alembic_version`, so the schema can share a database with other apps.
"""

from __future__ import annotations

import os

from alembic import context

from service.audit import VERSION_TABLE, make_engine, metadata

config = context.config


def _configure_and_run(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE,
                      render_as_batch=connection.dialect.name == "sqlite")  # fmt: skip
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("QUELL_AUDIT_URL", "sqlite:///.cache/audit.db")
    context.configure(url=url, target_metadata=metadata, version_table=VERSION_TABLE, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("QUELL_AUDIT_URL", "sqlite:///.cache/audit.db")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            _configure_and_run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
