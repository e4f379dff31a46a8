"""Faults injected into real components, with the figures of each run.

Each test counts what it did (requests sent, answered, failed, retried, records lost,
faults injected) and prints one ``FAULT <name>: {...}`` line of figures (``-s`` or
``-rP`` shows them; docs/reliability.md quotes them). Counts are asserted, never
latencies: a wait has a generous bound and only decides when to go on.

* PostgreSQL restarted during concurrent ingestion: a private server (``initdb`` +
  ``pg_ctl`` on a free port) under the in-process app (``httpx.ASGITransport``).
* Redis stopped and restarted under prediction load, on the session's Serve app
  (``hdx_env["redis"]`` is that app's private ``redis-server``; restarted in ``finally``).
* A model replica and then the ingress replica killed (``ray.kill``) under load, on the
  session's Serve app.
* The LLM backend down: ``tests/test_rag_serve.py::test_ollama_backend_then_degraded_when_it_goes_down``
  (extractive answer, ``metadata.degraded`` true, unary and streamed).

The machine's shared PostgreSQL and Redis are never stopped.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import Counter
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from api.application import create_app
from storage.db import unavailable as database_unavailable
from storage.tables import AuditRecord, Reading
from tests.fixtures.db import TEST_PASSWORD, add_system, add_user
from tests.fixtures.private_servers import PrivatePostgres
from tests.fixtures.serve_app import simulated_request
from tests.test_platform_support import platform_settings

INGEST_URL = "/api/v1/ingestion/cycles"
PREDICT_URL = "/api/v1/diagnostics/predict"


def report(name: str, figures: dict) -> None:
    print(f"\nFAULT {name}: {json.dumps(figures, sort_keys=True)}")


def wait_until(condition, timeout_s: float, poll_s: float = 0.1) -> bool:
    """Polls ``condition`` until it holds or ``timeout_s`` passes; the caller asserts the result."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll_s)
    return condition()


# --- PostgreSQL restarted during ingestion ------------------------------------------------------
class _Orig(Exception):
    def __init__(self, sqlstate: str | None) -> None:
        super().__init__("from the driver")
        self.sqlstate = sqlstate


def _dbapi(cls=DBAPIError, sqlstate: str | None = None, invalidated: bool = False) -> DBAPIError:
    return cls("INSERT ...", {}, _Orig(sqlstate), connection_invalidated=invalidated)


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (ConnectionRefusedError(111, "Connect call failed"), True),  # asyncpg's connect, bare
        (TimeoutError(), True),
        (_dbapi(sqlstate="57P01"), True),  # terminating connection due to administrator command
        (_dbapi(sqlstate="57P03"), True),  # the database system is starting up
        (_dbapi(sqlstate="08006"), True),  # connection failure
        (_dbapi(sqlstate="53300"), True),  # too many connections
        (_dbapi(invalidated=True), True),  # SQLAlchemy saw the connection go
        (_dbapi(OperationalError), True),  # SQLite: database is locked
        (_dbapi(sqlstate="22021"), False),  # a NUL in a string: the statement's fault
        (_dbapi(IntegrityError, sqlstate="23505"), False),
        (_dbapi(sqlstate=None), False),
        (FileNotFoundError("bundle.json"), False),
        (ValueError("x"), False),
    ],
)
def test_a_database_outage_is_told_from_an_error_of_the_statement(error, outage) -> None:
    assert database_unavailable(error) is outage


@asynccontextmanager
async def running_app(settings):
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        app.state.ensemble = None  # no Ray here; ingestion without ``diagnose`` needs no model
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # a 500 is an answer here
        async with httpx.AsyncClient(transport=transport, base_url="http://hdx") as http:
            yield http, app


async def audit_trace_ids(app, trace_ids: set[str]) -> set[str]:
    async with app.state.db.sessionmaker() as session:
        found = await session.scalars(select(AuditRecord.trace_id).where(AuditRecord.trace_id.in_(trace_ids)))
        return set(found.all())


async def stored_keys(app, system_id: str) -> tuple[int, set[str]]:
    async with app.state.db.sessionmaker() as session:
        rows = (await session.scalars(select(Reading.idempotency_key).where(Reading.system_id == system_id))).all()
        total = await session.scalar(select(func.count()).select_from(Reading).where(Reading.system_id == system_id))
    return total, set(rows)


class IngestionLoad:
    """Workers posting ingestion batches (fresh idempotency keys, a fresh X-Request-ID each)
    until stopped; every attempt is kept with its answer."""

    CYCLES = 2

    def __init__(self, http: httpx.AsyncClient, headers: dict, system_id: str, sensor_data: dict):
        self.http, self.headers, self.system_id, self.sensor_data = http, headers, system_id, sensor_data
        self.attempts: list[dict] = []
        self.stopped = asyncio.Event()
        self.down = False  # set while the database is stopped: those answers are counted apart

    def body(self, keys: list[str]) -> dict:
        cycles = [
            {"idempotency_key": k, "started_at": "2026-03-01T12:00:00Z", "sensor_data": self.sensor_data} for k in keys
        ]
        return {"system_id": self.system_id, "cycles": cycles}

    async def send(self, keys: list[str], retry_of: dict | None = None) -> dict:
        trace_id = uuid.uuid4().hex
        attempt = {"keys": keys, "trace_id": trace_id, "while_down": self.down, "retry": retry_of is not None}
        try:
            # Bounded so a hang is counted as one, not waited for forever.
            r = await asyncio.wait_for(
                self.http.post(INGEST_URL, json=self.body(keys), headers={**self.headers, "X-Request-ID": trace_id}),
                30,
            )
        except TimeoutError:
            attempt.update(status="hang")
        else:
            attempt.update(status=r.status_code, retry_after=r.headers.get("Retry-After"))
            if r.status_code == 200:
                attempt["items"] = {i["idempotency_key"]: i["status"] for i in r.json()["items"]}
            else:
                attempt["detail"] = r.text[:200]
        self.attempts.append(attempt)
        return attempt

    async def worker(self) -> None:
        while not self.stopped.is_set():
            await self.send([uuid.uuid4().hex for _ in range(self.CYCLES)])
            await asyncio.sleep(0.01)  # a client's pace; an outage's fast 503s do not flood the list

    def count(self, **match) -> int:
        return sum(1 for a in self.attempts if all(a.get(k) == v for k, v in match.items()))

    async def until(self, condition, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not condition():
            await asyncio.sleep(0.05)
        return condition()


async def test_postgres_restarted_during_ingestion_loses_no_acknowledged_cycle(tmp_path: Path) -> None:
    """Eight concurrent clients ingest two-cycle batches while the database is stopped (``pg_ctl
    -m fast``: open connections are cut) and started again under them.

    Every 2xx batch is in the database; every other answer is a 503 with ``Retry-After`` (no
    500, no hang); each failed batch, retried with its idempotency keys, is answered 200 with
    its cycles ``stored``, or ``duplicate`` where the commit had gone through before the
    connection broke (in doubt to the client, stored once). Every attempt's audit record is
    written once the database is back, and the records of a replica stopped during a second
    outage are replayed from its spool by the next replica."""
    pg = PrivatePostgres()
    pg.start()
    faults = 0
    try:
        settings = platform_settings(tmp_path, pg.url, access_cache_ttl_s=300, audit_flush_interval_s=0.2)
        async with running_app(settings) as (http, app):
            async with app.state.db.sessionmaker() as session:
                owner = await add_user(session, f"ing-{uuid.uuid4().hex[:8]}", "engineer", tier="free")
                system_id = (await add_system(session, f"rig-{uuid.uuid4().hex[:8]}", owner)).id
            r = await http.post("/api/v1/auth/token", json={"username": owner.username, "password": TEST_PASSWORD})
            headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
            load = IngestionLoad(http, headers, system_id, simulated_request(system_id)["sensor_data"])
            workers = [asyncio.create_task(load.worker()) for _ in range(8)]
            try:
                assert await load.until(lambda: load.count(status=200) >= 40, 60)
                load.down = True
                await asyncio.to_thread(pg.stop, "fast")  # requests in flight meanwhile lose their connection
                faults += 1
                assert await load.until(lambda: load.count(while_down=True) >= 20, 30)
                await asyncio.to_thread(pg.start)
                load.down = False
                acked_before_restart = load.count(status=200)
                assert await load.until(lambda: load.count(status=200) >= acked_before_restart + 40, 60)
            finally:
                load.stopped.set()
                await asyncio.gather(*workers)

            first = list(load.attempts)
            failed = [a for a in first if a["status"] != 200]
            statuses = Counter(str(a["status"]) for a in first)
            assert failed, "the restart failed no request: it did not happen under load"
            assert set(statuses) <= {"200", "503"}, statuses  # no 500, no hang, nothing else
            assert all(a["retry_after"] for a in failed), [a for a in failed if not a["retry_after"]][:3]

            acknowledged = {k for a in first if a["status"] == 200 for k in a["keys"]}
            total, in_db = await stored_keys(app, system_id)
            lost = acknowledged - in_db
            assert not lost, f"{len(lost)} acknowledged cycles are not in the database"
            in_doubt = {k for a in failed for k in a["keys"]} & in_db  # committed, then the connection broke

            retried = [await load.send(a["keys"], retry_of=a) for a in failed]
            assert all(a["status"] == 200 for a in retried), [a for a in retried if a["status"] != 200][:3]
            retry_items = Counter(s for a in retried for s in a["items"].values())
            assert set(retry_items) <= {"stored", "duplicate"}, retry_items
            assert retry_items["duplicate"] == len(in_doubt)

            every_key = {k for a in load.attempts for k in a["keys"]}
            total, in_db = await stored_keys(app, system_id)
            assert in_db == every_key and total == len(every_key)  # each cycle once, none missing

            assert await app.state.audit.flush()  # what the 0.2 s timer does; the database is back
            trace_ids = {a["trace_id"] for a in load.attempts}
            audit_lost = trace_ids - await audit_trace_ids(app, trace_ids)
            assert not audit_lost, f"{len(audit_lost)} of {len(trace_ids)} audit records lost"

            # A second outage, and this replica stops during it: its audit records go to the spool.
            pg.stop("fast")
            faults += 1
            during = [await load.send([uuid.uuid4().hex]) for _ in range(5)]
            assert {a["status"] for a in during} == {503}
        pg.start()
        async with running_app(settings) as (http, app):  # the next replica replays the spool at start
            assert await app.state.audit.flush()
            spooled = {a["trace_id"] for a in during}
            spool_lost = spooled - await audit_trace_ids(app, spooled)
        assert not spool_lost, f"{len(spool_lost)} audit records of the stopped replica lost"
    finally:
        pg.remove()

    report(
        "postgres_restart_during_ingestion",
        {
            "faults_injected": faults,
            "requests_sent": len(first),
            "cycles_sent": len(first) * IngestionLoad.CYCLES,
            "answered_2xx": statuses["200"],
            "failed_503_with_retry_after": statuses["503"],
            "failed_other": len(first) - statuses["200"] - statuses["503"],
            "failed_while_down": sum(1 for a in failed if a["while_down"]),
            "failed_in_flight_at_stop": sum(1 for a in failed if not a["while_down"]),
            "retried": len(retried),
            "retries_answered_2xx": sum(1 for a in retried if a["status"] == 200),
            "in_doubt_commits_found_on_retry": len(in_doubt),
            "acknowledged_cycles_lost": len(lost),
            "duplicate_cycles_stored": total - len(every_key),
            "audit_records_expected": len(trace_ids),
            "audit_records_lost": len(audit_lost),
            "audit_records_spooled_at_replica_stop": len(during),
            "audit_records_lost_after_replica_restart": len(spool_lost),
        },
    )


# --- the Serve app under load ------------------------------------------------------------------
@pytest.fixture(scope="module")
def engineer(api):
    username, password = api.create_user("engineer")
    token = api.token(username, password)
    system = api.create_system(username)
    return {"username": username, "system": system, "headers": api.auth(token)}


class PredictionLoad:
    """Clients posting predictions until stopped, each answer counted under the phase in which
    its request was sent (``count_at="answer"``: in which it was answered, so that a request in
    flight when a fault is injected counts under that fault). A few bodies are repeated so that
    the prediction cache hits.

    ``retry_once``: a request that gets no HTTP answer (connection error) or a 5xx is sent once
    more, and counted as retried; it fails only if the retry fails too. ``use_cache=False``:
    every request goes to the models."""

    def __init__(
        self,
        base: str,
        headers: dict,
        system: str,
        *,
        clients: int = 3,
        retry_once: bool = False,
        use_cache: bool = True,
        count_at: str = "send",
    ):
        self.base, self.headers, self.retry_once, self.count_at = base, headers, retry_once, count_at
        self.bodies = [{**simulated_request(system, seed=900 + i), "use_cache": use_cache} for i in range(4)]
        self.phase = "before"
        self.counts: dict[str, Counter] = {}
        self.failures: list[str] = []
        self.retried_because: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(k,), daemon=True) for k in range(clients)]

    def _post(self, http: httpx.Client, body: dict) -> httpx.Response | str:
        try:
            return http.post(PREDICT_URL, json=body, headers=self.headers)
        except httpx.TransportError as exc:
            return f"{type(exc).__name__}: {exc}"

    def _client(self, k: int) -> None:
        with httpx.Client(base_url=self.base, timeout=60) as http:
            n = k
            while not self._stop.is_set():
                phase, body = self.phase, self.bodies[n % len(self.bodies)]
                n += 1
                outcome = self._post(http, body)
                retried = False
                if self.retry_once and (isinstance(outcome, str) or outcome.status_code >= 500):
                    retried, first = True, outcome
                    outcome = self._post(http, body)
                if self.count_at == "answer":
                    phase = self.phase
                tally = Counter(sent=1, retried=int(retried))
                if isinstance(outcome, str) or outcome.status_code != 200:
                    tally["failed"] += 1
                    why = outcome if isinstance(outcome, str) else f"{outcome.status_code} {outcome.text[:200]}"
                    with self._lock:
                        self.failures.append(f"{phase}: {why}")
                else:
                    out = outcome.json()
                    tally["answered"] += 1
                    tally["cache_hits"] += int(out["cache_hit"])
                    tally["degraded"] += int(bool(out["models_failed"]))  # answered by fewer models
                if retried:
                    first_why = first if isinstance(first, str) else f"{first.status_code} {first.text[:300]}"
                    tally[f"retried_after:{first_why.split()[0].rstrip(':')}"] += 1
                    with self._lock:
                        self.retried_because.append(f"{phase}: {first_why}")
                with self._lock:
                    self.counts.setdefault(phase, Counter()).update(tally)
                time.sleep(0.02)

    def answered_in(self, phase: str) -> int:
        with self._lock:
            return self.counts.get(phase, Counter())["answered"]

    def total(self) -> Counter:
        with self._lock:
            return sum(self.counts.values(), Counter())

    def figures(self) -> dict:
        with self._lock:
            return {phase: dict(c) for phase, c in self.counts.items()}

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(120)


def test_redis_stopped_and_restarted_under_load(api, engineer, hdx_env):
    """The session app's Redis stops under prediction load and comes back empty.

    Meanwhile predictions are answered, uncached (``/ready``: ``degraded``, kv and cache not
    ok; no 5xx is documented for this); a logout is answered 204 because it is committed to
    the database first (``auth.revocations``) and holds on every ingress replica (each re-reads
    revocations every ``revocation_sync_s``, 1 s); the login throttle counts in each replica.
    After: ``/ready`` is ``ready`` again, nothing revoked works again though Redis lost every
    key, and the cache hits again."""
    redis = hdx_env["redis"]
    http = api.http
    sync_wait_s = 2.5  # past revocation_sync_s (1 s) on every ingress replica
    before_user, before_pw = api.create_user("engineer")
    revoked_before = api.auth(api.token(before_user, before_pw))
    assert http.post("/api/v1/auth/logout", headers=revoked_before).status_code == 204
    during_user, during_pw = api.create_user("engineer")
    revoked_during = api.auth(api.token(during_user, during_pw))  # logged in now, logged out while Redis is down
    throttled_user, throttled_pw = api.create_user("engineer")
    max_failures = 5  # Settings.login_max_failures; the session app runs the defaults
    faults = 0
    figures: dict = {}
    assert http.get("/api/v1/ready").json()["status"] == "ready"

    with PredictionLoad(api.base, engineer["headers"], engineer["system"]) as load:
        assert wait_until(lambda: load.answered_in("before") >= 20, 60)
        try:
            redis.stop()
            faults += 1
            load.phase = "outage"
            down = http.get("/api/v1/ready")
            assert down.status_code == 200 and down.json()["status"] == "degraded", down.text
            assert {"kv", "cache"} <= set(down.json()["degraded"]) and not down.json()["checks"]["kv"]["ok"]

            logout = http.post("/api/v1/auth/logout", headers=revoked_during)
            figures["logout_while_down"] = logout.status_code
            assert logout.status_code == 204, logout.text
            time.sleep(sync_wait_s)
            me = Counter(http.get("/api/v1/auth/me", headers=h).status_code for h in [revoked_during] * 10)
            me_before = Counter(http.get("/api/v1/auth/me", headers=revoked_before).status_code for _ in range(10))
            assert me == {401: 10} and me_before == {401: 10}, (me, me_before)

            replicas = _running("Ingress")
            wrong = {"username": throttled_user, "password": "not the password"}
            logins = Counter(
                http.post("/api/v1/auth/token", json=wrong).status_code for _ in range(max_failures * replicas + 3)
            )
            figures["wrong_logins_while_down"] = dict(logins)
            # Each replica lets max_failures through at most, then answers 429.
            assert logins[401] <= max_failures * replicas and logins[429] >= 3 and set(logins) <= {401, 429}
            if replicas == 1:
                right = http.post("/api/v1/auth/token", json={"username": throttled_user, "password": throttled_pw})
                assert right.status_code == 429, right.text  # the throttle holds for the right password too
            assert wait_until(lambda: load.answered_in("outage") >= 20, 60)
        finally:
            if not redis.running:
                redis.start()
                faults += 1
        load.phase = "after"
        # The breaker probes Redis after its cool-down (kv_breaker_cooldown_s, 5 s) on each replica.
        assert wait_until(lambda: http.get("/api/v1/ready").json()["status"] == "ready", 60, poll_s=0.5)
        me = Counter(http.get("/api/v1/auth/me", headers=h).status_code for h in [revoked_during, revoked_before] * 5)
        assert me == {401: 10}, me  # Redis came back empty: the database still has them
        assert wait_until(lambda: load.answered_in("after") >= 20, 60)

    phases = load.figures()
    total = load.total()
    report(
        "redis_restart_under_load",
        {
            "faults_injected": faults,
            "ingress_replicas": replicas,
            "requests_sent": total["sent"],
            "answered": total["answered"],
            "failed": total["failed"],
            "phases": phases,
            "logout_while_down": figures["logout_while_down"],
            "revoked_tokens_accepted_after_restart": me.get(200, 0),
            "wrong_logins_while_down": figures["wrong_logins_while_down"],
        },
    )
    assert total["failed"] == 0, load.failures[:5]
    assert phases["outage"]["cache_hits"] == 0  # nothing to hit while Redis is down
    assert phases["before"]["cache_hits"] > 0 and phases["after"]["cache_hits"] > 0


def _replica_actor_names(deployment: str, app: str = "hdx") -> list[str]:
    import ray

    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::") and f"{app}#{deployment}#" in a["name"]
    )


def _running(deployment: str, app: str = "hdx") -> int:
    from ray import serve

    states = serve.status().applications[app].deployments[deployment].replica_states
    return sum(n for state, n in states.items() if getattr(state, "value", state) == "RUNNING")


def _app_status(app: str = "hdx") -> str:
    from ray import serve

    status = serve.status().applications[app].status
    return getattr(status, "value", status)


def _replaced(deployment: str, victims: list[str]) -> bool:
    return set(_replica_actor_names(deployment)).isdisjoint(victims) and _running(deployment) >= 1


def test_a_model_replica_and_the_ingress_replica_killed_under_load(api, engineer, ray_cluster):
    """``ray.kill`` a model replica (CatBoostModel), then every ingress replica, under a steady load.

    The documented retry: a client sends a request once more when it got no HTTP answer (the
    connection broke) or a 5xx: Serve's proxy answers 500 ("The actor died unexpectedly
    before finishing this task") for each request that was inside the ingress replica when it
    died, and a 503 asks for a retry with ``Retry-After``. Such requests are counted as
    ``retried``; none may fail after its one retry. Requests that arrive while no ingress
    replica runs wait in the proxy for the replacement. A diagnosis answered while the CatBoost
    replica was being replaced may come from fewer models (``models_failed``, counted as
    ``degraded``): an answer, not a failure."""
    import ray

    faults = []
    load = PredictionLoad(
        api.base, engineer["headers"], engineer["system"], retry_once=True, use_cache=False, count_at="answer"
    )
    with load:
        assert wait_until(lambda: load.answered_in("before") >= 20, 60)
        for deployment in ("CatBoostModel", "Ingress"):
            victims = _replica_actor_names(deployment)
            assert victims, f"no {deployment} replica found"
            load.phase = f"{deployment}_killed"
            for name in victims:
                ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
                faults.append(deployment)
            assert wait_until(lambda d=deployment, v=victims: _replaced(d, v), 120, 0.5), f"{deployment} not replaced"
            assert wait_until(lambda: load.answered_in(load.phase) >= 20, 120)
        load.phase = "after"
        assert wait_until(lambda: load.answered_in("after") >= 20, 60)
    assert wait_until(lambda: _app_status() == "RUNNING", 120, 0.5)  # as the next tests expect it

    total = load.total()
    report(
        "replica_kills_under_load",
        {
            "faults_injected": len(faults),
            "killed": dict(Counter(faults)),
            "requests_sent": total["sent"],
            "answered": total["answered"],
            "retried": total["retried"],
            "degraded_answers": total["degraded"],
            "failed_after_retry": total["failed"],
            "phases": load.figures(),
            "retried_because": load.retried_because[:5],
        },
    )
    assert total["failed"] == 0, load.failures[:5]
