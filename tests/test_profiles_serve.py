"""Two equipment profiles served by the same deployments through the real Serve app
(model multiplexing), and the multiplexed LRU of a model replica."""

from __future__ import annotations

import threading

import httpx
import numpy as np
import pytest

from hydraulics.channels import ALIASES
from tests.fixtures.serve_app import MODEL_VERSIONS, simulated_request

pytestmark = pytest.mark.ray

ALIAS_OF = {channel: alias for alias, channel in ALIASES.items()}


def _basic_body(system_id: str, seed: int) -> dict:
    from hydraulics.simulator import simulate_cycle

    cycle = simulate_cycle(100, 100, 2, 130, rng=seed)
    data = {ALIAS_OF[c]: cycle[c].round(4).tolist() for c in ("PS1", "TS1", "FS1", "VS1")}
    return {"system_id": system_id, "sensor_data": data, "use_cache": False}


@pytest.fixture(scope="module")
def fleet(api):
    """An engineer with a uci-1hz system (no channels declared: the default profile) and a
    system registered with the alias channels (the basic profile)."""
    username, password = api.create_user("engineer")
    headers = api.auth(api.token(username, password))
    uci = api.create_system(username)
    r = api.http.post(
        "/api/v1/systems",
        json={"id": f"press-{uci}", "name": "press", "channels": ["pressure", "temperature", "flow", "vibration"]},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    assert r.json()["profile"] == "basic", r.json()
    return {"headers": headers, "uci": uci, "basic": r.json()["id"]}


def test_two_profiles_at_once_in_mixed_batches(api, fleet):
    """Concurrent requests of both profiles: each is answered by its own profile's models, none fails."""
    results: list[tuple[str, int, dict]] = []

    def client(kind: str, seeds: range) -> None:
        with httpx.Client(base_url=api.base, timeout=60) as http:
            for seed in seeds:
                if kind == "uci":
                    body = {**simulated_request(fleet["uci"], seed=seed), "use_cache": False}
                else:
                    body = _basic_body(fleet["basic"], seed)
                r = http.post("/api/v1/diagnostics/predict", json=body, headers=fleet["headers"])
                results.append((kind, r.status_code, r.json()))

    threads = [
        threading.Thread(target=client, args=(kind, range(100 * i, 100 * i + 6)))
        for i, kind in enumerate(["uci", "basic", "uci", "basic"])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 24 and {status for _, status, _ in results} == {200}, results[:3]
    for kind, _, out in results:
        assert out["profile"] == ("uci-1hz" if kind == "uci" else "basic")
        assert not out["models_failed"] and set(out["model_versions"].values()) == {MODEL_VERSIONS[0]}
    basic = [out for kind, _, out in results if kind == "basic"]
    uci = [out for kind, _, out in results if kind == "uci"]
    assert {out["features_extracted"] for out in basic}.isdisjoint({out["features_extracted"] for out in uci})
    # Simulated severe pump leakage: the basic profile's tiny models still see it in most cycles.
    assert sum(out["prediction"]["components"]["pump"]["level"] != 0 for out in basic) >= len(basic) // 2

    # GET /models lists every replica of each model deployment with the model ids it holds.
    models = api.http.get("/api/v1/models", headers=fleet["headers"]).json()["models"]
    assert len(models) == 4
    for entry in models:
        assert entry["replicas"], entry
        held = {m for r in entry["replicas"] for m in r["models"]}
        assert {f"uci-1hz@{MODEL_VERSIONS[0]}", f"basic@{MODEL_VERSIONS[0]}"} <= held, entry
        assert all(r["pid"] and r["node_id"] for r in entry["replicas"])


def test_a_replica_keeps_its_lru_of_model_ids_and_reloads_an_evicted_one(hdx_env, ray_cluster):
    from ray import serve

    from deployments.model_servers import ModelServer
    from diagnosis.store import ModelStore
    from hydraulics.features import extract
    from hydraulics.simulator import simulate_dataset

    store = ModelStore(str(hdx_env["home"] / "models"))
    app = ModelServer.options(name="LruModel", num_replicas=1, ray_actor_options={"num_cpus": 0.1}).bind(
        family="xgboost", store=store, max_models=1
    )
    handle = serve.run(app, name="hdx-lru", route_prefix=None)
    try:
        data = simulate_dataset(1, seed=9, channels=["TS1", "TS2", "TS3", "TS4", "VS1", "CE", "CP", "SE"])
        X = extract(data.channels, "rig_1hz")[:4]
        first, second = f"uci-1hz@{MODEL_VERSIONS[0]}", f"uci-1hz@{MODEL_VERSIONS[1]}"
        a = handle.options(multiplexed_model_id=first).predict.remote(X).result(timeout_s=60)
        held = handle.info.remote().result(timeout_s=30)["models"]
        assert [m["model_id"] for m in held] == [first]
        b = handle.options(multiplexed_model_id=second).predict.remote(X).result(timeout_s=60)
        held = handle.info.remote().result(timeout_s=30)["models"]
        assert [m["model_id"] for m in held] == [second]  # the first was evicted (max_models=1)
        assert (a.version, b.version) == MODEL_VERSIONS
        again = handle.options(multiplexed_model_id=first).predict.remote(X).result(timeout_s=60)
        assert again.version == MODEL_VERSIONS[0]  # reloaded on demand
        np.testing.assert_allclose(again.probas["valve"], a.probas["valve"])
        assert [m["model_id"] for m in handle.info.remote().result(timeout_s=30)["models"]] == [first]
    finally:
        serve.delete("hdx-lru")


def test_every_replica_reports_what_it_holds(hdx_env, ray_cluster):
    """Two replicas of one model deployment: the directory lists both (with what each
    holds), not only the one a call reaches; a deleted replica leaves it."""
    import time

    import ray
    from ray import serve

    from deployments.model_servers import ModelServer
    from deployments.replica_directory import replica_directory
    from diagnosis.store import ModelStore
    from hydraulics.features import extract
    from hydraulics.simulator import simulate_dataset

    store = ModelStore(str(hdx_env["home"] / "models"))
    app = ModelServer.options(
        name="DirectoryModel", num_replicas=2, user_config={"max_batch_size": 8}, ray_actor_options={"num_cpus": 0.1}
    ).bind(family="xgboost", store=store, max_models=2)
    handle = serve.run(app, name="hdx-directory", route_prefix=None)
    directory = replica_directory()
    try:
        data = simulate_dataset(1, seed=9, channels=["TS1", "TS2", "TS3", "TS4", "VS1", "CE", "CP", "SE"])
        X = extract(data.channels, "rig_1hz")[:4]
        wanted = {f"uci-1hz@{v}" for v in MODEL_VERSIONS}
        for mid in sorted(wanted):
            handle.options(multiplexed_model_id=mid).predict.remote(X).result(timeout_s=60)
        deadline = time.time() + 30
        while time.time() < deadline:
            replicas = ray.get(directory.held.remote("hdx-directory")).get("DirectoryModel", [])
            if len(replicas) == 2 and {m["model_id"] for r in replicas for m in r["models"]} == wanted:
                break
            time.sleep(0.5)
        assert len(replicas) == 2, replicas
        assert len({r["replica"] for r in replicas}) == 2 and all(r["pid"] for r in replicas)
        assert {m["model_id"] for r in replicas for m in r["models"]} == wanted
    finally:
        serve.delete("hdx-directory")
    deadline = time.time() + 30
    while ray.get(directory.held.remote("hdx-directory")) and time.time() < deadline:
        time.sleep(0.5)
    assert ray.get(directory.held.remote("hdx-directory")) == {}
