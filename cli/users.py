"""``hdx users|keys|systems``: manage accounts, API keys and systems from a shell.

Each command migrates the configured database (settings.database_url) first, so
it works on a fresh install.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from auth import api_keys
from auth.passwords import hash_password
from auth.roles import Role
from configs.settings import get_settings
from storage.db import Database, migrate
from storage.repositories import api_keys as keys_repo
from storage.repositories import systems as systems_repo
from storage.repositories import users as users_repo

users_app = typer.Typer(help="User accounts.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys for machines.", no_args_is_help=True)
systems_app = typer.Typer(help="Monitored systems (minimal; full management is in the API).", no_args_is_help=True)

T = TypeVar("T")


def run_db(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Migrate, open a session, run ``work`` in it and commit."""

    async def main() -> T:
        url = get_settings().database_url
        await migrate(url)
        db = Database(url)
        try:
            async with db.session() as session:
                result = await work(session)
                await session.commit()
                return result
        finally:
            await db.dispose()

    try:
        return asyncio.run(main())
    except IntegrityError as error:
        typer.echo(f"error: conflicts with existing data: {error.orig}", err=True)
        raise typer.Exit(1) from error


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


@users_app.command("create")
def create_user(
    username: Annotated[str, typer.Option(help="Login name.")],
    password: Annotated[str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True)],
    role: Annotated[Role, typer.Option(case_sensitive=False)] = Role.VIEWER,
    tier: Annotated[str, typer.Option(help="Rate-limit tier.")] = "free",
) -> None:
    """Create a user."""
    if len(password) < 8:
        raise _fail("password must be at least 8 characters")

    async def work(session: AsyncSession) -> int:
        if await users_repo.get_user_by_username(session, username):
            raise _fail(f"user {username!r} already exists")
        user = await users_repo.create_user(
            session, username=username, password_hash=hash_password(password), role=role.value, tier=tier
        )
        return user.id

    user_id = run_db(work)
    typer.echo(f"created user {username!r} (id {user_id}, role {role.value}, tier {tier})")


@users_app.command("list")
def list_users() -> None:
    """List users."""

    async def work(session: AsyncSession) -> list[str]:
        return [
            f"{u.id}\t{u.username}\t{u.role}\t{u.tier}\t{'active' if u.is_active else 'disabled'}"
            for u in await users_repo.list_users(session)
        ]

    rows = run_db(work)
    typer.echo("id\tusername\trole\ttier\tstatus")
    for row in rows:
        typer.echo(row)


@keys_app.command("create")
def create_key(
    owner: Annotated[str, typer.Option(help="Username the key acts for.")],
    name: Annotated[str, typer.Option(help="What the key is for, e.g. 'rig-01 gateway'.")],
    systems: Annotated[str, typer.Option(help="Comma-separated system ids the key may reach.")],
    tier: Annotated[str | None, typer.Option(help="Rate-limit tier; default: the owner's.")] = None,
) -> None:
    """Create an API key and print it (it is shown only this once)."""
    system_ids = [s.strip() for s in systems.split(",") if s.strip()]
    if not system_ids:
        raise _fail("--systems needs at least one system id")

    async def work(session: AsyncSession) -> tuple[int, str]:
        user = await users_repo.get_user_by_username(session, owner)
        if user is None:
            raise _fail(f"no user {owner!r}")
        missing = [s for s in system_ids if await systems_repo.get_system(session, s) is None]
        if missing:
            raise _fail(f"unknown systems: {', '.join(missing)}")
        key, plaintext = await api_keys.create_api_key(session, owner=user, name=name, system_ids=system_ids, tier=tier)
        return key.id, plaintext

    key_id, plaintext = run_db(work)
    typer.echo(f"created API key {key_id} for {owner!r} (systems: {', '.join(system_ids)})")
    typer.echo("store it now, it is not shown again:")
    typer.echo(plaintext)


@keys_app.command("revoke")
def revoke_key(key_id: Annotated[int, typer.Argument(help="The key's id (see 'keys list').")]) -> None:
    """Revoke an API key."""

    async def work(session: AsyncSession) -> bool:
        return await api_keys.revoke_api_key(session, key_id)

    if not run_db(work):
        raise _fail(f"no active API key with id {key_id}")
    typer.echo(f"revoked API key {key_id}")


@keys_app.command("list")
def list_keys() -> None:
    """List API keys (never their secrets)."""

    async def work(session: AsyncSession) -> list[str]:
        return [
            f"{k.id}\thdx_{k.prefix}_…\t{k.name}\t{k.user_id}\t{','.join(k.system_scope)}\t"
            f"{'revoked' if k.revoked_at else 'active'}"
            for k in await keys_repo.list_api_keys(session)
        ]

    rows = run_db(work)
    typer.echo("id\tkey\tname\towner_id\tsystems\tstatus")
    for row in rows:
        typer.echo(row)


@systems_app.command("create")
def create_system(
    id: Annotated[str, typer.Option("--id", help="System id, e.g. rig-01.")],
    name: Annotated[str, typer.Option(help="Display name.")],
    owner: Annotated[str, typer.Option(help="Owner's username.")],
    type: Annotated[str, typer.Option("--type")] = "hydraulic_rig",
    location: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Register a system."""

    async def work(session: AsyncSession) -> None:
        user = await users_repo.get_user_by_username(session, owner)
        if user is None:
            raise _fail(f"no user {owner!r}")
        if await systems_repo.get_system(session, id, include_deleted=True):
            raise _fail(f"system {id!r} already exists")
        await systems_repo.create_system(
            session, system_id=id, name=name, owner_id=user.id, type=type, location=location
        )

    run_db(work)
    typer.echo(f"created system {id!r} owned by {owner!r}")
