from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from storage.db import Database, alembic_config, create_engine, current_revision, migrate
from storage.tables import Base

pytestmark = pytest.mark.asyncio(loop_scope="session")

TABLES = {"users", "api_keys", "refresh_tokens", "systems", "system_members", "revoked_tokens", "alembic_version"}


@pytest.mark.parametrize(
    "empty_database_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
async def test_migrate_creates_schema_at_head_and_is_idempotent(empty_database_url: str) -> None:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert await current_revision(empty_database_url) is None

    await migrate(empty_database_url)
    await migrate(empty_database_url)  # a second service start finds nothing to do

    assert await current_revision(empty_database_url) == head
    engine = create_engine(empty_database_url)
    try:
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
            # The migrations and the models describe the same schema.
            diff = await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )
    finally:
        await engine.dispose()
    assert TABLES <= tables
    assert diff == []


async def test_sqlite_file_folder_is_created(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'not' / 'yet' / 'there' / 'hdx.db'}"
    await migrate(url)
    assert (tmp_path / "not" / "yet" / "there" / "hdx.db").is_file()
    database = Database(url)
    assert await database.ping()
    await database.dispose()


async def test_ping_is_false_when_the_database_is_unreachable() -> None:
    database = Database("postgresql+asyncpg://postgres@127.0.0.1:1/nothing")
    assert await database.ping() is False
    await database.dispose()


@pytest.mark.parametrize(
    "empty_database_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
async def test_revoked_tokens_migration_upgrades_and_downgrades(empty_database_url: str) -> None:
    from alembic import command
    from sqlalchemy.engine import Connection

    await migrate(empty_database_url, "0003")
    assert "revoked_tokens" not in await _tables(empty_database_url)
    await migrate(empty_database_url, "0004")
    assert "revoked_tokens" in await _tables(empty_database_url)

    engine = create_engine(empty_database_url)
    config = alembic_config()

    def downgrade(connection: Connection) -> None:
        config.attributes["connection"] = connection
        command.downgrade(config, "0003")

    try:
        async with engine.begin() as connection:
            await connection.run_sync(downgrade)
    finally:
        await engine.dispose()
    assert "revoked_tokens" not in await _tables(empty_database_url)
    assert await current_revision(empty_database_url) == "0003"


async def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    finally:
        await engine.dispose()
