"""Alembic environment: the registry's SQLModel metadata, the URL from the config set by ``db.migrate``."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import vigil_registry.models  # noqa: F401 - registers the tables on SQLModel.metadata
from vigil_registry.db import make_engine

config = context.config
target_metadata = SQLModel.metadata


def run_offline() -> None:
    """Emit SQL without a connection (``alembic upgrade --sql``)."""
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Migrate through a live connection; SQLite alters tables in batch mode."""
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("sqlalchemy.url is not set: run migrations through vigil_registry.db.migrate")
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
