"""Markers shared by the production-shape tests."""

import os

import pytest

# The multi-process tests need production's stores: `make test-postgres` and CI's second
# run set both.
needs_postgres_and_redis = pytest.mark.skipif(
    not (os.environ.get("DATABASE_URL", "").startswith("postgres") and os.environ.get("REDIS_URL")),
    reason="needs PostgreSQL and Redis: set DATABASE_URL and REDIS_URL "
    "(`make test-postgres` does; CI runs it)",
)
