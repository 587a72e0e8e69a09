"""The migrations create exactly what the models describe (no table is created by hand at start)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from emma.db import Base, import_all_models


def test_migrations_match_models(engine):
    import_all_models()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations differ; run `make migration`: {diff}"
