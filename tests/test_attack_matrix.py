"""The attack matrix: what an attacker tries over HTTP, and what the app must answer (issue 12, "Trust").

* Tokens (``CREDENTIAL_CASES``, ``REFRESH_CASES``): every way to forge or misuse a JWT or an API key
  is a 401 that says why, on a plain read, a system route and logout, and changes nothing.
* Sessions: a reused refresh token ends its whole session (the rotated successors too), and a
  logout holds on another ingress replica and after a restart, with and without Redis.
* Login throttling: concurrent bursts per username and per client address.
* Cross-system access (``ROUTES_WITH_IDS``): every route that takes an id, as the app's OpenAPI
  document says (a path parameter, or a query or body field named ``*_id``), tried by a user and by
  API keys scoped to other systems against another user's system: 403 for a system that is not
  theirs, 404 for another system's row under their own system's path, never its data, and the
  victim's system unchanged. Each case then sends the same request as its rightful caller, who
  gets a 2xx: the refusal came from the access check, not from a malformed request.
* API key scopes (``OTHER_ROUTES`` and the routes with an ``unscoped_key`` dependency): an admin's
  key scoped to one system, and a key scoped to no system, on every other route.

The tables name every route of the app: a new route without an entry fails
``test_the_matrix_covers_every_route``. Most cases run in-process (``create_app`` with its
lifespan, httpx over ASGI) on SQLite and on PostgreSQL; a representative subset runs against
the real Serve application (its proxy and ingress replica), in the last section.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import inspect
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from types import SimpleNamespace

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.routing import iter_route_contexts
from sqlalchemy import func, select

from api.application import create_app
from auth.api_keys import generate_api_key
from auth.passwords import hash_password
from auth.roles import Role
from auth.tokens import REQUIRED_CLAIMS
from configs.settings import DEV_JWT_SECRET
from storage.kv import RedisKV
from storage.repositories import api_keys as keys_repo
from storage.repositories import users as users_repo
from storage.tables import ApiKey, Feedback, PredictionRecord, Reading, System, SystemMember, User
from tests.fixtures.db import DATABASE_KINDS, REDIS_URL, TEST_PASSWORD, temporary_database
from tests.fixtures.serve_app import simulated_request
from tests.test_platform_support import StandInEnsemble, platform_settings

SECRET = "attack-matrix-jwt-secret-" + "0123456789abcdef" * 3  # 73 bytes: fit for every HS algorithm
TOKEN_URL, REFRESH_URL, LOGOUT_URL, ME_URL = (f"/api/v1/auth/{p}" for p in ("token", "refresh", "logout", "me"))
CYCLE = simulated_request("any", seed=11)["sensor_data"]
INTERNAL_DETAIL = "RayActorError: replica at /srv/hdx/models/xgboost died"  # for admins' eyes only
KV_KINDS = ["memory", pytest.param("redis", marks=pytest.mark.redis)]


# --- the app, in-process ------------------------------------------------------------------------
class StandInModels(StandInEnsemble):
    """Answers every cycle; one model deployment reports an internal error that only admins may read."""

    def __init__(self) -> None:
        super().__init__()

        async def models_info():
            return {"catboost": {"version": "v1"}, "xgboost": {"error": INTERNAL_DETAIL}}

        self.models_info.remote = models_info


class StandInAssistant:
    """The RagPipeline handle's ``query``; remembers which systems' diagnoses it was given."""

    def __init__(self) -> None:
        self.systems: list[str | None] = []
        assistant = self

        class _Query:
            async def remote(self, query, max_results, system_id, diagnosis):
                assistant.systems.append(system_id)
                meta = {"model": "stand-in", "processing_time_ms": 1.0, "retrieval_ms": 1.0, "tokens_used": 1}
                return {"response": "check the cooler", "sources": [], "metadata": {**meta, "index_version": None}}

        class _Info:
            async def remote(self):
                return {"index_version": None}

        class _Document:
            async def remote(self, document_id):
                if document_id != "cooler-cleaning":
                    return None
                section = {"heading_path": "Cooler", "heading": "Cooler", "anchor": "", "kind": "overview", "text": "x"}
                doc = {"document_id": document_id, "title": "Cooler", "components": [], "tags": []}
                return {**doc, "index_version": "v1", "sections": [section]}

        self.query, self.info, self.document = _Query(), _Info(), _Document()


def matrix_settings(home, database_url: str, **overrides):
    overrides = {"login_client_max_attempts": 10_000, **overrides}
    return platform_settings(home, database_url, jwt_secret=SECRET, dev_mode=False, **overrides)


@asynccontextmanager
async def replica(settings, client: tuple[str, int] = ("10.9.0.1", 40000)):
    """One ingress replica's app, started (migrations, writers, key-value store); yields ``(http, app)``."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        app.state.ensemble = StandInModels()
        app.state.rag = StandInAssistant()
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://hdx") as http:
            yield http, app


@dataclass
class Person:
    id: int
    username: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.access_token)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


_HASH: list[str] = []


def password_hash() -> str:
    """One argon2 hash for every test user (each hash costs ~0.1 s of CPU)."""
    if not _HASH:
        _HASH.append(hash_password(TEST_PASSWORD))
    return _HASH[0]


async def new_user(db, role: str = "engineer") -> tuple[int, str]:
    name = f"{role[:3]}-{uuid.uuid4().hex[:10]}"
    async with db.sessionmaker() as session:
        user = await users_repo.create_user(session, username=name, password_hash=password_hash(), role=role)
        await session.commit()
        return user.id, name


async def login(http: httpx.AsyncClient, username: str) -> dict:
    r = await http.post(TOKEN_URL, json={"username": username, "password": TEST_PASSWORD})
    assert r.status_code == 200, r.text
    return r.json()


async def scoped_key(db, owner_id: int, systems: list[str]) -> dict[str, str]:
    """Headers with a new API key of the owner. Stored through the repository, so a scope of no
    systems can be made too (``auth.api_keys`` refuses one now; older rows may have it)."""
    generated = generate_api_key()
    async with db.sessionmaker() as session:
        await keys_repo.create_api_key(
            session,
            prefix=generated.prefix,
            key_hash=generated.key_hash,
            name="matrix",
            user_id=owner_id,
            system_scope=sorted(systems),
            tier="free",
        )
        await session.commit()
    return {"X-API-Key": generated.plaintext}


class World:
    """One app replica on its own database with a victim's system and the attackers around it."""

    def __init__(self, http: httpx.AsyncClient, app, url: str, settings) -> None:
        self.http, self.app, self.url, self.settings = http, app, url, settings
        self.db = app.state.db
        self.marker = uuid.uuid4().hex[:12]

    async def person(self, role: str = "engineer") -> Person:
        user_id, name = await new_user(self.db, role)
        pair = await login(self.http, name)
        return Person(user_id, name, pair["access_token"], pair["refresh_token"])

    async def system(self, owner: Person, **fields) -> str:
        system_id = f"rig-{uuid.uuid4().hex[:10]}"
        body = {"id": system_id, "name": system_id, **fields}
        r = await self.http.post("/api/v1/systems", json=body, headers=owner.headers)
        assert r.status_code == 201, r.text
        return system_id

    async def predict(self, headers: dict, system_id: str, trace_id: str | None = None) -> int:
        extra = {"X-Request-ID": trace_id} if trace_id else {}
        body = {"system_id": system_id, "sensor_data": CYCLE, "use_cache": False}
        r = await self.http.post("/api/v1/diagnostics/predict", json=body, headers={**headers, **extra})
        assert r.status_code == 200, r.text
        return int(r.headers["X-Prediction-ID"])

    async def grant(self, owner: Person, system_id: str, member: Person, permission: str = "read") -> None:
        body = {"username": member.username, "permission": permission}
        r = await self.http.post(f"/api/v1/systems/{system_id}/members", json=body, headers=owner.headers)
        assert r.status_code == 201, r.text

    async def populate(self) -> None:
        m = self.marker
        self.victim, self.mallory = await self.person(), await self.person()
        self.admin, self.guest = await self.person("admin"), await self.person()
        # The victim's system and what it holds; the markers must never reach an attacker.
        self.v = await self.system(self.victim, name=f"secret-name-{m}", location=f"secret-place-{m}")
        self.v_prediction = await self.predict(self.victim.headers, self.v, trace_id=f"secret-trace-{m}")
        cycle = {"idempotency_key": f"secret-key-{m}", "started_at": "2026-03-01T12:00:00Z", "sensor_data": CYCLE}
        r = await self.http.post(
            "/api/v1/ingestion/cycles", json={"system_id": self.v, "cycles": [cycle]}, headers=self.victim.headers
        )
        assert r.status_code == 200 and r.json()["stored"] == 1, r.text
        await self.grant(self.victim, self.v, self.guest)
        self.markers = [f"secret-name-{m}", f"secret-place-{m}", f"secret-trace-{m}", f"secret-key-{m}"]
        self.markers.append(self.guest.username)
        self.v2 = await self.system(self.victim)  # the victim's other system
        self.m = await self.system(self.mallory)
        # The attackers: whose credentials, and the system they may use.
        self.attackers = {
            "user": (self.mallory.headers, self.m),
            "user's key": (await scoped_key(self.db, self.mallory.id, [self.m]), self.m),
            "owner's key scoped elsewhere": (await scoped_key(self.db, self.victim.id, [self.v2]), self.v2),
            "admin's key scoped elsewhere": (await scoped_key(self.db, self.admin.id, [self.m]), self.m),
        }
        self.victim_before = await self.victim_state()

    async def victim_state(self) -> dict:
        """What the victim's system holds, read from the database."""
        v = self.v
        async with self.db.sessionmaker() as s:
            system = await s.get(System, v)

            async def count(table) -> int:
                return await s.scalar(select(func.count()).select_from(table).where(table.system_id == v))

            members = (
                await s.execute(
                    select(SystemMember.user_id, SystemMember.permission).where(SystemMember.system_id == v)
                )
            ).all()
            return {
                "system": (system.name, system.location, system.deleted_at),
                "readings": await count(Reading),
                "predictions": await count(PredictionRecord),
                "feedback": await count(Feedback),
                "members": sorted(tuple(row) for row in members),
            }

    async def system_count(self) -> int:
        async with self.db.sessionmaker() as s:
            return await s.scalar(select(func.count()).select_from(System))


@pytest.fixture(scope="module", params=DATABASE_KINDS)
async def world(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("attack")
    async with temporary_database(request.param, folder) as url:
        settings = matrix_settings(folder, url)
        async with replica(settings) as (http, app):
            w = World(http, app, url, settings)
            await w.populate()
            yield w


def claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


# --- credentials: forged and misused tokens and keys ---------------------------------------------
def _b64(data: bytes | dict) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _hmac_signed(header: dict, claims: dict, key: bytes) -> str:
    signing_input = f"{_b64(header)}.{_b64(claims)}"
    return f"{signing_input}.{_b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())}"


def _unsigned(alg: str, claims: dict, signature: str = "") -> str:
    return f"{_b64({'alg': alg, 'typ': 'JWT'})}.{_b64(claims)}.{signature}"


def _swap_payload(token: str, **changes) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{_b64({**claims_of(token), **changes})}.{signature}"


def _alter_signature(token: str) -> str:
    head, _, signature = token.rpartition(".")
    flipped = "A" if signature[5] != "A" else "B"
    return f"{head}.{signature[:5]}{flipped}{signature[6:]}"


def _rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_pem() -> bytes:
    return (
        _rsa_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _signed(claims: dict, secret: str = SECRET, **changes) -> str:
    """Validly signed: the attacker cannot do this; it shows the claims are checked, not only the signature."""
    return jwt.encode({k: v for k, v in {**claims, **changes}.items() if v is not None}, secret, algorithm="HS256")


def _without(claim: str):
    return lambda w, c, secret: bearer(_signed(c, secret, **{claim: None}))


NOW = int(time.time())
Credentials = Callable[["World", dict, str], dict[str, str]]
# name → (headers from the world, the victim's access-token claims and the JWT secret; what the 401 says)
CREDENTIAL_CASES: dict[str, tuple[Credentials, str]] = {
    "no credentials": (lambda w, c, s: {}, "missing credentials"),
    "another auth scheme": (lambda w, c, s: {"Authorization": "Token abc"}, "malformed Authorization header"),
    "basic auth": (lambda w, c, s: {"Authorization": "Basic YWRtaW46YWRtaW4="}, "malformed Authorization header"),
    "empty bearer": (lambda w, c, s: {"Authorization": "Bearer"}, "malformed Authorization header"),
    "not a JWT": (lambda w, c, s: bearer("not-a-jwt"), "token is malformed"),
    "two segments": (lambda w, c, s: bearer("abc.def"), "token is malformed"),
    "alg none": (lambda w, c, s: bearer(_unsigned("none", c)), "token algorithm is not allowed (only HS256)"),
    "alg None": (lambda w, c, s: bearer(_unsigned("None", c)), "token algorithm is not allowed"),
    "alg NONE keeping a signature": (
        lambda w, c, s: bearer(_unsigned("NONE", c, w.victim.access_token.rsplit(".", 1)[1])),
        "token algorithm is not allowed",
    ),
    "HS384 with the right secret": (
        lambda w, c, s: bearer(jwt.encode(c, s, algorithm="HS384")),
        "token algorithm is not allowed (only HS256)",
    ),
    "HS512 with the right secret": (
        lambda w, c, s: bearer(jwt.encode(c, s, algorithm="HS512")),
        "token algorithm is not allowed (only HS256)",
    ),
    "RS256 with the attacker's key": (
        lambda w, c, s: bearer(jwt.encode(c, _rsa_key(), algorithm="RS256")),
        "token algorithm is not allowed",
    ),
    "ES256 with the attacker's key": (
        lambda w, c, s: bearer(jwt.encode(c, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")),
        "token algorithm is not allowed",
    ),
    "RS256 header, HMAC with the secret": (
        lambda w, c, s: bearer(_hmac_signed({"alg": "RS256", "typ": "JWT"}, c, s.encode())),
        "token algorithm is not allowed",
    ),
    "HS256 keyed with a public key": (
        lambda w, c, s: bearer(_hmac_signed({"alg": "HS256", "typ": "JWT"}, c, _public_pem())),
        "token signature is invalid",
    ),
    "HS256 with another secret": (
        lambda w, c, s: bearer(_signed(c, "another-secret-" + "x" * 40)),
        "token signature is invalid",
    ),
    "payload tampered: role admin": (
        lambda w, c, s: bearer(_swap_payload(w.victim.access_token, role="admin")),
        "token signature is invalid",
    ),
    "payload tampered: another user": (
        lambda w, c, s: bearer(_swap_payload(w.victim.access_token, sub=str(w.admin.id))),
        "token signature is invalid",
    ),
    "payload tampered: expiry extended": (
        lambda w, c, s: bearer(_swap_payload(w.victim.access_token, exp=c["exp"] + 86400)),
        "token signature is invalid",
    ),
    "signature altered": (
        lambda w, c, s: bearer(_alter_signature(w.victim.access_token)),
        "token signature is invalid",
    ),
    "signature stripped": (
        lambda w, c, s: bearer(w.victim.access_token.rsplit(".", 1)[0] + "."),
        "token signature is invalid",
    ),
    "expired": (lambda w, c, s: bearer(_signed(c, s, exp=NOW - 3600, iat=NOW - 7200, nbf=NOW - 7200)), "expired"),
    "not valid yet": (lambda w, c, s: bearer(_signed(c, s, nbf=NOW + 3600)), "token is not valid yet"),
    "issued in the future": (lambda w, c, s: bearer(_signed(c, s, iat=NOW + 3600)), "token is not valid yet"),
    "wrong audience": (lambda w, c, s: bearer(_signed(c, s, aud="another-api")), "token audience is wrong"),
    "audiences without ours": (lambda w, c, s: bearer(_signed(c, s, aud=["a", "b"])), "token audience is wrong"),
    "wrong issuer": (lambda w, c, s: bearer(_signed(c, s, iss="evil")), "token issuer is wrong"),
    **{f"missing {claim}": (_without(claim), f"token is missing the {claim!r} claim") for claim in REQUIRED_CLAIMS},
    "unsupported critical header": (
        lambda w, c, s: bearer(jwt.encode(c, s, algorithm="HS256", headers={"crit": ["exp"]})),
        "token is invalid",
    ),
    "expiry not a number": (lambda w, c, s: bearer(_signed(c, s, exp="never")), "token is malformed"),
    "refresh token as access token": (
        lambda w, c, s: bearer(w.victim.refresh_token),
        "a refresh token was sent where a access token is needed",
    ),
    "unknown token type": (lambda w, c, s: bearer(_signed(c, s, type="admin")), "a admin token was sent"),
    "subject not a user id": (lambda w, c, s: bearer(_signed(c, s, sub="root")), "token subject is not a user id"),
    "subject of no user": (lambda w, c, s: bearer(_signed(c, s, sub="2000000000")), "no longer exists"),
    "token of a disabled user": (lambda w, c, s: bearer(w.leaver_token), "no longer exists or is disabled"),
    "API key malformed": (lambda w, c, s: {"X-API-Key": "secret"}, "API key is malformed"),
    "API key unknown": (lambda w, c, s: {"X-API-Key": generate_api_key().plaintext}, "API key is invalid"),
    "API key with a wrong secret": (
        lambda w, c, s: {"X-API-Key": w.revocable_key["X-API-Key"][:-4] + "AAAA"},
        "API key is invalid",
    ),
    "API key revoked": (lambda w, c, s: w.revoked_key, "API key has been revoked"),
}


@pytest.fixture(scope="module")
async def credential_world(world: World) -> World:
    """The world plus a disabled user's token and a revoked key (both never used before)."""
    leaver = await world.person()
    world.leaver_token = leaver.access_token
    world.revocable_key = await scoped_key(world.db, world.victim.id, [world.v])
    world.revoked_key = await scoped_key(world.db, world.victim.id, [world.v])
    async with world.db.sessionmaker() as s:
        (await s.get(User, leaver.id)).is_active = False
        revoked_prefix = world.revoked_key["X-API-Key"].split("_")[1]
        key = await s.scalar(select(ApiKey).where(ApiKey.prefix == revoked_prefix))
        await keys_repo.revoke_api_key(s, key.id)
        await s.commit()
    return world


@pytest.mark.parametrize("case", list(CREDENTIAL_CASES))
async def test_forged_and_misused_credentials_are_refused(credential_world: World, case: str) -> None:
    w = credential_world
    make, expected = CREDENTIAL_CASES[case]
    headers = make(w, claims_of(w.victim.access_token), SECRET)
    body = {"system_id": w.v, "sensor_data": CYCLE}
    for method, url, kwargs in (
        ("GET", ME_URL, {}),
        ("GET", f"/api/v1/systems/{w.v}", {}),
        ("POST", "/api/v1/diagnostics/predict", {"json": body}),
        ("POST", LOGOUT_URL, {}),
    ):
        r = await w.http.request(method, url, headers=headers, **kwargs)
        assert r.status_code == 401, (url, r.text)
        assert expected in r.json()["detail"], (url, r.json())
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert not any(marker in r.text for marker in w.markers)
    # Nothing was revoked or changed by the refused calls: the victim's own session still works.
    assert (await w.http.get(ME_URL, headers=w.victim.headers)).status_code == 200
    assert await w.victim_state() == w.victim_before


REFRESH_CASES: dict[str, tuple[Callable[[World, Person], str], str]] = {
    "access token as refresh token": (
        lambda w, p: p.access_token,
        "refresh a access token was sent where a refresh token is needed",
    ),
    "alg none": (lambda w, p: _unsigned("none", claims_of(p.refresh_token)), "algorithm is not allowed"),
    "HS512 with the right secret": (
        lambda w, p: jwt.encode(claims_of(p.refresh_token), SECRET, algorithm="HS512"),
        "algorithm is not allowed",
    ),
    "payload tampered": (
        lambda w, p: _swap_payload(p.refresh_token, sub=str(w.admin.id)),
        "refresh token signature is invalid",
    ),
    "expired": (
        lambda w, p: _signed(claims_of(p.refresh_token), exp=NOW - 3600, iat=NOW - 7200, nbf=NOW - 7200),
        "refresh token has expired",
    ),
    "wrong audience": (lambda w, p: _signed(claims_of(p.refresh_token), aud="x"), "refresh token audience is wrong"),
    "never issued": (lambda w, p: _signed(claims_of(p.refresh_token), jti="made-up"), "refresh token is unknown"),
    "a real token's id for another user": (
        lambda w, p: _signed(claims_of(p.refresh_token), sub=str(w.admin.id)),
        "refresh token is unknown",
    ),
    "garbage": (lambda w, p: "garbage", "refresh token is malformed"),
}


@pytest.mark.parametrize("case", list(REFRESH_CASES))
async def test_forged_and_misused_refresh_tokens_are_refused(world: World, case: str) -> None:
    make, expected = REFRESH_CASES[case]
    person = await world.person()
    r = await world.http.post(REFRESH_URL, json={"refresh_token": make(world, person)})
    assert r.status_code == 401 and expected in r.json()["detail"], r.text
    assert "access_token" not in r.text
    # The refused try did not use up or revoke the real session: its refresh token still rotates.
    rotated = await world.http.post(REFRESH_URL, json={"refresh_token": person.refresh_token})
    assert rotated.status_code == 200, rotated.text


# --- sessions: reuse revokes the family, logout holds on every replica and after a restart -------
async def require_redis(kv: str) -> None:
    if kv != "redis":
        return
    probe = RedisKV(REDIS_URL)
    reachable = await probe.ping()
    await probe.close()
    if not reachable:
        pytest.skip(f"Redis not reachable at {REDIS_URL}")


@asynccontextmanager
async def two_replicas(world: World, kv: str, tmp_path):
    """Two more ingress replicas on the world's database. Without Redis a replica re-reads the
    revocations from the database on every call (a sync interval of 1 µs); with Redis it would
    wait an hour, so what it refuses it learned through Redis."""
    await require_redis(kv)
    settings = matrix_settings(
        tmp_path,
        world.url,
        redis_url=REDIS_URL if kv == "redis" else None,
        revocation_sync_s=3600 if kv == "redis" else 1e-6,
        kv_slow_call_s=5.0,
    )
    async with AsyncExitStack() as stack:
        a, _ = await stack.enter_async_context(replica(settings))
        b, _ = await stack.enter_async_context(replica(settings))
        yield a, b, settings


async def _status(http: httpx.AsyncClient, token: str) -> int:
    return (await http.get(ME_URL, headers=bearer(token))).status_code


@pytest.mark.parametrize("kv", KV_KINDS)
async def test_refresh_reuse_revokes_the_whole_session_on_every_replica(world: World, kv: str, tmp_path) -> None:
    async with two_replicas(world, kv, tmp_path) as (a, b, settings):
        _, name = await new_user(world.db)
        first = await login(a, name)
        other_session = await login(b, name)
        second = (await a.post(REFRESH_URL, json={"refresh_token": first["refresh_token"]})).json()
        third = await b.post(REFRESH_URL, json={"refresh_token": second["refresh_token"]})
        assert third.status_code == 200, third.text
        third = third.json()
        assert await _status(a, third["access_token"]) == 200

        # The first refresh token again (a copy of it was stolen): the whole session ends.
        reused = await b.post(REFRESH_URL, json={"refresh_token": first["refresh_token"]})
        assert reused.status_code == 401 and "already used" in reused.json()["detail"]
        for http in (a, b):
            for pair in (first, second, third):
                assert await _status(http, pair["access_token"]) == 401
            r = await http.get(ME_URL, headers=bearer(third["access_token"]))
            assert "revoked" in r.json()["detail"]
        # The rotated successor's refresh token is dead too, on either replica.
        dead = await a.post(REFRESH_URL, json={"refresh_token": third["refresh_token"]})
        assert dead.status_code == 401 and "revoked" in dead.json()["detail"]
        # Another session of the same user is not touched.
        assert await _status(a, other_session["access_token"]) == 200

    async with replica(settings) as (restarted, _):  # a new replica: no memory of its own
        for pair in (first, second, third):
            assert await _status(restarted, pair["access_token"]) == 401
        r = await restarted.post(REFRESH_URL, json={"refresh_token": third["refresh_token"]})
        assert r.status_code == 401
        assert await _status(restarted, other_session["access_token"]) == 200
        assert await _status(restarted, (await login(restarted, name))["access_token"]) == 200


@pytest.mark.parametrize("kv", KV_KINDS)
async def test_a_logout_holds_on_another_replica_and_after_a_restart(world: World, kv: str, tmp_path) -> None:
    async with two_replicas(world, kv, tmp_path) as (a, b, settings):
        _, name = await new_user(world.db)
        pair, other_session = await login(a, name), await login(a, name)
        assert await _status(b, pair["access_token"]) == 200
        assert (await a.post(LOGOUT_URL, headers=bearer(pair["access_token"]))).status_code == 204
        refused = await b.get(ME_URL, headers=bearer(pair["access_token"]))
        assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
        r = await b.post(REFRESH_URL, json={"refresh_token": pair["refresh_token"]})
        assert r.status_code == 401 and "revoked" in r.json()["detail"]
        assert await _status(b, other_session["access_token"]) == 200  # only that session ended
        # A logged-out token cannot log out again, nor end the other session.
        again = await b.post(LOGOUT_URL, headers=bearer(pair["access_token"]), json={})
        assert again.status_code == 401

    async with replica(settings) as (restarted, _):
        assert await _status(restarted, pair["access_token"]) == 401
        r = await restarted.post(REFRESH_URL, json={"refresh_token": pair["refresh_token"]})
        assert r.status_code == 401
        assert await _status(restarted, other_session["access_token"]) == 200


# --- login throttling ------------------------------------------------------------------------------
LIMIT = 5


def _client_address() -> tuple[str, int]:
    """A fresh client address: on a shared Redis, counters of earlier runs live for their window."""
    n = uuid.uuid4().int
    return (f"10.{n % 250}.{(n >> 8) % 250}.{(n >> 16) % 250}", 40000)


@asynccontextmanager
async def throttled_replica(world: World, kv: str, tmp_path, **overrides):
    await require_redis(kv)
    settings = matrix_settings(
        tmp_path,
        world.url,
        redis_url=REDIS_URL if kv == "redis" else None,
        login_max_failures=LIMIT,
        # 31 logins on one loop on 2 cores: the loop's own lag counts in a Redis call's time, and a
        # "slow" call would hand the count to the replica's fallback counter mid-burst.
        kv_slow_call_s=5.0,
        **overrides,
    )
    async with replica(settings, client=_client_address()) as (http, app):
        yield http, app


async def _burst(http: httpx.AsyncClient, bodies: list[dict], headers: list[dict] | None = None) -> list[int]:
    headers = headers or [{}] * len(bodies)
    answers = await asyncio.gather(*(http.post(TOKEN_URL, json=b, headers=h) for b, h in zip(bodies, headers)))
    return [r.status_code for r in answers]


@pytest.mark.parametrize("kv", KV_KINDS)
async def test_a_burst_of_guesses_reaches_the_password_check_at_most_limit_times(world, kv, tmp_path) -> None:
    async with throttled_replica(world, kv, tmp_path) as (http, _):
        _, name = await new_user(world.db)
        statuses = await _burst(http, [{"username": name, "password": f"guess-{i}"} for i in range(30)])
        assert (statuses.count(401), statuses.count(429)) == (LIMIT, 30 - LIMIT), statuses
        refused = await http.post(TOKEN_URL, json={"username": name, "password": TEST_PASSWORD})
        assert refused.status_code == 429 and 0 < int(refused.headers["Retry-After"]) <= 300
        assert "too many failed logins for this username" in refused.json()["detail"]
        assert "access_token" not in refused.text


@pytest.mark.parametrize("kv", KV_KINDS)
@pytest.mark.parametrize("position", [1, 15, 30])
async def test_the_right_password_inside_a_burst_does_not_reset_the_count(world, kv, position, tmp_path) -> None:
    async with throttled_replica(world, kv, tmp_path) as (http, _):
        _, name = await new_user(world.db)
        bodies = [{"username": name, "password": f"guess-{i}"} for i in range(30)]
        bodies.insert(position, {"username": name, "password": TEST_PASSWORD})
        statuses = await _burst(http, bodies)
        checked = statuses.count(401) + statuses.count(200)
        assert set(statuses) <= {200, 401, 429} and statuses.count(200) <= 1
        assert statuses.count(429) == len(bodies) - checked, statuses
        if kv == "memory":  # only in-process are the tries counted in the order sent
            expected = 200 if position < LIMIT else 429
            assert statuses[position] == expected and statuses.count(401) == LIMIT - (expected == 200), statuses
        else:
            # Redis counts in the order the increments arrive, which a loaded loop reorders: tries
            # that arrive after the right one has finished are, to the server, tries after a
            # successful login, and the success forgave at most the LIMIT tries counted up to its
            # own. So at most LIMIT checks before it and LIMIT after, never more.
            assert checked <= (2 * LIMIT if statuses.count(200) else LIMIT), statuses
        # Whether or not the right one got through, the burst's failures still count: the window stays shut.
        for password in (TEST_PASSWORD, "guess-again"):
            after = await http.post(TOKEN_URL, json={"username": name, "password": password})
            assert after.status_code == 429, after.text


@pytest.mark.parametrize("kv", KV_KINDS)
async def test_a_burst_from_one_address_is_limited_whatever_the_usernames(world, kv, tmp_path) -> None:
    async with throttled_replica(world, kv, tmp_path, login_client_max_attempts=LIMIT) as (http, app):
        _, name = await new_user(world.db)
        bodies = [{"username": f"nobody-{uuid.uuid4().hex[:8]}", "password": "x"} for _ in range(20)]
        bodies.insert(7, {"username": name, "password": TEST_PASSWORD})
        # A forwarded-for header is the client's own say-so: it does not make another address.
        forged = [{"X-Forwarded-For": f"203.0.113.{i}"} for i in range(len(bodies))]
        statuses = await _burst(http, bodies, forged)
        checked = statuses.count(401) + statuses.count(200)
        assert checked <= LIMIT and statuses.count(429) == len(bodies) - checked, statuses
        refused = await http.post(TOKEN_URL, json={"username": name, "password": TEST_PASSWORD})
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
        assert "too many login attempts from this address" in refused.json()["detail"]
        # Another address is not held up by this one.
        transport = httpx.ASGITransport(app=app, client=_client_address())
        async with httpx.AsyncClient(transport=transport, base_url="http://hdx") as other:
            assert (await other.post(TOKEN_URL, json={"username": name, "password": TEST_PASSWORD})).status_code == 200


# --- cross-system access on every route that takes an id ---------------------------------------
@dataclass(frozen=True)
class Target:
    """What a request points at: a system, a prediction and a member user id, and a user id (owner)."""

    system: str
    prediction: int
    member: int
    owner: int
    username: str  # a user to grant access to


@dataclass(frozen=True)
class Route:
    request: Callable[[Target], tuple[str, str, dict]]
    ok: int  # what the control request (the rightful caller) gets
    by_admin: bool = False  # the rightful caller is an admin's login, not the system's owner


def _ingest(t: Target) -> dict:
    cycle = {"idempotency_key": uuid.uuid4().hex, "started_at": "2026-03-02T12:00:00Z", "sensor_data": CYCLE}
    return {"json": {"system_id": t.system, "cycles": [cycle], "diagnose": True}}


S = "/api/v1/systems/{system_id}"
ROUTES_WITH_IDS: dict[str, Route] = {
    f"GET {S}": Route(lambda t: ("GET", f"/api/v1/systems/{t.system}", {}), 200),
    f"PATCH {S}": Route(lambda t: ("PATCH", f"/api/v1/systems/{t.system}", {"json": {"name": "taken"}}), 200),
    f"DELETE {S}": Route(lambda t: ("DELETE", f"/api/v1/systems/{t.system}", {}), 204),
    f"GET {S}/members": Route(lambda t: ("GET", f"/api/v1/systems/{t.system}/members", {}), 200),
    f"POST {S}/members": Route(
        lambda t: (
            "POST",
            f"/api/v1/systems/{t.system}/members",
            {"json": {"username": t.username, "permission": "write"}},
        ),
        201,
    ),
    f"DELETE {S}/members/{{user_id}}": Route(
        lambda t: ("DELETE", f"/api/v1/systems/{t.system}/members/{t.member}", {}), 204
    ),
    f"GET {S}/predictions": Route(lambda t: ("GET", f"/api/v1/systems/{t.system}/predictions", {}), 200),
    f"GET {S}/predictions/{{prediction_id}}": Route(
        lambda t: ("GET", f"/api/v1/systems/{t.system}/predictions/{t.prediction}", {}), 200
    ),
    f"POST {S}/predictions/{{prediction_id}}/feedback": Route(
        lambda t: (
            "POST",
            f"/api/v1/systems/{t.system}/predictions/{t.prediction}/feedback",
            {"json": {"components": {"cooler": 100}, "note": "confirmed"}},
        ),
        201,
    ),
    f"GET {S}/readings": Route(lambda t: ("GET", f"/api/v1/systems/{t.system}/readings", {}), 200),
    f"GET {S}/readings/latest": Route(lambda t: ("GET", f"/api/v1/systems/{t.system}/readings/latest", {}), 200),
    "POST /api/v1/diagnostics/predict": Route(
        lambda t: ("POST", "/api/v1/diagnostics/predict", {"json": {"system_id": t.system, "sensor_data": CYCLE}}),
        200,
    ),
    "POST /api/v1/diagnostics/predict/batch": Route(
        lambda t: (
            "POST",
            "/api/v1/diagnostics/predict/batch",
            {"json": {"system_id": t.system, "items": [CYCLE, CYCLE], "use_cache": False}},
        ),
        200,
    ),
    "POST /api/v1/ingestion/cycles": Route(lambda t: ("POST", "/api/v1/ingestion/cycles", _ingest(t)), 200),
    "POST /api/v1/rag/query": Route(
        lambda t: ("POST", "/api/v1/rag/query", {"json": {"query": "why is it flagged?", "system_id": t.system}}),
        200,
    ),
    # Registering a system for another user (owner_id) belongs to admins' logins.
    "POST /api/v1/systems": Route(
        lambda t: (
            "POST",
            "/api/v1/systems",
            {"json": {"id": f"rig-{uuid.uuid4().hex[:10]}", "name": "planted", "owner_id": t.owner}},
        ),
        201,
        by_admin=True,
    ),
    # The audit trail (filtered by system and user) belongs to admins' logins.
    "GET /api/v1/audit": Route(
        lambda t: ("GET", "/api/v1/audit", {"params": {"system_id": t.system, "user_id": t.owner}}), 200, by_admin=True
    ),
}

# Each attack, against the victim's system, or with the victim's row's id under the attacker's own system.
VARIANTS = {
    "foreign system": (lambda route: True, 403),
    "foreign prediction under own system": (lambda route: "{prediction_id}" in route, 404),
    "foreign member under own system": (lambda route: "{user_id}" in route, 404),
}
ATTACKERS = ["user", "user's key", "owner's key scoped elsewhere", "admin's key scoped elsewhere"]
CROSS_CASES = [
    pytest.param(route, variant, attacker, id=f"{route} | {variant} | {attacker}")
    for route in ROUTES_WITH_IDS
    for variant, (applies, _) in VARIANTS.items()
    if applies(route)
    for attacker in ATTACKERS
]


async def _control_target(w: World, route: str) -> Target:
    """A fresh system of the victim's with what the route needs (a prediction, a member)."""
    system = await w.system(w.victim)
    prediction = await w.predict(w.victim.headers, system) if "{prediction_id}" in route else 0
    if "{user_id}" in route:
        await w.grant(w.victim, system, w.guest)
    if "/readings" in route:
        method, url, kwargs = ROUTES_WITH_IDS["POST /api/v1/ingestion/cycles"].request(Target(system, 0, 0, 0, ""))
        assert (await w.http.request(method, url, headers=w.victim.headers, **kwargs)).status_code == 200
    return Target(system, prediction, w.guest.id, w.victim.id, w.guest.username)


@pytest.mark.parametrize(("route", "variant", "attacker"), CROSS_CASES)
async def test_no_route_gives_another_system_to_a_stranger(world: World, route: str, variant: str, attacker: str):
    w, spec = world, ROUTES_WITH_IDS[route]
    headers, own = w.attackers[attacker]
    if variant == "foreign system":
        target = Target(w.v, w.v_prediction, w.guest.id, w.victim.id, w.mallory.username)
    else:
        target = Target(own, w.v_prediction, w.guest.id, w.victim.id, w.mallory.username)
    asked_assistant, systems = len(w.app.state.rag.systems), await w.system_count()

    method, url, kwargs = spec.request(target)
    r = await w.http.request(method, url, headers=headers, **kwargs)
    expected = VARIANTS[variant][1]
    assert r.status_code == expected, r.text
    assert r.json()["detail"] and not any(marker in r.text for marker in w.markers), r.text
    assert "X-Prediction-ID" not in r.headers and "X-Prediction-IDs" not in r.headers
    assert await w.victim_state() == w.victim_before
    assert await w.system_count() == systems  # nothing registered for anyone
    assert w.app.state.rag.systems[asked_assistant:] == []  # the assistant never saw the victim's system

    # The control: the same request from its rightful caller succeeds, so the refusal above came
    # from the access check and not from a malformed request.
    control = await _control_target(w, route)
    if spec.by_admin:
        rightful = w.admin.headers
    elif attacker == "user":
        rightful = w.victim.headers
    else:
        rightful = await scoped_key(w.db, w.victim.id, [control.system])
    method, url, kwargs = spec.request(control)
    ok = await w.http.request(method, url, headers=rightful, **kwargs)
    assert ok.status_code == spec.ok, ok.text


async def test_unknown_ids_are_404_for_everyone(world: World) -> None:
    """403 says a system exists but is not yours (the id is not a secret); an unknown one is 404."""
    for headers in (world.mallory.headers, world.attackers["user's key"][0], world.admin.headers):
        r = await world.http.get("/api/v1/systems/rig-no-such-system", headers=headers)
        assert r.status_code == 404, r.text
    r = await world.http.get(f"/api/v1/systems/{world.v}/predictions/2000000000", headers=world.victim.headers)
    assert r.status_code == 404


async def test_listings_show_only_what_the_caller_may_see(world: World) -> None:
    w = world
    for headers, expected in (
        (w.mallory.headers, {w.m}),
        (w.attackers["user's key"][0], {w.m}),
        (w.attackers["owner's key scoped elsewhere"][0], {w.v2}),
        (w.attackers["admin's key scoped elsewhere"][0], {w.m}),
    ):
        page = (await w.http.get("/api/v1/systems", params={"limit": 500}, headers=headers)).json()
        assert {s["id"] for s in page["items"]} == expected and page["total"] == len(expected)
        assert not any(marker in json.dumps(page) for marker in w.markers)
    everything = (await w.http.get("/api/v1/systems", params={"limit": 500}, headers=w.admin.headers)).json()
    assert {w.v, w.v2, w.m} <= {s["id"] for s in everything["items"]}  # a login of an admin sees all


# --- API key scopes on every other route ---------------------------------------------------------
async def _key_for_admin(w: World, scope: list[str]) -> dict[str, str]:
    return await scoped_key(w.db, w.admin.id, scope)


async def _health(w: World, key: dict, scope: list[str]) -> None:
    assert (await w.http.get("/api/v1/health", headers=key)).status_code == 200


async def _ready(w: World, key: dict, scope: list[str]) -> None:
    """Error details are for admins' logins; an admin's key is a machine's credential and sees the public view."""
    r = await w.http.get("/api/v1/ready", headers=key)
    assert r.status_code == 503 and r.json()["failing"] == ["model:xgboost"]
    assert INTERNAL_DETAIL not in r.text and "/srv/" not in r.text
    assert INTERNAL_DETAIL in (await w.http.get("/api/v1/ready", headers=w.admin.headers)).text


async def _token(w: World, key: dict, scope: list[str]) -> None:
    r = await w.http.post(TOKEN_URL, json={"username": w.admin.username, "password": "not it"}, headers=key)
    assert r.status_code == 401 and "access_token" not in r.text


async def _refresh(w: World, key: dict, scope: list[str]) -> None:
    r = await w.http.post(REFRESH_URL, json={"refresh_token": key["X-API-Key"]}, headers=key)
    assert r.status_code == 401 and "access_token" not in r.text


async def _logout(w: World, key: dict, scope: list[str]) -> None:
    r = await w.http.post(LOGOUT_URL, headers=key)
    assert r.status_code == 400 and "needs a bearer token" in r.json()["detail"]


async def _auth_me(w: World, key: dict, scope: list[str]) -> None:
    me = (await w.http.get(ME_URL, headers=key)).json()
    assert (me["via"], me["system_scope"], me["role"]) == ("api_key", sorted(scope), "admin")


async def _users_me(w: World, key: dict, scope: list[str]) -> None:
    me = (await w.http.get("/api/v1/users/me", headers=key)).json()
    assert me["via"] == "api_key" and me["api_key_id"] is not None and me["id"] == w.admin.id


async def _usage(w: World, key: dict, scope: list[str]) -> None:
    """A key's usage is its own calls, not its owner's."""
    assert (await w.http.get(ME_URL, headers=key)).status_code == 200
    assert (await w.http.get("/api/v1/audit", params={"limit": 1}, headers=w.admin.headers)).status_code == 200
    assert await w.app.state.audit.flush()
    calls = (await w.http.get("/api/v1/users/me/usage", headers=key)).json()["calls"]
    assert {route for day in calls.values() for route in day} == {"GET /api/v1/auth/me"}
    mine = (await w.http.get("/api/v1/users/me/usage", headers=w.admin.headers)).json()["calls"]
    assert "GET /api/v1/audit" in {route for day in mine.values() for route in day}


async def _models(w: World, key: dict, scope: list[str]) -> None:
    assert (await w.http.get("/api/v1/models", headers=key)).status_code == 200  # no system's data in it


async def _document(w: World, key: dict, scope: list[str]) -> None:
    """A maintenance document is no system's data: any key, whatever its scope, reads it."""
    r = await w.http.get("/api/v1/rag/documents/cooler-cleaning", headers=key)
    assert r.status_code == 200 and r.json()["sections"][0]["text"] == "x", r.text
    assert (await w.http.get("/api/v1/rag/documents/nope", headers=key)).status_code == 404


async def _list_systems(w: World, key: dict, scope: list[str]) -> None:
    page = (await w.http.get("/api/v1/systems", params={"limit": 500}, headers=key)).json()
    assert [s["id"] for s in page["items"]] == sorted(scope) and page["total"] == len(scope)


KeyCheck = Callable[[World, dict, list[str]], Awaitable[None]]
OTHER_ROUTES: dict[str, KeyCheck] = {
    "GET /api/v1/health": _health,
    "GET /api/v1/ready": _ready,
    "POST /api/v1/auth/token": _token,
    "POST /api/v1/auth/refresh": _refresh,
    "POST /api/v1/auth/logout": _logout,
    "GET /api/v1/auth/me": _auth_me,
    "GET /api/v1/users/me": _users_me,
    "GET /api/v1/users/me/usage": _usage,
    "GET /api/v1/models": _models,
    "GET /api/v1/systems": _list_systems,
    "GET /api/v1/rag/documents/{document_id}": _document,  # an id, but of no system's data
}
ADMIN_KEYS = {"scoped to one system": True, "scoped to no system": False}


@pytest.mark.parametrize("route", list(OTHER_ROUTES))
@pytest.mark.parametrize("key_kind", list(ADMIN_KEYS))
async def test_an_admins_key_is_bound_by_its_scope(world: World, route: str, key_kind: str) -> None:
    scope = [world.m] if ADMIN_KEYS[key_kind] else []
    await OTHER_ROUTES[route](world, await _key_for_admin(world, scope), scope)


async def test_routes_beyond_any_scope_refuse_every_api_key(world: World) -> None:
    """What no system's scope covers (the whole audit trail, registering a system) needs a login:
    refused to every key, an admin's included and even for the key's own system; and every
    admin-only route is such a route."""
    w, routes = world, app_routes(world.app)
    unscoped = {op for op, deps in routes.items() if any(_is_unscoped(d) for d in deps)}
    admin_only = {op for op, deps in routes.items() if any(_roles(d) == {Role.ADMIN} for d in deps)}
    assert admin_only and admin_only <= unscoped, admin_only - unscoped
    assert unscoped <= ROUTES_WITH_IDS.keys(), "give these routes a request in ROUTES_WITH_IDS"
    keys = {
        "admin's key": (await _key_for_admin(w, [w.m]), w.m, w.admin.id),
        "admin's key of no system": (await _key_for_admin(w, []), w.m, w.admin.id),
        "user's key": (w.attackers["user's key"][0], w.m, w.mallory.id),
    }
    for op in sorted(unscoped):
        for name, (key, own, owner) in keys.items():
            method, url, kwargs = ROUTES_WITH_IDS[op].request(Target(own, 0, 0, owner, w.guest.username))
            for variant in _without_filters(kwargs):
                before, systems = await w.victim_state(), await w.system_count()
                r = await w.http.request(method, url, headers=key, **variant)
                assert r.status_code == 403, (op, name, variant, r.text)
                detail = r.json()["detail"]
                if name.startswith("admin"):  # (the user's key is refused for its role first, where it has to be)
                    scope = own if name == "admin's key" else "no systems"
                    assert f"scoped to {scope};" in detail and "needs a login" in detail, detail
                    assert "unscoped key" not in detail  # there is no such key to get
                assert await w.victim_state() == before and await w.system_count() == systems
        method, url, kwargs = ROUTES_WITH_IDS[op].request(Target(w.m, 0, 0, w.victim.id, w.guest.username))
        ok = await w.http.request(method, url, headers=w.admin.headers, **kwargs)
        assert ok.status_code < 300, ok.text
        if op == "POST /api/v1/systems":
            assert ok.json()["owner_id"] == w.victim.id  # an admin's login registers for another user
    # The scoped key still reaches its own system.
    assert (await w.http.get(f"/api/v1/systems/{w.m}", headers=keys["admin's key"][0])).status_code == 200


def _without_filters(kwargs: dict) -> list[dict]:
    """The request as the matrix sends it, and without its query filters or its optional owner."""
    variants = [kwargs]
    if kwargs.get("params"):
        variants.append({k: v for k, v in kwargs.items() if k != "params"})
    if "owner_id" in kwargs.get("json", {}):
        variants.append({"json": {k: v for k, v in kwargs["json"].items() if k != "owner_id"}})
    return variants


# --- the matrix covers the app ------------------------------------------------------------------
def app_routes(app) -> dict[str, list]:
    """``"METHOD /path"`` → the dependency callables of each route of the app."""

    def calls(dependant):
        for sub in dependant.dependencies:
            yield sub.call
            yield from calls(sub)

    out = {}
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if getattr(route, "dependant", None) is None:  # the docs and the OpenAPI document itself
            continue
        for method in route.methods:
            out[f"{method} {context.path}"] = list(calls(route.dependant))
    return out


def _is_unscoped(call) -> bool:
    return getattr(call, "__qualname__", "").startswith("unscoped_key.")


def _roles(call) -> set | None:
    if not getattr(call, "__qualname__", "").startswith("require_role."):
        return None
    return set(inspect.getclosurevars(call).nonlocals["allowed"])


def _schema_fields(schema: dict, node: dict) -> set[str]:
    if "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    fields = set(node.get("properties", {}))
    for key in ("anyOf", "allOf", "oneOf"):
        for part in node.get(key, []):
            fields |= _schema_fields(schema, part)
    return fields


def routes_with_ids(schema: dict) -> set[str]:
    """Operations with a path parameter, or a query or body field that names a row (``*_id``)."""
    out = set()
    for path, item in schema["paths"].items():
        for method, op in item.items():
            params = op.get("parameters", [])
            names = {p["name"] for p in params if p["in"] == "query"}
            for media in op.get("requestBody", {}).get("content", {}).values():
                names |= _schema_fields(schema, media["schema"])
            if any(p["in"] == "path" for p in params) or any(n.endswith("_id") for n in names):
                out.add(f"{method.upper()} {path}")
    return out


async def test_the_matrix_covers_every_route(world: World) -> None:
    schema = world.app.openapi()
    documented = {f"{m.upper()} {p}" for p, item in schema["paths"].items() for m in item}
    with_ids = routes_with_ids(schema) - {"GET /api/v1/rag/documents/{document_id}"}  # a document, no system's
    assert with_ids == set(ROUTES_WITH_IDS), "a route that takes an id needs a ROUTES_WITH_IDS entry"
    assert not ROUTES_WITH_IDS.keys() & OTHER_ROUTES.keys()
    assert documented == ROUTES_WITH_IDS.keys() | OTHER_ROUTES.keys(), "every route needs an entry in the matrix"
    assert set(app_routes(world.app)) == documented  # nothing served that the document hides


# --- the same attacks through the real Serve application ------------------------------------------
@pytest.fixture(scope="module")
def serve_world(api):
    victim, victim_pw = api.create_user("engineer")
    mallory, mallory_pw = api.create_user("engineer")
    admin, admin_pw = api.create_user("admin")
    v, v2, m = api.create_system(victim), api.create_system(victim), api.create_system(mallory)
    victim_h = api.auth(api.token(victim, victim_pw))
    r = api.http.post("/api/v1/diagnostics/predict", json=simulated_request(v, seed=21), headers=victim_h)
    assert r.status_code == 200, r.text
    return {
        "v": v,
        "v2": v2,
        "m": m,
        "v_prediction": int(r.headers["X-Prediction-ID"]),
        "victim": {"name": victim, "password": victim_pw, "headers": victim_h},
        "mallory": api.auth(api.token(mallory, mallory_pw)),
        "admin": api.auth(api.token(admin, admin_pw)),
        "mallory_key": {"X-API-Key": api.create_api_key(mallory, [m])},
        "victim_key": {"X-API-Key": api.create_api_key(victim, [v2])},
        "admin_key": {"X-API-Key": api.create_api_key(admin, [m])},
    }


SERVE_CREDENTIAL_CASES = [
    "no credentials",
    "not a JWT",
    "alg none",
    "HS512 with the right secret",
    "RS256 with the attacker's key",
    "payload tampered: role admin",
    "signature altered",
    "expired",
    "wrong audience",
    "wrong issuer",
    "missing jti",
    "refresh token as access token",
    "API key unknown",
]


@pytest.mark.ray
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the dev secret, for HS512
def test_forged_credentials_are_refused_through_serve(api, serve_world) -> None:
    s = serve_world
    login_ = api.http.post(TOKEN_URL, json={"username": s["victim"]["name"], "password": s["victim"]["password"]})
    pair = login_.json()

    # What the credential cases read of a world.
    served = SimpleNamespace(
        victim=SimpleNamespace(access_token=pair["access_token"], refresh_token=pair["refresh_token"])
    )
    claims = claims_of(pair["access_token"])
    body = simulated_request(s["v"], seed=22)
    for case in SERVE_CREDENTIAL_CASES:
        make, expected = CREDENTIAL_CASES[case]
        headers = make(served, claims, DEV_JWT_SECRET)  # the Serve app runs in dev mode
        for method, url, kwargs in (
            ("POST", "/api/v1/diagnostics/predict", {"json": body}),
            ("GET", f"/api/v1/systems/{s['v']}", {}),
        ):
            r = api.http.request(method, url, headers=headers, **kwargs)
            assert r.status_code == 401, (case, r.text)
            assert expected in r.json()["detail"] and r.headers["WWW-Authenticate"].startswith("Bearer"), case
    assert api.http.get(ME_URL, headers=bearer(pair["access_token"])).status_code == 200


@pytest.mark.ray
def test_refresh_reuse_and_logout_through_serve(api, serve_world) -> None:
    victim = serve_world["victim"]
    credentials = {"username": victim["name"], "password": victim["password"]}
    first = api.http.post(TOKEN_URL, json=credentials).json()
    second = api.http.post(REFRESH_URL, json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    second = second.json()
    reused = api.http.post(REFRESH_URL, json={"refresh_token": first["refresh_token"]})
    assert reused.status_code == 401 and "already used" in reused.json()["detail"]
    assert api.http.post(REFRESH_URL, json={"refresh_token": second["refresh_token"]}).status_code == 401
    assert api.http.get(ME_URL, headers=bearer(second["access_token"])).status_code == 401
    assert api.http.post(REFRESH_URL, json={"refresh_token": first["access_token"]}).status_code == 401

    session = api.http.post(TOKEN_URL, json=credentials).json()
    assert api.http.post(LOGOUT_URL, headers=bearer(session["access_token"])).status_code == 204
    assert api.http.get(ME_URL, headers=bearer(session["access_token"])).status_code == 401
    assert api.http.post(REFRESH_URL, json={"refresh_token": session["refresh_token"]}).status_code == 401


@pytest.mark.ray
def test_cross_system_access_through_serve(api, serve_world) -> None:
    s = serve_world
    v, pv = s["v"], s["v_prediction"]
    strangers = {"user": s["mallory"], "user's key": s["mallory_key"], "owner's key": s["victim_key"]}
    strangers["admin's key"] = s["admin_key"]
    requests = {
        "predict": ("POST", "/api/v1/diagnostics/predict", {"json": simulated_request(v, seed=23)}),
        "system": ("GET", f"/api/v1/systems/{v}", {}),
        "prediction": ("GET", f"/api/v1/systems/{v}/predictions/{pv}", {}),
        "feedback": ("POST", f"/api/v1/systems/{v}/predictions/{pv}/feedback", {"json": {"components": {"pump": 0}}}),
        "ingestion": ("POST", "/api/v1/ingestion/cycles", _ingest(Target(v, 0, 0, 0, ""))),
    }
    for who, headers in strangers.items():
        for what, (method, url, kwargs) in requests.items():
            r = api.http.request(method, url, headers=headers, **kwargs)
            assert r.status_code == 403 and v in r.json()["detail"], (who, what, r.text)
            if "key" in who:
                assert "outside this API key's scope" in r.json()["detail"]
        own = s["v2"] if who == "owner's key" else s["m"]
        r = api.http.get(f"/api/v1/systems/{own}/predictions/{pv}", headers=headers)
        assert r.status_code == 404, (who, r.text)  # the victim's prediction is not under the stranger's system
    unknown = ("POST", "/api/v1/diagnostics/predict", {"json": simulated_request("rig-does-not-exist")})
    assert api.http.request(*unknown[:2], headers=s["mallory"], **unknown[2]).status_code == 404
    # The rightful callers: the owner, an admin's login, and a key on its own system.
    for headers in (s["victim"]["headers"], s["admin"]):
        assert api.http.request(*requests["predict"][:2], headers=headers, **requests["predict"][2]).status_code == 200
    mine = api.http.post("/api/v1/diagnostics/predict", json=simulated_request(s["m"]), headers=s["mallory_key"])
    assert mine.status_code == 200, mine.text


@pytest.mark.ray
def test_an_admins_scoped_key_through_serve(api, serve_world) -> None:
    s, key = serve_world, serve_world["admin_key"]
    for params in ({}, {"system_id": s["m"]}):
        r = api.http.get("/api/v1/audit", params=params, headers=key)
        assert r.status_code == 403 and "needs a login" in r.json()["detail"]
    r = api.http.post("/api/v1/systems", json={"id": f"rig-{uuid.uuid4().hex[:8]}", "name": "x"}, headers=key)
    assert r.status_code == 403
    page = api.http.get("/api/v1/systems", params={"limit": 500}, headers=key).json()
    assert [x["id"] for x in page["items"]] == [s["m"]]
    assert api.http.get("/api/v1/audit", params={"limit": 1}, headers=s["admin"]).status_code == 200
