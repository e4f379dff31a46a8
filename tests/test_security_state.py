"""Security state shared by every ingress replica: revocations, login throttling, the Redis breaker.

Each "replica" here is a whole ``create_app`` with its lifespan, driven over
HTTP with ``httpx.ASGITransport``; two of them on one database stand for two
ingress replicas. Outages are real: a private ``redis-server`` and a private
PostgreSQL server that the test stops and starts again.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import uuid
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import pytest

from api.application import create_app
from auth.service import AuthService
from configs.settings import Settings
from deployments.builder import app_from_serve_config
from storage.kv import require_sole_replica
from tests.fixtures.db import REDIS_URL, TEST_PASSWORD, add_user
from tests.fixtures.serve_app import PrivateRedis, free_port
from tests.test_platform_support import platform_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOKEN_URL = "/api/v1/auth/token"


@asynccontextmanager
async def replica(settings: Settings, client: tuple[str, int] = ("10.0.0.1", 40000)):
    """One ingress replica's app, started, with an HTTP client; yields ``(http, app)``."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        app.state.ensemble = None  # no Ray here: /ready reports the models as down
        # What api.deps.get_auth_service builds once it hands over the database (see test_auth_gets_the_database).
        app.state.auth = AuthService(app.state.kv, settings, db=app.state.db)
        async with http_client(app, client) as http:
            yield http, app


def http_client(app, client: tuple[str, int] = ("10.0.0.1", 40000)) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=client), base_url="http://hdx")


async def new_user(app, role: str = "engineer") -> str:
    name = f"{role[:3]}-{uuid.uuid4().hex[:8]}"
    async with app.state.db.sessionmaker() as session:
        await add_user(session, name, role)
    return name


async def login(http: httpx.AsyncClient, username: str, password: str = TEST_PASSWORD) -> dict:
    r = await http.post(TOKEN_URL, json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return r.json()


def bearer(pair: dict) -> dict:
    return {"Authorization": f"Bearer {pair['access_token']}"}


class PrivatePostgres:
    """A PostgreSQL server of our own (initdb + pg_ctl in a temp folder), so a test can stop it."""

    def __init__(self) -> None:
        if not shutil.which("initdb"):
            pytest.skip("initdb not installed")
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="hdx-pg-"))
        # PostgreSQL refuses to run as root; the packaged postgres user runs it then.
        self.prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.prefix:
            shutil.chown(self.folder, "postgres")
        self._run("initdb", "-D", str(self.folder / "data"), "-U", "postgres", "--auth=trust", "-N")

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.prefix, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        self._run(
            "pg_ctl", "-D", str(self.folder / "data"), "-o", options, "-l", str(self.folder / "log"), "-w", "start"
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def private_redis():
    redis = PrivateRedis()
    redis.start()
    yield redis
    redis.stop()


# --- revocations ------------------------------------------------------------------------------
async def test_logout_and_reuse_hold_on_every_replica_and_after_a_restart(db, database_url, tmp_path) -> None:
    settings = platform_settings(tmp_path, database_url, revocation_sync_s=0.1)
    async with AsyncExitStack() as stack:
        a, app_a = await stack.enter_async_context(replica(settings))
        b, _ = await stack.enter_async_context(replica(settings))
        name = await new_user(app_a)
        pair = await login(a, name)
        assert (await b.get("/api/v1/auth/me", headers=bearer(pair))).status_code == 200
        assert (await a.post("/api/v1/auth/logout", headers=bearer(pair))).status_code == 204
        await asyncio.sleep(0.25)  # past b's revocation_sync_s
        refused = await b.get("/api/v1/auth/me", headers=bearer(pair))
        assert refused.status_code == 401 and "revoked" in refused.json()["detail"]

        # A refresh token used twice on b ends its whole session on a too.
        first = await login(b, name)
        rotated = await b.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert rotated.status_code == 200
        reused = await b.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert reused.status_code == 401 and "already used" in reused.json()["detail"]
        await asyncio.sleep(0.25)
        assert (await a.get("/api/v1/auth/me", headers=bearer(rotated.json()))).status_code == 401

    # A replica started afterwards (no memory, no Redis) reads them from the database.
    async with replica(settings) as (c, _):
        assert (await c.get("/api/v1/auth/me", headers=bearer(pair))).status_code == 401
        assert (await c.get("/api/v1/auth/me", headers=bearer(rotated.json()))).status_code == 401
        assert (await c.get("/api/v1/auth/me", headers=bearer(await login(c, name)))).status_code == 200


async def test_a_logout_the_database_cannot_record_is_a_503_not_a_lost_204(tmp_path) -> None:
    pg = PrivatePostgres()
    pg.start()
    try:
        settings = platform_settings(tmp_path, pg.url, access_cache_ttl_s=120)
        async with replica(settings) as (http, app):
            pair = await login(http, await new_user(app))
            assert (await http.get("/api/v1/auth/me", headers=bearer(pair))).status_code == 200  # user now cached
            pg.stop()
            try:
                r = await http.post("/api/v1/auth/logout", headers=bearer(pair))
                assert r.status_code == 503, r.text
                assert r.headers["Retry-After"] == "5" and "could not be recorded" in r.json()["detail"]
                assert "127.0.0.1" not in r.text
            finally:
                pg.start()
            # Nothing was revoked, so the token still works; the retried logout holds.
            assert (await http.get("/api/v1/auth/me", headers=bearer(pair))).status_code == 200
            assert (await http.post("/api/v1/auth/logout", headers=bearer(pair))).status_code == 204
            assert (await http.get("/api/v1/auth/me", headers=bearer(pair))).status_code == 401
    finally:
        pg.stop()
        pg.remove()


async def test_a_redis_outage_loses_no_logout_and_keeps_throttling(db, database_url, tmp_path, private_redis) -> None:
    settings = platform_settings(
        tmp_path,
        database_url,
        redis_url=private_redis.url,
        revocation_sync_s=0.1,
        kv_breaker_cooldown_s=0.2,
        kv_timeout_s=0.3,
        login_max_failures=3,
    )
    async with AsyncExitStack() as stack:
        a, app_a = await stack.enter_async_context(replica(settings))
        b, _ = await stack.enter_async_context(replica(settings))
        name = await new_user(app_a)
        pair = await login(a, name)
        assert (await b.get("/api/v1/auth/me", headers=bearer(pair))).status_code == 200
        private_redis.stop()
        assert (await a.post("/api/v1/auth/logout", headers=bearer(pair))).status_code == 204
        assert (await a.get("/api/v1/auth/me", headers=bearer(pair))).status_code == 401
        await asyncio.sleep(0.25)
        assert (await b.get("/api/v1/auth/me", headers=bearer(pair))).status_code == 401  # from the database
        assert app_a.state.kv.state == "open"

        # Throttling does not switch off: this replica counts on its own meanwhile.
        wrong = {"username": name, "password": "guess"}
        statuses = [(await a.post(TOKEN_URL, json=wrong)).status_code for _ in range(4)]
        assert statuses == [401, 401, 401, 429]
        right = await a.post(TOKEN_URL, json={"username": name, "password": TEST_PASSWORD})
        assert right.status_code == 429

        private_redis.start()
        await asyncio.sleep(0.3)  # past the breaker's cool-down: the next call probes Redis
        assert (await b.get("/api/v1/auth/me", headers=bearer(pair))).status_code == 401
        assert (await a.get("/api/v1/auth/me", headers=bearer(pair))).status_code == 401
        ready = (await a.get("/api/v1/ready")).json()  # its ping is a's probe
        assert ready["checks"]["kv"]["state"] == "closed" and app_a.state.kv.healthy


# --- login throttling -----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_a_concurrent_burst_of_guesses_is_throttled(db, database_url, tmp_path, backend) -> None:
    settings = platform_settings(
        tmp_path,
        database_url,
        redis_url=REDIS_URL if backend == "redis" else None,
        login_max_failures=5,
        login_client_max_attempts=1000,
        # 31 logins on one loop on 2 cores: the loop's own lag counts in a Redis call's time, and a
        # "slow" call would hand the count to the replica's fallback counter mid-burst.
        kv_slow_call_s=5.0,
    )
    client = (f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.7", 40000)  # its own counter on a shared Redis
    async with replica(settings, client=client) as (http, app):
        if backend == "redis" and not await app.state.kv.ping():
            pytest.skip(f"Redis not reachable at {REDIS_URL}")
        guesses = [{"password": f"guess-{i}"} for i in range(30)]
        # All wrong: only the limit's worth of tries reach the password check.
        name = await new_user(app)
        burst = await asyncio.gather(*(http.post(TOKEN_URL, json={"username": name, **g}) for g in guesses))
        statuses = [r.status_code for r in burst]
        assert (statuses.count(401), statuses.count(429)) == (5, 25), statuses
        # The window is throttled: the right password is refused too, with when to come back.
        refused = await http.post(TOKEN_URL, json={"username": name, "password": TEST_PASSWORD})
        assert refused.status_code == 429 and 0 < int(refused.headers["Retry-After"]) <= 300
        assert "too many failed logins for this username" in refused.json()["detail"]

        if backend == "memory":
            # The right password sent last in a burst is one of 31 tries, of which 5 are checked.
            # (Only in-process are the tries counted in the order sent; on Redis the right one may
            # be among the first 5, log in and, as every successful login does, clear the count.)
            other = await new_user(app)
            bodies = [{"username": other, **g} for g in guesses] + [{"username": other, "password": TEST_PASSWORD}]
            statuses = [r.status_code for r in await asyncio.gather(*(http.post(TOKEN_URL, json=b) for b in bodies))]
            assert (statuses.count(401), statuses.count(429), statuses[-1]) == (5, 26, 429), statuses


async def test_logins_per_client_address_are_limited(db, database_url, tmp_path) -> None:
    settings = platform_settings(tmp_path, database_url, login_client_max_attempts=3, login_client_window_s=60)
    async with replica(settings, client=("10.1.1.1", 40000)) as (one, app):
        name = await new_user(app)
        tries = [await one.post(TOKEN_URL, json={"username": f"nobody-{i}", "password": "x"}) for i in range(3)]
        assert [r.status_code for r in tries] == [401, 401, 401]
        refused = await one.post(TOKEN_URL, json={"username": name, "password": TEST_PASSWORD})
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
        assert "too many login attempts from this address" in refused.json()["detail"]
        async with http_client(app, ("10.2.2.2", 40000)) as other:
            assert (await other.post(TOKEN_URL, json={"username": name, "password": TEST_PASSWORD})).status_code == 200


# --- readiness --------------------------------------------------------------------------------
async def test_ready_reports_the_breaker_and_shows_details_to_admins_only(db, database_url, tmp_path, private_redis):
    settings = platform_settings(tmp_path, database_url, redis_url=private_redis.url, kv_timeout_s=0.3)
    async with replica(settings) as (http, app):
        admin = bearer(await login(http, await new_user(app, "admin")))
        engineer = bearer(await login(http, await new_user(app, "engineer")))
        up = (await http.get("/api/v1/ready")).json()
        assert up["checks"]["kv"] == {"ok": True, "backend": "redis", "state": "closed"}

        private_redis.stop()
        anonymous = await http.get("/api/v1/ready")
        body = anonymous.json()
        assert body["checks"]["kv"] == {"ok": False, "backend": "redis", "state": "open"}
        assert "kv" in body["degraded"] and "ensemble" in body["failing"]
        assert body["checks"]["models"] == {"ok": False, "error": "unavailable"}
        for secret in (str(private_redis.port), "127.0.0.1", "NoneType", "ConnectionError", "Error"):
            assert secret not in anonymous.text
        assert "ConnectionError" not in (await http.get("/api/v1/ready", headers=engineer)).text

        detailed = (await http.get("/api/v1/ready", headers=admin)).json()
        assert detailed["checks"]["kv"]["state"] == "open"
        assert detailed["checks"]["kv"]["last_error"].startswith("ConnectionError")
        assert detailed["checks"]["kv"]["rejected_calls"] >= 1  # cut off, not waited for
        assert "NoneType" in detailed["checks"]["models"]["error"]


# --- one ingress replica without Redis -------------------------------------------------------------
async def test_without_redis_the_builder_caps_the_ingress_to_one_replica(tmp_path, caplog) -> None:
    without = Settings(home=tmp_path, dev_mode=True, redis_url=None)
    with_redis = Settings(home=tmp_path, dev_mode=True, redis_url=REDIS_URL)
    capped = app_from_serve_config(settings=without, assistant=False)._bound_deployment
    assert capped.name == "Ingress"
    autoscaling = capped._deployment_config.autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.max_replicas) == (1, 1)
    assert "HDX_REDIS_URL is empty: the Ingress runs one replica" in caplog.text
    shared = app_from_serve_config(settings=with_redis, assistant=False)._bound_deployment
    assert shared._deployment_config.autoscaling_config.max_replicas == 4  # serve_config.yaml's


async def test_a_second_replica_without_redis_refuses_to_start() -> None:
    require_sole_replica(None)  # outside Serve
    require_sole_replica(0)  # the first replica
    with pytest.raises(RuntimeError, match="HDX_REDIS_URL is empty"):
        require_sole_replica(1)


async def test_auth_gets_the_database(db, database_url, tmp_path) -> None:
    """The app's own AuthService (api.deps.get_auth_service) reads revocations from the database."""
    app = create_app(platform_settings(tmp_path, database_url))
    async with app.router.lifespan_context(app), http_client(app) as http:
        await http.post(TOKEN_URL, json={"username": "nobody", "password": "x"})
        assert app.state.auth.revocations.db is app.state.db
