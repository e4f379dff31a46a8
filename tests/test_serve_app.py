"""The Serve application end to end, through HTTP as a client sees it."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.fixtures.serve_app import MODEL_VERSIONS, simulated_request

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def engineer(api):
    username, password = api.create_user("engineer")
    token = api.token(username, password)
    system = api.create_system(username)
    return {"username": username, "password": password, "token": token, "system": system, "headers": api.auth(token)}


def test_login_token_predict(api, engineer):
    body = simulated_request(engineer["system"], seed=1, valve=73)
    r = api.http.post("/api/v1/diagnostics/predict", json=body, headers=engineer["headers"])
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["system_id"] == engineer["system"]
    pred = out["prediction"]
    for key in ("is_anomaly", "anomaly_score", "severity", "confidence", "affected_components", "anomaly_type"):
        assert key in pred
    assert set(pred["components"]) == {"cooler", "valve", "pump", "accumulator"}
    assert {m["ml_model"] for m in out["ml_predictions"]} == {"catboost", "xgboost", "random_forest", "adaptive"}
    for m in out["ml_predictions"]:
        assert m["version"] in MODEL_VERSIONS and m["features_used"] == out["features_extracted"] > 100
        assert m["processing_time_ms"] >= 0
    assert out["trace_id"] == r.headers["X-Request-ID"]
    assert out["cache_hit"] is False
    # A severely lagging valve on simulated data: the tiny test models still see it.
    assert pred["components"]["valve"]["level"] in (73, 80)
    assert pred["is_anomaly"] and "valve" in pred["affected_components"]


def test_cache_hit_then_miss_after_rollout(api, engineer, ray_cluster):
    body = simulated_request(engineer["system"], seed=2)
    first = api.http.post("/api/v1/diagnostics/predict", json=body, headers=engineer["headers"]).json()
    second = api.http.post("/api/v1/diagnostics/predict", json=body, headers=engineer["headers"]).json()
    assert first["cache_hit"] is False and second["cache_hit"] is True
    assert second["prediction"] == first["prediction"]
    uncached = api.http.post(
        "/api/v1/diagnostics/predict", json={**body, "use_cache": False}, headers=engineer["headers"]
    ).json()
    assert uncached["cache_hit"] is False

    # Roll out v2 of every model (the next test does it under load), and watch it finish as an
    # operator does: /models shows the new versions (the ingress re-reads them then, and
    # by itself every model_version_refresh_s).
    _redeploy(api, engineer, versions=MODEL_VERSIONS[1])
    info = api.http.get("/api/v1/models", headers=engineer["headers"]).json()
    assert info["profiles"]["uci-1hz"] == MODEL_VERSIONS[1]
    third = api.http.post("/api/v1/diagnostics/predict", json=body, headers=engineer["headers"]).json()
    # Every model deployment now holds the new model id (one replica each in the session app).
    models = api.http.get("/api/v1/models", headers=engineer["headers"]).json()["models"]
    assert all(f"uci-1hz@{MODEL_VERSIONS[1]}" in _held(m) for m in models), models
    assert set(third["model_versions"].values()) == {MODEL_VERSIONS[1]}
    assert third["cache_hit"] is False, (
        first["model_versions"],
        third,
    )  # a new version never answers from the old cache
    assert api.http.post("/api/v1/diagnostics/predict", json=body, headers=engineer["headers"]).json()["cache_hit"]


def test_rollout_under_load_drops_nothing(api, engineer):
    """A new code version of every deployment at once, under load: no request fails or loses a
    model, because every deployment keeps a running replica until its replacement is ready
    (max_surge_percent in serve_config.yaml). Without that, Serve stops the old replica first."""
    with _RunningReplicas() as running, _Load(api, engineer) as load:
        time.sleep(1.0)
        _redeploy(api, engineer, versions=MODEL_VERSIONS[0])
        time.sleep(1.0)
    assert running.polls > 5
    assert min(running.fewest.values()) >= 1, running.fewest  # never a deployment without a running replica
    assert running.replaced == set(running.fewest), running.replaced  # and every one was replaced
    load.assert_all_answered()
    info = api.http.get("/api/v1/models", headers=engineer["headers"]).json()
    assert info["profiles"]["uci-1hz"] == MODEL_VERSIONS[0]


def test_model_version_rollout_by_config_reconfigures_in_place(api, engineer, hdx_env):
    """The README's rollout: ``serve deploy`` of the config with a new ``user_config.version``
    on the model deployments. No replica restarts: each loads the new bundle beside the old
    one and swaps, so answers go from one version to the other with none failed."""
    old, new = MODEL_VERSIONS[1], MODEL_VERSIONS[0]  # the app is left on v1, as the other tests expect
    _deploy_config(old, hdx_env["env"])  # from Python to config: this one replaces replicas
    _wait_models(api, engineer, old)
    with _RunningReplicas() as running, _Load(api, engineer) as load:
        time.sleep(1.0)
        _deploy_config(new, hdx_env["env"])
        _wait_models(api, engineer, new)
        time.sleep(1.0)
    assert running.polls > 5
    # Replicas go UPDATING while they reconfigure (so RUNNING reads 0), but they stay in the
    # routers' sets and keep answering: the load below is the check that they do.
    assert running.replaced == set() and running.stopped == set(), (running.replaced, running.stopped)
    load.assert_all_answered()
    assert load.versions[0] == {old} and load.versions[-1] == {new}, load.versions


def test_rolling_out_one_profile_leaves_the_other_untouched(api, engineer, hdx_env):
    """A new version of uci-1hz alone, by config, under load on both profiles: no request of
    either fails; uci-1hz answers go from the old version to the new one, basic answers stay
    on their version throughout, and the model replicas keep holding basic's bundle."""
    basic_system = f"press-{engineer['system']}"
    r = api.http.post(
        "/api/v1/systems",
        json={"id": basic_system, "name": "press", "channels": ["pressure", "temperature", "flow", "vibration"]},
        headers=engineer["headers"],
    )
    assert r.status_code == 201 and r.json()["profile"] == "basic", r.text
    old, new = MODEL_VERSIONS[0], MODEL_VERSIONS[1]
    _deploy_config({"uci-1hz": old, "basic": old}, hdx_env["env"])
    _wait_models(api, engineer, old)
    basic = _Load(api, {**engineer, "system": basic_system}, clients=1, body=_basic_request)
    try:
        with _Load(api, engineer) as uci, basic:
            time.sleep(1.0)  # both profiles answering before the rollout starts
            _deploy_config({"uci-1hz": new, "basic": old}, hdx_env["env"])
            _wait_models(api, engineer, new)
            time.sleep(1.0)  # and after it is over
        info = api.http.get("/api/v1/models", headers=engineer["headers"]).json()
    finally:
        _deploy_config({"uci-1hz": old, "basic": old}, hdx_env["env"])  # as the other tests expect
        _wait_models(api, engineer, old)
    uci.assert_all_answered()
    basic.assert_all_answered()
    assert uci.versions[0] == {old} and uci.versions[-1] == {new}, uci.versions
    assert all(v == {old} for v in basic.versions), basic.versions
    assert info["profiles"] == {"uci-1hz": new, "basic": old}
    for entry in info["models"]:
        assert f"basic@{old}" in {m for r in entry["replicas"] for m in r["models"]}, entry


def _basic_request(system_id: str, seed: int) -> dict:
    """An alias-form request (pressure, temperature, flow, vibration): the basic profile."""
    from hydraulics.channels import ALIASES
    from hydraulics.simulator import simulate_cycle

    cycle = simulate_cycle(100, 100, 0, 130, rng=seed)
    data = {alias: cycle[channel].round(4).tolist() for alias, channel in ALIASES.items() if channel in cycle}
    return {"system_id": system_id, "sensor_data": data, "use_cache": False}


def _uci_request(system_id: str, seed: int) -> dict:
    return {**simulated_request(system_id, seed=seed), "use_cache": False}


class _Load:
    """Clients posting uncached diagnoses until the block ends; keeps every status, the
    failures and the model versions of each answer. ``body(system_id, seed)`` makes a
    request (default: a uci-1hz cycle)."""

    def __init__(self, api, engineer, clients: int = 2, body=_uci_request):
        self.api, self.engineer, self.body = api, engineer, body
        self.statuses: list[int] = []
        self.failures: list[str] = []
        self.versions: list[set[str]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(1000 * k,)) for k in range(clients)]

    def _client(self, seed: int) -> None:
        with httpx.Client(base_url=self.api.base, timeout=30) as http:
            while not self.stop.is_set():
                seed += 1
                body = self.body(self.engineer["system"], seed)
                r = http.post("/api/v1/diagnostics/predict", json=body, headers=self.engineer["headers"])
                self.statuses.append(r.status_code)
                if r.status_code != 200:
                    self.failures.append(r.text[:300])
                elif r.json()["models_failed"]:
                    self.failures.append(str(r.json()["models_failed"])[:300])
                else:
                    self.versions.append(set(r.json()["model_versions"].values()))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def assert_all_answered(self) -> None:
        assert len(self.statuses) > 10
        counts = {s: self.statuses.count(s) for s in set(self.statuses)}
        assert counts.keys() == {200} and not self.failures, (counts, self.failures)


class _RunningReplicas:
    """Polls ``serve.status()`` in a thread while the block runs: the fewest RUNNING
    replicas each deployment of the app had, and which deployments started or stopped a replica."""

    def __init__(self, app: str = "hdx"):
        self.app = app
        self.fewest: dict[str, int] = {}
        self.replaced: set[str] = set()
        self.stopped: set[str] = set()
        self.polls = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self.stop.is_set():
            for name, d in _serve_status().applications[self.app].deployments.items():
                states = _replica_states(d)
                self.fewest[name] = min(self.fewest.get(name, 10**6), states.get("RUNNING", 0))
                if states.get("STARTING") or states.get("PENDING_MIGRATION"):
                    self.replaced.add(name)
                if states.get("STOPPING"):
                    self.stopped.add(name)
            self.polls += 1
            time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(60)


def _replica_states(deployment_status) -> dict[str, int]:
    """A deployment's replica count by state name, from ``serve.status()``."""
    return {getattr(state, "value", state): n for state, n in deployment_status.replica_states.items()}


# Serve's client is not thread-safe: ``serve.status()`` and ``serve.run`` both build
# autoscaling configs, which register and unregister one cloudpickle module in a global set,
# so two threads at once fail with "... is not registered for pickle by value". Every call
# made while a ``_RunningReplicas`` poller thread runs goes through this lock.
_SERVE_CLIENT = threading.Lock()


def _serve_status():
    from ray import serve

    with _SERVE_CLIENT:
        return serve.status()


def _redeploy(api, engineer, versions: str) -> None:
    """``serve.run`` again with other model versions, until every model answers at them. An
    app deployed from Python gets a new code version on every ``serve.run``, so this replaces
    every replica: the heavier kind of rollout (a new image). ``_deploy_config`` is the
    lighter one."""
    from ray import serve

    from deployments.builder import app_from_serve_config

    with _SERVE_CLIENT:  # building the app makes configs too; submit only, the wait below polls
        app = app_from_serve_config(assistant=False, profile_versions={"uci-1hz": versions, "basic": versions})
        serve.run_many([serve.RunTarget(app, name="hdx", route_prefix="/")], wait_for_applications_running=False)
    _wait_models(api, engineer, versions)


def _held(info: dict) -> set[str]:
    """The model ids a model deployment's answering replica holds (``/models``)."""
    return {m["model_id"] for m in info.get("models", [])}


def _deploy_config(versions: str | dict[str, str], env: dict) -> None:
    """What ``serve deploy`` sends the controller: the app by import path, the versions
    pinned per profile (one for both, or ``{profile: version}``) as the ensemble's ``user_config``."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from deployments.builder import serve_config_application
    from diagnosis.registry import FAMILIES

    models = {spec.deployment for spec in FAMILIES.values()}
    # The file's options for the deployments of an app without the assistant; the versions
    # are the ensemble's user_config.profiles.
    pinned = dict(versions) if isinstance(versions, dict) else {"uci-1hz": versions, "basic": versions}
    deployments = [
        {**d, "user_config": {**d["user_config"], "profiles": pinned}} if d["name"] == "DiagnosisEnsemble" else d
        for d in serve_config_application()["deployments"]
        if d["name"] in models | {"Ingress", "DiagnosisEnsemble"}
    ]
    with _SERVE_CLIENT:  # validating the schema may build autoscaling configs too
        config = ServeDeploySchema.model_validate(
            {
                "applications": [
                    {
                        "name": "hdx",
                        "route_prefix": "/",
                        "import_path": "deployments.builder:build_app",
                        "args": {"assistant": False},
                        "runtime_env": {"env_vars": env},
                        "deployments": deployments,
                    }
                ]
            }
        )
        _get_global_client().deploy_apps(config)


def _wait_models(api, engineer, version: str, timeout_s: float = 180) -> None:
    """Until ``/models`` shows every model at ``version`` and the rollout is over: the app is
    RUNNING (what a blocking ``serve.run`` waits for), every deployment has a RUNNING replica
    and none is still being updated or stopped. A replica STARTING beside a RUNNING one of the
    new version is not waited for: on this small machine an upscale may wait for CPU for long."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = api.http.get("/api/v1/models", headers=engineer["headers"]).json()
        models, served = info.get("models", []), info.get("profiles", {})
        app = _serve_status().applications["hdx"]
        states = {name: _replica_states(d) for name, d in app.deployments.items()}
        settled = app.status == "RUNNING" and all(
            s.get("RUNNING") and not s.keys() & {"UPDATING", "STOPPING", "PENDING_MIGRATION"} for s in states.values()
        )
        if settled and len(models) == 4 and served.get("uci-1hz") == version:
            return
        time.sleep(0.5)
    raise AssertionError(f"models not at {version} after {timeout_s:g} s: {models}; app {app.status}, {states}")


def test_batch_answers_per_item(api, engineer):
    good = simulated_request(engineer["system"], seed=3)["sensor_data"]
    short = {k: v[:30] for k, v in good.items()}
    # JSON has no NaN; a client's 1e400 overflows to infinity, which must be refused per item.
    body = json.dumps({"system_id": engineer["system"], "items": [good, dict(good, SE=[123456.0] * 60), short, good]})
    body = body.replace("123456.0", "1e400")
    r = api.http.post(
        "/api/v1/diagnostics/predict/batch",
        content=body,
        headers={**engineer["headers"], "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["succeeded"] == 2 and out["failed"] == 2
    assert [i["ok"] for i in out["items"]] == [True, False, False, True]
    assert out["items"][1]["error"]["channel"] == "SE" and "NaN or infinity" in out["items"][1]["error"]["message"]
    assert "too short" in out["items"][2]["error"]["message"]
    too_many = {"system_id": engineer["system"], "items": [good] * 65}
    r = api.http.post("/api/v1/diagnostics/predict/batch", json=too_many, headers=engineer["headers"])
    assert r.status_code == 422 and "at most 64 items" in r.text


def test_error_codes_with_messages(api, engineer):
    h = engineer["headers"]
    body = simulated_request(engineer["system"], seed=6)
    body["sensor_data"]["TS1"][5] = 400.0
    r = api.http.post("/api/v1/diagnostics/predict", json=body, headers=h)
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", "sensor_data", "TS1"] and "outside the plausible range" in detail["msg"]

    missing = simulated_request(engineer["system"])
    del missing["sensor_data"]["CE"]
    r = api.http.post("/api/v1/diagnostics/predict", json=missing, headers=h)
    assert r.status_code == 422 and "missing ['CE']: required by profile uci-1hz" in r.text

    r = api.http.post(
        "/api/v1/diagnostics/predict", json={"system_id": engineer["system"], "sensor_data": "hot"}, headers=h
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "sensor_data"]

    huge = {"system_id": engineer["system"], "sensor_data": {"TS1": [45.0] * 400_000}}
    r = api.http.post("/api/v1/diagnostics/predict", json=huge, headers=h)
    assert r.status_code == 413 and "exceeds" in r.text

    r = api.http.post(
        "/api/v1/diagnostics/predict", content=b"{not json", headers={**h, "content-type": "application/json"}
    )
    assert r.status_code == 422

    r = api.http.get("/api/v1/health", headers={"X-Request-ID": "trace-abc-123"})
    assert r.status_code == 200 and r.headers["X-Request-ID"] == "trace-abc-123"

    for _ in range(6):
        r = api.http.post("/api/v1/auth/token", json={"username": engineer["username"], "password": "wrong"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0


def test_ready_reports_stopped_redis_as_degraded(api, engineer, hdx_env):
    assert api.http.get("/api/v1/ready").json()["status"] == "ready"
    redis = hdx_env["redis"]
    redis.stop()
    try:
        r = api.http.get("/api/v1/ready")
        assert r.status_code == 200
        assert r.json()["status"] == "degraded" and r.json()["checks"]["cache"]["ok"] is False
        # Predictions go on, uncached.
        body = simulated_request(engineer["system"], seed=7)
        for _ in range(2):
            p = api.http.post("/api/v1/diagnostics/predict", json=body, headers=engineer["headers"])
            assert p.status_code == 200 and p.json()["cache_hit"] is False
    finally:
        redis.start()
    deadline = time.time() + 10
    while api.http.get("/api/v1/ready").json()["status"] != "ready" and time.time() < deadline:
        time.sleep(0.2)
    assert api.http.get("/api/v1/ready").json()["status"] == "ready"


# --- failing model deployments ----------------------------------------------------------


class _BrokenModel:
    def predict_proba(self, X):
        raise RuntimeError("model file corrupted")


def broken_store(uri: str, broken: set[str]):
    """The model store, except that the bundles of ``broken`` families fail every prediction."""
    from diagnosis.store import ModelStore

    class BrokenModelStore(ModelStore):
        def load(self, family: str, version: str = "latest", with_state: bool = True):
            bundle = super().load(family, version, with_state)
            if family in broken:
                bundle.model = _BrokenModel()
            return bundle

    return BrokenModelStore(uri)


def _deploy_with_broken(name: str, broken: set[str]) -> None:
    from ray import serve

    from configs.settings import get_settings
    from deployments.builder import app_from_serve_config

    store = broken_store(get_settings().model_store_uri, broken)
    app = app_from_serve_config(assistant=False, profile_versions={"uci-1hz": MODEL_VERSIONS[0]}, model_store=store)
    serve.run(app, name=name, route_prefix=f"/{name}")


def test_one_failing_model_still_answers_and_none_is_503(api, engineer):
    from ray import serve

    _deploy_with_broken("degraded", {"catboost"})
    try:
        body = simulated_request(engineer["system"], seed=8)
        r = api.http.post("/degraded/api/v1/diagnostics/predict", json=body, headers=engineer["headers"])
        assert r.status_code == 200, r.text
        out = r.json()
        assert {m["ml_model"] for m in out["ml_predictions"]} == {"xgboost", "random_forest", "adaptive"}
        assert "model file corrupted" in out["models_failed"]["catboost"]
        healthy = api.http.post(
            "/api/v1/diagnostics/predict", json={**body, "use_cache": False}, headers=engineer["headers"]
        ).json()
        assert out["prediction"]["confidence"] < healthy["prediction"]["confidence"]
        assert out["ensemble_coverage"] == 0.75
    finally:
        serve.delete("degraded")

    _deploy_with_broken("dead", {"catboost", "xgboost", "random_forest", "adaptive"})
    try:
        r = api.http.post(
            "/dead/api/v1/diagnostics/predict",
            json=simulated_request(engineer["system"], seed=9),
            headers=engineer["headers"],
        )
        assert r.status_code == 503 and r.headers["Retry-After"]
        detail = r.json()["detail"]
        assert detail.startswith("NoModelAvailable: no model deployment answered") and "ray::" not in detail
    finally:
        serve.delete("dead")


def test_access_revoked_through_the_api_is_refused_at_once(api, engineer):
    """The ingress remembers a granted access for access_cache_ttl_s; a revocation through the
    API clears that memory, so the very next request is refused instead of served for the TTL."""
    guest, password = api.create_user("engineer")
    guest_headers = api.auth(api.token(guest, password))
    body = simulated_request(engineer["system"], seed=4)
    members = f"/api/v1/systems/{engineer['system']}/members"
    assert api.http.post(members, json={"username": guest}, headers=engineer["headers"]).status_code == 201
    granted = api.http.post("/api/v1/diagnostics/predict", json=body, headers=guest_headers)
    assert granted.status_code == 200, granted.text
    [member] = api.http.get(members, headers=engineer["headers"]).json()
    assert api.http.delete(f"{members}/{member['user_id']}", headers=engineer["headers"]).status_code == 204
    refused = api.http.post("/api/v1/diagnostics/predict", json=body, headers=guest_headers)
    assert refused.status_code == 403, refused.text
