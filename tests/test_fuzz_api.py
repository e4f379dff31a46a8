"""Schema fuzzing: schemathesis against the real API app in-process (ASGI), on SQLite and on PostgreSQL.

The app is ``api.application.create_app`` with its lifespan (migrations, audit and
history writers, rate limiter) and the real ensemble library code on small real
bundles (``tests.fixtures.local_ensemble.InProcessEnsemble``), so a prediction is a
real diagnosis, stored, readable by id and open to feedback that the Adaptive
model learns from. The assistant is not deployed here: ``/rag/query`` and
``/rag/documents/{id}`` answer their validation and permission paths and their 503.

Per database, one app serves:

* ``test_every_operation_conforms``: every operation with schemathesis's examples,
  coverage (boundary and invalid values of every parameter) and fuzzing phases,
  positive and negative, as an admin;
* ``test_workflows_conform``: stateful runs that follow the OpenAPI links (those the
  app declares and those schemathesis infers), as an admin and as an engineer with a
  read-only and a writable grant on the admin's systems: create a system -> read,
  change, share, delete it; predict -> read the prediction by id -> feedback;
  ingest -> readings and the predictions of ``diagnose: true``. In these runs a
  positive case's random payload is made realistic where no schema can say what is
  valid (``Target._realistic``: real simulated cycles, catalogue channels, known
  components, a fresh system id), so the steps succeed and the links have ids.

Each operation and each scenario starts from the seeded systems and grants
(``Target.restore``). Every response must pass ``CHECKS``: no server error, a
documented status code, content type, headers and body, and nothing the schema
forbids accepted. An exception the app raises counts as a server error. Runs are
derandomized (fixed seed, no example database, fixed example counts); a workflow run
that a replay against the moved-on state cuts short (``Flaky``) goes on with a new run,
as the schemathesis CLI does. Each run's figures (operations, cases, server errors,
schema violations, seconds, statuses per operation) are printed when the module ends
and written to ``fuzz_figures.json`` in the pytest temp dir.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import Flaky
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup, ServerError
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import delete, update

from auth.tokens import TokenCodec
from storage.db import Database
from storage.repositories import systems as systems_repo
from storage.tables import Base, System
from tests.fixtures.db import TEST_PASSWORD, add_user
from tests.fixtures.serve_app import simulated_request, train_test_bundles
from tests.test_platform_support import platform_settings

SEED = 20260412
MAX_EXAMPLES = 25  # fuzzing examples per operation, on top of its examples and coverage cases
WORKFLOWS = 100  # stateful scenarios per run
STEPS = 10  # calls per scenario, at most
MAX_REPLAYS = 5  # new workflow runs after one cut short by a replay
WORKFLOW_SETTINGS = settings(
    max_examples=WORKFLOWS,
    stateful_step_count=STEPS,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
    suppress_health_check=list(HealthCheck),
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,  # what the schema forbids is refused (4xx), not served
]
TIERS = "tiers:\n  free: {per_minute: 1000000, daily_quota: 100000000}\n"
# The systems every run starts from, with the engineer's permission on each (the admin owns them).
SEEDED = {"rig-01": "read", "fuzz-shared-write": "write"}
WRITABLE = {"admin": "rig-01", "engineer": "fuzz-shared-write"}
CHANNEL_SETS = [["TS1", "TS2", "VS1"], ["PS1", "FS1", "CE", "cp"], []]
LABELS = [{"cooler": 100}, {"valve": 90, "pump": 0}, {"accumulator": 115}]
FIGURES: dict[str, dict] = {}  # run id -> its figures, reported when the module ends


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("fuzz_models"))
    train_test_bundles(uri)
    return uri


def _openapi_document() -> dict:
    """The app's OpenAPI document (it does not depend on the database or the lifespan)."""
    import tempfile

    from api.application import create_app
    from configs.settings import Settings

    with tempfile.TemporaryDirectory() as home:
        return create_app(Settings(home=Path(home), dev_mode=True, redis_url=None)).openapi()


# The operations to test are known when the module is collected: one test per operation and database.
DOCUMENT = _openapi_document()
schema = schemathesis.openapi.from_dict(DOCUMENT)
schema.config.seed = SEED
schema.config.generation.update(
    max_examples=MAX_EXAMPLES, deterministic=True, database="none", no_shrink=True, with_security_parameters=False
)


@dataclass
class Run:
    """One fuzz run's figures."""

    operations: set[str] = field(default_factory=set)
    cases: int = 0
    statuses: Counter = field(default_factory=Counter)
    by_operation: dict[str, Counter] = field(default_factory=dict)
    server_errors: int = 0
    schema_violations: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    restored_for: str = ""  # the operation the seeded systems were last restored for (operations runs)
    scenarios: int = 0  # workflows only
    replays: int = 0  # workflows ended early by a replay that met a changed state

    def figures(self) -> dict:
        return {
            "operations": len(self.operations),
            "cases": self.cases,
            "server_errors": self.server_errors,
            "schema_violations": self.schema_violations,
            "seconds": round(self.seconds, 1),
            "scenarios": self.scenarios,
            "replays": self.replays,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "by_operation": {
                op: {str(k): v for k, v in sorted(c.items())} for op, c in sorted(self.by_operation.items())
            },
            "failures": self.failures,
        }


class Target:
    """The app under test, the callers' credentials and each run's figures."""

    def __init__(self, app, settings_, identities: dict[str, dict], side: SideLoop):
        self.app, self.identities, self.side = app, identities, side
        self.codec = TokenCodec.from_settings(settings_)
        self.runs: dict[str, Run] = {}
        self.made = 0  # realistic payloads made, for variety
        self.known = set(SEEDED)  # the systems that exist now, as the answers tell
        self.cycles = [simulated_request("-", seed=i)["sensor_data"] for i in range(4)]

    def prepare(self, case, who: str, realistic: bool = False) -> None:
        """Credentials on the case (unless the case tests credentials itself); in workflows, real data."""
        me = self.identities[who]
        sent = {k.lower() for k in case.headers or {}}
        if not sent & {"authorization", "x-api-key"}:
            token = me["token"]
            if case.operation.label == "POST /api/v1/auth/logout":
                token = self._fresh_token(me)  # the run's own token must outlive a logout
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
        if realistic and isinstance(case.body, dict) and not _negative(case):
            self._realistic(case, who)

    def restore(self) -> None:
        """The seeded systems and grants back as they were (a run may have deleted or revoked them), so that
        every test and scenario starts from them."""
        self.side.run(_restore(self.side.db, self.identities))
        cache = getattr(self.app.state, "access_cache", None)
        if cache is not None:
            cache.clear()  # between requests: nothing runs on the app's loop now
        self.known |= set(SEEDED)

    def _fresh_token(self, me: dict) -> str:
        return self.codec.issue(user_id=me["id"], role=me["role"], type="access", family_id=uuid.uuid4().hex).token

    def _realistic(self, case, who: str) -> None:
        """A positive case's random payload where the schema cannot say what is valid: real simulated cycles
        (the channel names, lengths and ranges the models need) for a system that exists, catalogue
        channels, known components and a fresh system id, so the workflow's steps succeed and its links
        have ids to follow."""
        body, n = case.body, len(self.cycles)
        self.made += 1
        i = self.made
        if "system_id" in body and body["system_id"] not in self.known:
            body["system_id"] = WRITABLE[who]
        if "sensor_data" in body:
            body["sensor_data"] = self.cycles[i % n]
        if isinstance(body.get("items"), list) and body["items"]:
            body["items"] = [self.cycles[(i + k) % n] for k in range(min(3, len(body["items"])))]
        for k, cycle in enumerate(body.get("cycles") or []):
            if isinstance(cycle, dict) and "sensor_data" in cycle:
                cycle["sensor_data"] = self.cycles[(i + k) % n]
        if case.operation.label == "POST /api/v1/systems":
            body["id"] = f"{str(body.get('id', 'rig'))[:50]}-{i}"
            body["channels"] = CHANNEL_SETS[i % len(CHANNEL_SETS)]
            body["topology"] = {}
            body.pop("owner_id", None)
        if case.operation.label.endswith("/feedback"):
            body["components"] = LABELS[i % len(LABELS)]

    def call(self, run: str, case, **kwargs):
        """The case sent to the app. An exception the app raised (Starlette answers it with a 500 and
        re-raises it, so it arrives here) is counted as a server error, then raised."""
        try:
            return case.call(app=self.app, **kwargs)
        except Exception as exc:
            run = self.runs.setdefault(run, Run())
            run.cases += 1
            run.server_errors += 1
            run.failures.append(f"{case.operation.label}: the app raised {type(exc).__name__}: {exc}")
            raise

    def check(self, run: str, case, response, recorder=None) -> None:
        """Count the case and validate its response; the checks' failures are counted, then raised."""
        run = self.runs.setdefault(run, Run())
        run.cases += 1
        run.operations.add(case.operation.label)
        run.statuses[response.status_code] += 1
        run.by_operation.setdefault(case.operation.label, Counter())[response.status_code] += 1
        if case.operation.label == "POST /api/v1/systems" and response.status_code == 201:
            self.known.add(response.json()["id"])
        if case.operation.label == "DELETE /api/v1/systems/{system_id}" and response.status_code == 204:
            self.known.discard(case.path_parameters["system_id"])
        checks = CHECKS
        if _assistant_absent(case, response):
            checks = [c for c in CHECKS if c is not not_a_server_error]  # the 503 this app must answer
        elif response.status_code >= 500:
            run.server_errors += 1
        try:
            case.validate_response(response, checks=checks, recorder=recorder)
        except (FailureGroup, Failure) as error:
            failures = error.exceptions if isinstance(error, FailureGroup) else [error]
            run.schema_violations += sum(1 for f in failures if not isinstance(f, ServerError))
            run.failures += [f"{case.operation.label} {response.status_code}: {f.title}" for f in failures]
            raise


ASSISTANT_ROUTES = {"POST /api/v1/rag/query", "GET /api/v1/rag/documents/{document_id}"}


def _assistant_absent(case, response) -> bool:
    """The 503 of the assistant's routes here, where none is deployed (``app.state.rag`` is None)."""
    if case.operation.label not in ASSISTANT_ROUTES or response.status_code != 503:
        return False
    return response.json().get("detail") == "the maintenance assistant is not deployed"


def _negative(case) -> bool:
    meta = case.meta
    return meta is not None and meta.generation.mode.is_negative


class SideLoop:
    """An event loop in a thread of its own, with a ``Database`` used only there: the test's own set-up
    and restores (the app runs on schemathesis's portal loop)."""

    def __init__(self, database_url: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-side-loop", daemon=True)
        self.thread.start()
        self.db = Database(database_url)

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.run(self.db.dispose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


async def _seed(db: Database) -> dict[str, dict]:
    """An admin who owns the seeded systems, and an engineer granted read on one and write on the other.
    The first is the documents' example system, so the examples phase reaches a real one."""
    async with db.sessionmaker() as s:
        admin = await add_user(s, "fuzz-admin", "admin")
        engineer = await add_user(s, "fuzz-engineer", "engineer")
        for system_id in SEEDED:
            await systems_repo.create_system(s, system_id=system_id, name=system_id, owner_id=admin.id)
        await s.commit()
    identities = {
        "admin": {"id": admin.id, "username": admin.username, "role": "admin"},
        "engineer": {"id": engineer.id, "username": engineer.username, "role": "engineer"},
    }
    await _restore(db, identities)
    return identities


async def _restore(db: Database, identities: dict[str, dict]) -> None:
    async with db.sessionmaker() as s:
        await s.execute(update(System).where(System.id.in_(list(SEEDED))).values(deleted_at=None))
        for system_id, permission in SEEDED.items():
            await systems_repo.grant_membership(
                s,
                system_id=system_id,
                user_id=identities["engineer"]["id"],
                permission=permission,
                granted_by=identities["admin"]["id"],
            )
        await s.commit()


async def _empty(db: Database) -> None:
    """What the ``db`` fixture does after a test: delete every row (the database is the session's)."""
    async with db.engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            await connection.execute(delete(table))


@pytest.fixture(scope="module")
def target(database_url: str, tmp_path_factory, model_store: str):
    """One app per database for the module's runs (each test of it adds to the same state)."""
    from api.application import create_app
    from tests.fixtures.local_ensemble import InProcessEnsemble

    home = tmp_path_factory.mktemp("fuzz_home")
    tiers = home / "fuzz_tiers.yaml"
    tiers.write_text(TIERS)
    config = platform_settings(
        home,
        database_url,
        model_store_uri=model_store,
        tiers_path=tiers,
        login_client_max_attempts=10,  # a login fuzzed past this is a fast 429, not 100 ms of argon2
    )
    app = create_app(config)
    app.state.ensemble = InProcessEnsemble(config)
    app.state.rag = None
    side = SideLoop(database_url)
    login = schema["/api/v1/auth/token"]["POST"]
    try:
        identities = side.run(_seed(side.db))
        for me in identities.values():  # the first call starts the app's lifespan
            body = {"username": me["username"], "password": TEST_PASSWORD}
            r = login.Case(body=body, media_type="application/json").call(app=app)
            assert r.status_code == 200, r.text
            me["token"] = r.json()["access_token"]
        yield Target(app, config, identities, side)
    finally:
        shutdown_lifespans()  # the app's writers flush and its database closes before the rows go
        side.run(_empty(side.db))
        side.close()


def _kind(database_url: str) -> str:
    return "postgres" if database_url.startswith("postgresql") else "sqlite"


def test_the_document_declares_each_refusal_with_the_error_body():
    """What generated clients rely on, checked without a server: every refusal a route can answer is in
    the document with ``ErrorBody`` (the fuzz runs below check that nothing else is answered)."""
    assert "HTTPValidationError" not in json.dumps(DOCUMENT)  # FastAPI's 422 body is not this API's
    for path, operations in DOCUMENT["paths"].items():
        for method, operation in operations.items():
            responses, label = operation["responses"], f"{method.upper()} {path}"
            declared = {int(code) for code in responses}
            assert 400 in declared, label  # a malformed X-Request-ID, on any route
            if operation.get("security"):
                assert {401, 429} <= declared or path.startswith("/api/v1/auth/"), label
                assert 401 in declared, label
            if "requestBody" in operation:
                assert {413, 422} <= declared, label
            if operation.get("parameters"):
                assert 422 in declared, label
            if any(p["in"] == "path" and p["name"] == "system_id" for p in operation.get("parameters", [])):
                assert {403, 404} <= declared, label
            for code in declared - {200, 201, 202, 204}:
                if (path, code) == ("/api/v1/ready", 503):
                    continue  # unready: the readiness body, naming what is down
                content = responses[str(code)]["content"]["application/json"]
                assert content["schema"] == {"$ref": "#/components/schemas/ErrorBody"}, (label, code)


@schema.parametrize()
def test_every_operation_conforms(case, target, database_url):
    name = f"operations[{_kind(database_url)}]"
    start = time.perf_counter()
    try:
        if not target.runs.get(name) or target.runs[name].restored_for != case.operation.label:
            target.restore()  # each operation starts from the seeded systems
            target.runs.setdefault(name, Run()).restored_for = case.operation.label
        target.prepare(case, "admin")
        target.check(name, case, target.call(name, case))
    finally:
        run = target.runs.setdefault(name, Run())
        run.seconds += time.perf_counter() - start
        FIGURES[name] = run.figures()


@pytest.mark.parametrize("who", ["admin", "engineer"])
def test_workflows_conform(target, database_url, who):
    name = f"workflows[{_kind(database_url)}-{who}]"
    run = target.runs.setdefault(name, Run())
    start = time.perf_counter()

    class Workflow(schema.as_state_machine()):
        def setup(self):
            run.scenarios += 1
            target.restore()

        def before_call(self, case):
            target.prepare(case, who, realistic=True)

        def call(self, case, **kwargs):
            return target.call(name, case, **kwargs)

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            target.check(name, case, response, recorder=self.recorder)

    try:
        while run.scenarios < WORKFLOWS and run.replays < MAX_REPLAYS:
            try:
                Workflow.run(settings=WORKFLOW_SETTINGS)
                break
            except Flaky:
                # A replay met other answers than the first run, because the app's state moved on (the
                # workflows share one database): what the schemathesis CLI does too, take what ran and go on.
                run.replays += 1
                if run.failures:
                    break
    finally:
        run.seconds = time.perf_counter() - start
        FIGURES[name] = run.figures()
    assert not run.failures, "\n".join(run.failures)


@pytest.fixture(scope="module", autouse=True)
def _report(request, tmp_path_factory):
    yield
    if not FIGURES:
        return
    path = tmp_path_factory.getbasetemp() / "fuzz_figures.json"
    path.write_text(json.dumps(FIGURES, indent=2))
    lines = [f"schema fuzzing figures (also in {path}):"] + [
        f"  {run}: {f['operations']} operations, {f['cases']} cases, {f['server_errors']} server errors, "
        f"{f['schema_violations']} schema violations, {f['seconds']} s"
        for run, f in FIGURES.items()
    ]
    with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print("\n" + "\n".join(lines))
