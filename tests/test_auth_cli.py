"""``hdx users|keys|systems`` against a SQLite file named by HDX_DATABASE_URL."""

from __future__ import annotations

import asyncio

import pytest
import typer
from typer.testing import CliRunner

from auth.api_keys import verify_api_key
from cli.users import keys_app, systems_app, users_app
from storage.db import Database

runner = CliRunner()
cli = typer.Typer()
cli.add_typer(users_app, name="users")
cli.add_typer(keys_app, name="keys")
cli.add_typer(systems_app, name="systems")


@pytest.fixture
def database_file(tmp_path, monkeypatch) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'state' / 'hdx.db'}"
    monkeypatch.setenv("HDX_DATABASE_URL", url)
    return url


def invoke(*args: str, input: str | None = None):
    return runner.invoke(cli, list(args), input=input)


def test_quick_start_users_systems_and_keys(database_file: str) -> None:
    created = invoke(
        "users",
        "create",
        "--username",
        "ada",
        "--role",
        "engineer",
        "--tier",
        "pro",
        input="s3cret pass\ns3cret pass\n",
    )
    assert created.exit_code == 0, created.output
    assert "created user 'ada'" in created.output and "s3cret" not in created.output

    listed = invoke("users", "list")
    assert "ada\tengineer\tpro\tactive" in listed.output

    assert invoke("systems", "create", "--id", "rig-01", "--name", "Test rig", "--owner", "ada").exit_code == 0
    key = invoke("keys", "create", "--owner", "ada", "--name", "gateway", "--systems", "rig-01")
    assert key.exit_code == 0, key.output
    plaintext = key.output.strip().splitlines()[-1]
    assert plaintext.startswith("hdx_")

    async def check() -> tuple[list[str], str]:
        database = Database(database_file)
        async with database.session() as session:
            found, owner = await verify_api_key(session, plaintext)
            result = (found.system_scope, owner.username)
            await session.commit()
        await database.dispose()
        return result

    assert asyncio.run(check()) == (["rig-01"], "ada")
    assert "gateway" in invoke("keys", "list").output
    revoked = invoke("keys", "revoke", "1")
    assert revoked.exit_code == 0 and "revoked API key 1" in revoked.output
    again = invoke("keys", "revoke", "1")
    assert again.exit_code == 1 and "no active API key with id 1" in again.output


def test_cli_errors_are_clear(database_file: str) -> None:
    short = invoke("users", "create", "--username", "ada", input="short\nshort\n")
    assert short.exit_code == 1 and "at least 8 characters" in short.output
    assert invoke("users", "create", "--username", "ada", input="long enough\nlong enough\n").exit_code == 0
    dup = invoke("users", "create", "--username", "ada", input="long enough\nlong enough\n")
    assert dup.exit_code == 1 and "already exists" in dup.output
    bad_role = invoke("users", "create", "--username", "eve", "--role", "root", input="long enough\nlong enough\n")
    assert bad_role.exit_code == 2
    no_owner = invoke("systems", "create", "--id", "rig-01", "--name", "r", "--owner", "nobody")
    assert no_owner.exit_code == 1 and "no user 'nobody'" in no_owner.output
    unknown_system = invoke("keys", "create", "--owner", "ada", "--name", "k", "--systems", "rig-01,rig-02")
    assert unknown_system.exit_code == 1 and "unknown systems: rig-01, rig-02" in unknown_system.output
