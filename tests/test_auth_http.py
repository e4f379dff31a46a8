"""The HTTP layer: the auth router and dependencies in a small FastAPI app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import Depends, FastAPI

from api.deps import PrincipalDep, require_role, system_access, system_write_access
from api.errors import install_error_handlers
from api.routers.auth import router
from auth.api_keys import create_api_key
from configs.settings import Settings
from storage.db import Database
from storage.kv import KV
from storage.repositories import systems as systems_repo
from storage.tables import System
from tests.fixtures.db import TEST_PASSWORD, add_system, add_user

pytestmark = pytest.mark.asyncio(loop_scope="session")
BASE = "/api/v1/auth"


def build_app(db: Database, kv: KV, settings: Settings) -> FastAPI:
    app = FastAPI()
    app.state.db, app.state.kv, app.state.settings = db, kv, settings
    install_error_handlers(app)  # as api.application.create_app does
    app.include_router(router)

    @app.get("/systems/{system_id}")
    async def read_system(system: System = Depends(system_access)) -> dict:
        return {"id": system.id, "name": system.name}

    @app.put("/systems/{system_id}")
    async def change_system(system: System = Depends(system_write_access)) -> dict:
        return {"id": system.id}

    @app.get("/admin-only")
    async def admin_only(principal=Depends(require_role("admin"))) -> dict:
        return {"user": principal.username}

    @app.get("/whoami")
    async def whoami(principal: PrincipalDep) -> dict:
        return {"user": principal.username, "via": principal.via}

    return app


@pytest.fixture
async def client(db: Database, kv: KV, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(db, kv, settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://hdx.test") as client:
        yield client


async def login(client: httpx.AsyncClient, username: str, password: str = TEST_PASSWORD) -> dict:
    response = await client.post(f"{BASE}/token", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return response.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_login_refresh_reuse_logout_flow(client: httpx.AsyncClient, db: Database) -> None:
    async with db.session() as session:
        await add_user(session, "ada")

    tokens = await login(client, "ada")
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] == 900
    me = await client.get(f"{BASE}/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 200 and me.json()["username"] == "ada" and me.json()["via"] == "jwt"

    rotated = await client.post(f"{BASE}/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert rotated.status_code == 200
    new = rotated.json()
    assert new["refresh_token"] != tokens["refresh_token"]

    reused = await client.post(f"{BASE}/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert reused.status_code == 401
    assert "already used" in reused.json()["detail"]
    assert reused.headers["WWW-Authenticate"] == "Bearer"
    # Reuse ended the session: the rotated pair is dead too.
    assert (await client.get(f"{BASE}/me", headers=bearer(new["access_token"]))).status_code == 401

    again = await login(client, "ada")
    out = await client.post(f"{BASE}/logout", headers=bearer(again["access_token"]))
    assert out.status_code == 204
    after = await client.get(f"{BASE}/me", headers=bearer(again["access_token"]))
    assert after.status_code == 401 and "revoked" in after.json()["detail"]
    refused = await client.post(f"{BASE}/refresh", json={"refresh_token": again["refresh_token"]})
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]


async def test_login_accepts_the_oauth2_form(client: httpx.AsyncClient, db: Database) -> None:
    async with db.session() as session:
        await add_user(session, "ada")
    response = await client.post(f"{BASE}/token", data={"username": "ada", "password": TEST_PASSWORD})
    assert response.status_code == 200 and response.json()["access_token"]
    missing = await client.post(f"{BASE}/token", data={"username": "ada"})
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["password"]


async def test_login_errors(client: httpx.AsyncClient, db: Database, settings: Settings) -> None:
    async with db.session() as session:
        await add_user(session, "ada")
    assert (await client.post(f"{BASE}/token", json={"username": "ada"})).status_code == 422
    assert (
        await client.post(f"{BASE}/token", content=b"{not json", headers={"content-type": "application/json"})
    ).status_code == 422
    for _ in range(settings.login_max_failures):
        wrong = await client.post(f"{BASE}/token", json={"username": "ada", "password": "nope"})
        assert wrong.status_code == 401 and wrong.json()["detail"] == "incorrect username or password"
    throttled = await client.post(f"{BASE}/token", json={"username": "ada", "password": TEST_PASSWORD})
    assert throttled.status_code == 429
    assert 0 < int(throttled.headers["Retry-After"]) <= settings.login_failure_window_s
    assert "too many failed logins" in throttled.json()["detail"]


async def test_system_access_and_roles(client: httpx.AsyncClient, db: Database) -> None:
    async with db.session() as session:
        alice = await add_user(session, "alice", "engineer")
        bob = await add_user(session, "bob", "engineer")
        await add_user(session, "root", "admin")
        await add_system(session, "rig-01", alice)
        await add_system(session, "rig-02", bob)
        await add_system(session, "rig-03", bob)
        await systems_repo.grant_membership(session, system_id="rig-03", user_id=alice.id, granted_by=bob.id)
        await session.commit()
    alice_h = bearer((await login(client, "alice"))["access_token"])
    root_h = bearer((await login(client, "root"))["access_token"])

    assert (await client.get("/systems/rig-01", headers=alice_h)).json() == {"id": "rig-01", "name": "rig-01"}
    forbidden = await client.get("/systems/rig-02", headers=alice_h)
    assert forbidden.status_code == 403 and forbidden.json()["detail"] == "you may not access system 'rig-02'"
    assert (await client.get("/systems/rig-03", headers=alice_h)).status_code == 200  # granted read
    assert (await client.put("/systems/rig-03", headers=alice_h)).status_code == 403  # but not write
    assert (await client.get("/systems/rig-02", headers=root_h)).status_code == 200
    unknown = await client.get("/systems/rig-99", headers=alice_h)
    assert unknown.status_code == 404 and unknown.json()["detail"] == "system 'rig-99' not found"

    async with db.session() as session:
        await systems_repo.soft_delete_system(session, await systems_repo.get_system(session, "rig-01"))
        await session.commit()
    assert (await client.get("/systems/rig-01", headers=alice_h)).status_code == 404

    assert (await client.get("/admin-only", headers=root_h)).status_code == 200
    denied = await client.get("/admin-only", headers=alice_h)
    assert denied.status_code == 403 and denied.json()["detail"] == "this needs the admin role; you are engineer"


async def test_api_keys_over_http(client: httpx.AsyncClient, db: Database, settings: Settings) -> None:
    async with db.session() as session:
        alice = await add_user(session, "alice", "engineer", tier="pro")
        bob = await add_user(session, "bob", "engineer")
        await add_system(session, "rig-01", alice)
        await add_system(session, "rig-02", alice)
        await add_system(session, "rig-09", bob)
        key, plaintext = await create_api_key(session, owner=alice, name="gw", system_ids=["rig-01", "rig-09"])
        await session.commit()
    headers = {"X-API-Key": plaintext}

    me = (await client.get(f"{BASE}/me", headers=headers)).json()
    assert me == {
        "user_id": alice.id,
        "username": "alice",
        "role": "engineer",
        "tier": "pro",
        "via": "api_key",
        "api_key_id": key.id,
        "system_scope": ["rig-01", "rig-09"],
    }
    assert (await client.get("/systems/rig-01", headers=headers)).status_code == 200
    out_of_scope = await client.get("/systems/rig-02", headers=headers)  # alice's, but not in the key's scope
    assert out_of_scope.status_code == 403 and "outside this API key's scope" in out_of_scope.json()["detail"]
    assert (await client.get("/systems/rig-09", headers=headers)).status_code == 403  # in scope, but bob's

    no_logout = await client.post(f"{BASE}/logout", headers=headers)
    assert no_logout.status_code == 400 and "needs a bearer token" in no_logout.json()["detail"]

    async with db.session() as session:
        from auth.api_keys import revoke_api_key

        await revoke_api_key(session, key.id)
        await session.commit()
    # Revoked in the database behind the app's back (as `hdx keys revoke` does): the replica's
    # access cache may accept the key for at most access_cache_ttl_s, never longer.
    cached = await client.get("/whoami", headers=headers)
    assert cached.status_code == 200
    await asyncio.sleep(settings.access_cache_ttl_s)
    revoked = await client.get("/whoami", headers=headers)
    assert revoked.status_code == 401 and revoked.json()["detail"] == "API key has been revoked"


async def test_openapi_documents_both_login_bodies(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    content = schema["paths"][f"{BASE}/token"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/x-www-form-urlencoded"} <= content.keys()
    assert "OAuth2PasswordBearer" in schema["components"]["securitySchemes"]
