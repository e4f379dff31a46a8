"""The database: one SQLAlchemy 2 async code path for PostgreSQL and SQLite.

URLs look like ``postgresql+asyncpg://user@host/db`` or
``sqlite+aiosqlite:////abs/path/hdx.db``. ``migrate(url)`` brings the schema to
the newest Alembic revision and is run when a service or the CLI starts.
``unavailable(exc)`` tells an outage (the server down, restarting, out of
connections) from an error of the statement itself.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK_KEY = 0x4844_5800  # "HDX\0": any constant shared by all HDX processes
# SQLSTATE classes of a server that is gone or cannot serve now: connection exception,
# insufficient resources (too many connections), operator intervention (shutting down, starting up).
_OUTAGE_SQLSTATES = ("08", "53", "57P")
CONNECT_TIMEOUT_S = 5.0  # PostgreSQL: to open a connection
POOL_TIMEOUT_S = 10.0  # to get one from a full pool


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database could not be reached or was lost (down, restarting, out
    of connections, a network timeout), so the same request may succeed later: an outage, not an
    error of the statement. asyncpg's refused connect arrives as a bare ``ConnectionRefusedError``."""
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror | PoolTimeout):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc, OperationalError):
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return str(sqlstate or "").startswith(_OUTAGE_SQLSTATES)


def _is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _ensure_sqlite_parent(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # SQLite ignores FOREIGN KEY clauses (and ON DELETE) unless asked per connection.
    cursor.execute("PRAGMA foreign_keys=ON")
    # Several replicas and connections write the embedded database at once: with
    # WAL readers never block the writer, and a writer waits for the lock
    # instead of failing at once with "database is locked".
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url``; for SQLite the file's folder is created."""
    if _is_sqlite(url):
        _ensure_sqlite_parent(url)
        engine = create_async_engine(url, **kwargs)
        event.listen(engine.sync_engine, "connect", _configure_sqlite)
        return engine
    # A server that accepts connections but never answers would otherwise hold a request for
    # asyncpg's 60 s connect timeout; past these it is an outage (503), see ``unavailable``.
    options = {"pool_pre_ping": True, "pool_timeout": POOL_TIMEOUT_S, "connect_args": {"timeout": CONNECT_TIMEOUT_S}}
    return create_async_engine(url, **{**options, **kwargs})


class Database:
    """An engine and its session factory; one per process (service replica, CLI run)."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = create_engine(url, **engine_kwargs)
        # expire_on_commit=False: objects stay readable after commit without a reload.
        self.sessionmaker: async_sessionmaker[AsyncSession] = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessionmaker() as session:
            yield session

    async def ping(self) -> bool:
        """True when the database answers a trivial query."""
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            return True
        except Exception:  # a health check reports, it does not raise
            return False

    async def dispose(self) -> None:
        await self.engine.dispose()


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


async def migrate(url: str, revision: str = "head") -> None:
    """Upgrade the database at ``url`` to ``revision`` (default: the newest)."""
    engine = create_engine(url)
    config = alembic_config()

    def upgrade(connection: Connection) -> None:
        if connection.dialect.name == "postgresql":
            # Replicas starting together: one migrates, the others wait, then find it done.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    try:
        async with engine.begin() as connection:
            await connection.run_sync(upgrade)
    finally:
        await engine.dispose()


async def current_revision(url: str) -> str | None:
    """The revision the database is at, or None before the first migration."""
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())
    finally:
        await engine.dispose()
