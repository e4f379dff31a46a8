"""Security state shared by every ingress replica: revocations, login throttling, the Redis breaker.

Each "replica" here is a whole ``create_app`` with its lifespan, driven over
HTTP with ``httpx.ASGITransport``; two of them on one database stand for two
ingress replicas. Outages are real: a private ``redis-server`` and a private
PostgreSQL server that the test stops and starts again.
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import pytest
import yaml

from api.application import create_app
from auth.service import AuthService
from configs.settings import Settings
from deployments.builder import SERVE_CONFIG, app_from_serve_config, serve_config_application, serve_config_for
from deployments.ingress import require_sole_replica
from tests.fixtures.db import REDIS_URL, TEST_PASSWORD, add_user
from tests.fixtures.private_servers import PrivatePostgres, PrivateRedis
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


@pytest.fixture
def private_redis():
    redis = PrivateRedis()
    redis.start()
    yield redis
    redis.stop()


# --- revocations (across replicas, after a restart: tests/test_attack_matrix.py) ---------------------
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
    assert capped._deployment_config.max_surge_percent == 0  # a rollout would otherwise start a second
    shared = app_from_serve_config(settings=with_redis, assistant=False)._bound_deployment
    assert shared._deployment_config.autoscaling_config.max_replicas == 4  # serve_config.yaml's


async def test_the_config_the_quick_start_runs_caps_the_ingress_without_redis(tmp_path) -> None:
    """``serve run`` applies the file's options over the code's, so the cap must be in the file:
    ``hdx serve-config`` writes it (scripts/quickstart.sh runs what it writes)."""
    from typer.testing import CliRunner

    from cli.main import app

    out = tmp_path / "serve_config.yaml"
    env = {"HDX_HOME": str(tmp_path), "HDX_DEV_MODE": "true", "HDX_REDIS_URL": ""}
    result = CliRunner().invoke(app, ["serve-config", "--out", str(out)], env=env)
    assert result.exit_code == 0, result.output
    written = serve_config_application(out)
    ingress = next(d for d in written["deployments"] if d["name"] == "Ingress")
    assert ingress["autoscaling_config"]["max_replicas"] == 1 and ingress["max_surge_percent"] == 0
    assert written == {**serve_config_application(), "deployments": written["deployments"]}  # nothing else moved
    others = [d for d in written["deployments"] if d["name"] != "Ingress"]
    assert others == [d for d in serve_config_application()["deployments"] if d["name"] != "Ingress"]
    with_redis = serve_config_for(Settings(home=tmp_path, dev_mode=True, redis_url=REDIS_URL))
    assert with_redis == yaml.safe_load(SERVE_CONFIG.read_text())


async def test_a_second_replica_without_redis_refuses_to_start() -> None:
    require_sole_replica(0)  # the first replica
    with pytest.raises(RuntimeError, match="HDX_REDIS_URL is empty"):
        require_sole_replica(1)


async def test_auth_gets_the_database(db, database_url, tmp_path) -> None:
    """The app's own AuthService (api.deps.get_auth_service) reads revocations from the database."""
    app = create_app(platform_settings(tmp_path, database_url))
    async with app.router.lifespan_context(app), http_client(app) as http:
        await http.post(TOKEN_URL, json={"username": "nobody", "password": "x"})
        assert app.state.auth.revocations.db is app.state.db
