"""``hdx bootstrap``: make a fresh checkout servable on the embedded defaults.

Idempotent: trains models only when the store has none, builds the
retrieval index only when none exists, creates the development admin and a
demo system only once. A demo system that was deleted stays deleted (its id is
still taken: its history and audit trail name it); the bootstrap says so and
carries on. The quick start runs it before ``serve run``.
"""

from __future__ import annotations

import secrets

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from api.schemas.systems import channel_specs
from auth.passwords import hash_password
from cli.users import run_db
from configs.settings import get_settings
from diagnosis.profiles import choose_profile
from diagnosis.registry import FAMILY_NAMES
from diagnosis.store import ModelStore
from storage.repositories import systems as systems_repo
from storage.repositories import users as users_repo

DEV_ADMIN = "admin"
DEMO_SYSTEM = "rig-01"  # declares no channels: the default profile (uci-1hz)
# A unit that sends the simple alias form (pressure, temperature, flow, vibration): the basic profile.
BASIC_SYSTEM = "press-07"
BASIC_CHANNELS = ["PS1", "TS1", "FS1", "VS1"]
BASIC_TOPOLOGY = {  # no accumulator: its diagnoses cover the pump, the valve and the cooler only
    "nodes": [
        {"id": "pump", "kind": "pump"},
        {"id": "valve", "kind": "valve"},
        {"id": "cooler", "kind": "cooler"},
        {"id": "tank", "kind": "tank"},
    ],
    "edges": [{"from": "pump", "to": "valve"}, {"from": "valve", "to": "cooler"}, {"from": "cooler", "to": "tank"}],
}


def register(app: typer.Typer) -> None:
    app.command()(bootstrap)


def bootstrap(
    source: str = typer.Option("simulator", help="training data when no model exists: simulator or uci"),
) -> None:
    """Train the shipped profiles (those missing), build the index (if needed), create the dev
    admin and two demo systems."""
    settings = get_settings()
    settings.effective_jwt_secret()  # fail here, not in every replica, when the secret is unusable
    store = ModelStore(settings.model_store_uri)
    for profile in settings.bootstrap_profiles:
        scoped = store.for_profile(profile)
        version = scoped.reference_versions()[-1:] or [None]
        missing = FAMILY_NAMES if version[0] is None else [f for f in FAMILY_NAMES if scoped.problem(f, version[0])]
        if not missing:
            typer.echo(f"profile {profile}: version {version[0]} present in {store.uri}")
            continue
        from pipelines.train import format_report, run_training

        data = source if profile == "uci-1hz" else "simulator"  # the UCI folder has only the 1 Hz channels
        typer.echo(f"profile {profile}: no servable version in {store.uri}, training on the {data} data …")
        report = run_training(data, settings, profile=profile)
        typer.echo(format_report(report))

    from pipelines.build_index import ensure_index

    manifest = ensure_index(settings)
    typer.echo(f"retrieval index: {'built ' + manifest['version'] if manifest else 'present'}")

    password, demo_deleted = _ensure_admin_and_system()
    if demo_deleted:
        typer.echo(
            f"demo system {DEMO_SYSTEM!r} was deleted earlier; its id stays taken, so it is not created again. "
            "Register a system (POST /api/v1/systems) and pass its id to `hdx simulate --system-id`."
        )
    base = "http://127.0.0.1:8000/api/v1"
    typer.echo("\nHDX is ready to start. Once Serve is up:")
    if password:
        typer.echo(f"  development admin: {DEV_ADMIN} / {password}   (shown once; saved nowhere)")
    else:
        typer.echo(f"  development admin: {DEV_ADMIN} (created earlier; `hdx users create` makes more)")
    typer.echo(
        f"  TOKEN=$(curl -s -X POST {base}/auth/token -H 'content-type: application/json' \\\n"
        f'      -d \'{{"username": "{DEV_ADMIN}", "password": "<password>"}}\' '
        "| python3 -c 'import sys,json; print(json.load(sys.stdin)[\"access_token\"])')\n"
        f"  .venv/bin/hdx simulate --valve 73 --system-id {DEMO_SYSTEM} > /tmp/cycle.json\n"
        f'  curl -s -X POST {base}/diagnostics/predict -H "Authorization: Bearer $TOKEN" '
        f"-H 'content-type: application/json' -d @/tmp/cycle.json\n"
        f"  # {BASIC_SYSTEM} sends the alias form and is diagnosed with the basic profile:\n"
        f"  .venv/bin/hdx simulate --pump 2 --profile basic --aliases --system-id {BASIC_SYSTEM} > /tmp/basic.json\n"
        f'  curl -s -X POST {base}/diagnostics/predict -H "Authorization: Bearer $TOKEN" '
        f"-H 'content-type: application/json' -d @/tmp/basic.json"
    )


def _ensure_admin_and_system() -> tuple[str | None, bool]:
    """Creates the dev admin and the demo system; returns the admin's new random password (None
    when it existed) and whether the demo system had been deleted (then it is left so)."""

    async def work(session: AsyncSession) -> tuple[str | None, bool]:
        password = None
        admin = await users_repo.get_user_by_username(session, DEV_ADMIN)
        if admin is None:
            password = secrets.token_urlsafe(12)
            admin = await users_repo.create_user(
                session, username=DEV_ADMIN, password_hash=hash_password(password), role="admin", tier="enterprise"
            )
        demo = await systems_repo.get_system(session, DEMO_SYSTEM, include_deleted=True)
        if demo is None:
            await systems_repo.create_system(session, system_id=DEMO_SYSTEM, name="Demo test rig", owner_id=admin.id)
        if await systems_repo.get_system(session, BASIC_SYSTEM, include_deleted=True) is None:
            trained = ModelStore(get_settings().model_store_uri).trained_profiles()
            choice = choose_profile(BASIC_CHANNELS, trained)
            await systems_repo.create_system(
                session,
                system_id=BASIC_SYSTEM,
                name="Demo press (pressure, temperature, flow, vibration)",
                owner_id=admin.id,
                channels=channel_specs(BASIC_CHANNELS),
                topology=BASIC_TOPOLOGY,
                profile=choice.profile,
                profile_reason=choice.reason,
            )
        return password, demo is not None and demo.deleted_at is not None

    return run_db(work)
