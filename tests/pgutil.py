"""PostgreSQL helpers for tests: a fresh, uniquely named database per test, dropped afterwards.

    from tests.pgutil import fresh_postgres_url   # a pytest fixture

    def test_study(fresh_postgres_url: str) -> None:
        storage = open_storage(fresh_postgres_url)

The server is the one of this machine (``.ci/postgres-up`` starts it). If it cannot be reached
the test is skipped with the reason, unless ``TUNER_REQUIRE_POSTGRES=1`` (set by ``.ci/run``),
in which case it fails: CI must not pass by skipping every PostgreSQL test.
``TUNER_TEST_POSTGRES`` overrides the admin URL (default
``postgresql://postgres@127.0.0.1:5432/postgres``).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from tuner.core.redact import redact

__all__ = [
    "ADMIN_URL",
    "fresh_postgres_database",
    "fresh_postgres_url",
    "postgres_unavailable_reason",
    "require_postgres",
    "terminate_backends",
]

ADMIN_URL = os.environ.get("TUNER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _libpq(url: str) -> str:
    """A SQLAlchemy-style URL as libpq understands it (no ``+driver``)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _with_database(url: str, database: str) -> str:
    base, _, _ = _libpq(url).rpartition("/")
    return f"{base}/{database}"


def postgres_unavailable_reason(admin_url: str = ADMIN_URL) -> str | None:
    """None when the server accepts connections, else why not (without a password)."""
    try:
        with psycopg.connect(_libpq(admin_url), connect_timeout=5):
            return None
    except psycopg.Error as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        return (
            f"PostgreSQL unreachable at {redact(admin_url)}: {redact(first_line)} "
            "(start it with .ci/postgres-up)"
        )


def require_postgres(admin_url: str = ADMIN_URL) -> None:
    """Skip the calling test when PostgreSQL is down (fail under TUNER_REQUIRE_POSTGRES=1)."""
    reason = postgres_unavailable_reason(admin_url)
    if reason is None:
        return
    if os.environ.get("TUNER_REQUIRE_POSTGRES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@contextlib.contextmanager
def fresh_postgres_database(
    prefix: str = "tuner_test", admin_url: str = ADMIN_URL
) -> Iterator[str]:
    """Create a uniquely named database, yield its ``postgresql+psycopg://`` URL, then drop it.

    The drop uses ``WITH (FORCE)`` so that connections a test leaves open (worker processes,
    pools) do not keep the database alive.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(admin_url), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _with_database(admin_url, name).replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        with psycopg.connect(_libpq(admin_url), autocommit=True, connect_timeout=5) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def terminate_backends(url: str, admin_url: str = ADMIN_URL) -> int:
    """Kill every server connection to the database of ``url`` (as a server restart would).

    Only that database is touched, so other users of the shared server are unaffected.
    Returns how many connections were terminated.
    """
    database = _libpq(url).rpartition("/")[2].split("?", 1)[0]
    with psycopg.connect(_libpq(admin_url), autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return sum(1 for (terminated,) in rows if terminated)


@pytest.fixture
def fresh_postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, as a ``postgresql+psycopg://`` URL."""
    require_postgres()
    with fresh_postgres_database() as url:
        yield url
