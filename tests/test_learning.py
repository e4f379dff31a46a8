"""Online learning loses nothing: concurrent feedback on several Adaptive replicas, revision
pruning and rollback, and a prediction cache that never answers from before an update."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from deployments.model_servers import ModelServer
from diagnosis.family_base import encode_labels
from diagnosis.learning import learn_and_save, rollback_state
from diagnosis.store import BASE_STATE, ModelStore, StateConflict
from diagnosis.training import fit_family
from hydraulics.features import extract
from hydraulics.simulator import simulate_cycle, simulate_dataset
from storage.cache import LRUCache, cache_key

VALVE_LEVELS = [100, 90, 80, 73]


@pytest.fixture(scope="module")
def data():
    train = simulate_dataset(1, seed=31)
    confirmed = simulate_dataset(1, seed=32)
    return extract(train.channels, "rig_1hz"), train.labels, extract(confirmed.channels, "rig_1hz")


@pytest.fixture(scope="module")
def adaptive(data):
    X, y, _ = data
    return fit_family("adaptive", X, y, params={"epochs": 40})[0]


@pytest.fixture
def store(tmp_path, adaptive) -> ModelStore:
    store = ModelStore(str(tmp_path / "models")).for_profile("uci-1hz")
    store.save(adaptive, "v1", "rig_1hz", training={}, metrics={})
    return store


MODEL_ID = "uci-1hz@v1"


async def _serving_revision(server: ModelServer) -> str | None:
    [held] = (await server.info())["models"]
    return held["state_revision"]


def _valve(i: int) -> pd.DataFrame:
    return pd.DataFrame({"valve": [VALVE_LEVELS[i % 4]]})


def _assert_remembers(model, rows: np.ndarray, valves: list[int]) -> None:
    """Each confirmed cycle is in the replay memory with its confirmed valve level."""
    expected = encode_labels("valve", np.array(valves))
    for row, label in zip(model.scaler.transform(rows), expected):
        [at] = np.flatnonzero(np.isclose(model.memory_X, row).all(axis=1))
        assert model.memory_y["valve"][at] == label


def test_concurrent_feedback_on_two_replicas_loses_no_label(store, data):
    """Two model servers share one store and receive feedback at the same time; each used to
    learn on its own state, so the newest revision held only its own half of the labels."""
    _, _, confirmed = data
    n = 8

    async def run():
        servers = [
            ModelServer.func_or_class(family="adaptive", store=store.top(), sync_interval_s=0.05) for _ in range(2)
        ]
        try:
            replies = await asyncio.gather(
                *(servers[i % 2].learn(confirmed[i : i + 1], _valve(i).to_dict("list"), MODEL_ID) for i in range(n))
            )
            latest = store.latest_state("adaptive", "v1")
            deadline = time.monotonic() + 30  # both serving replicas move to the newest revision
            while time.monotonic() < deadline and {await _serving_revision(s) for s in servers} != {latest}:
                await asyncio.sleep(0.05)
            return replies, [await _serving_revision(s) for s in servers]
        finally:
            for s in servers:
                s._sync_task.cancel()

    replies, serving = asyncio.run(run())
    revisions = store.state_revisions("adaptive", "v1")
    assert revisions == [f"r{k:08d}" for k in range(1, n + 1)]
    assert sorted(r["state_revision"] for r in replies) == revisions  # each call committed its own revision
    assert [store.state_record("adaptive", "v1", r)["parent"] for r in revisions] == [None, *revisions[:-1]]
    assert serving == [revisions[-1]] * 2
    final = store.load("adaptive", "v1")
    assert final.model.n_updates == n
    _assert_remembers(final.model, confirmed[:n], [VALVE_LEVELS[i % 4] for i in range(n)])


class RacedStore(ModelStore):
    """A real store where another replica commits its update just before this one's first commit."""

    def __init__(self, uri: str, rival_rows: np.ndarray):
        super().__init__(uri)
        self._rival_rows = rival_rows

    def save_state(self, bundle, rolled_back_from=None):
        if self._rival_rows is not None:
            rows, self._rival_rows = self._rival_rows, None
            rival = ModelStore(self.uri).load(bundle.family, bundle.version)
            rival.model.update(rows, pd.DataFrame({"valve": [73]}))
            ModelStore(self.uri).save_state(rival)
        return super().save_state(bundle, rolled_back_from)


def test_a_lost_commit_race_learns_again_on_the_winners_state(store, data):
    _, _, confirmed = data
    raced = RacedStore(store.uri, rival_rows=confirmed[1:2])
    bundle = raced.load("adaptive", "v1")
    served, made = learn_and_save(raced, bundle, confirmed[:1], pd.DataFrame({"valve": [80]}), keep_revisions=10)
    assert made == 1 and bundle.state_revision is None  # the bundle being served was never modified
    assert served.state_revision == store.latest_state("adaptive", "v1") == "r00000002"
    assert store.state_record("adaptive", "v1", "r00000002")["parent"] == "r00000001"  # the rival's
    final = store.load("adaptive", "v1").model
    assert final.n_updates == 2
    _assert_remembers(final, confirmed[:2], [80, 73])
    # A writer still on an old revision cannot overwrite the newer ones.
    with pytest.raises(StateConflict, match="r00000001 was saved by another writer first"):
        store.save_state(bundle)
    assert store.state_revisions("adaptive", "v1") == ["r00000001", "r00000002"]


def test_old_revisions_are_pruned_and_a_rollback_is_a_new_revision(store, data):
    _, _, confirmed = data
    bundle = store.load("adaptive", "v1")
    for i in range(5):
        bundle, _ = learn_and_save(store, bundle, confirmed[i : i + 1], _valve(i), keep_revisions=3)
    assert store.state_revisions("adaptive", "v1") == ["r00000003", "r00000004", "r00000005"]
    state_dir = store.fs.ls(store._path("adaptive", "v1", "state"), detail=False)
    assert len(state_dir) == 6  # three records and their three folders, nothing older

    r3 = store.load("adaptive", "v1", revision="r00000003").model
    new = rollback_state(store, "adaptive", "v1", "r00000003", keep_revisions=3)
    assert new == "r00000006" and store.state_record("adaptive", "v1", new)["rolled_back_from"] == "r00000003"
    now = store.load("adaptive", "v1")
    assert now.state_revision == new and now.model.n_updates == r3.n_updates == 3
    np.testing.assert_array_equal(now.model.memory_X, r3.memory_X)

    rollback_state(store, "adaptive", "v1", BASE_STATE, keep_revisions=3)
    assert store.load("adaptive", "v1").model.n_updates == 0
    assert store.state_revisions("adaptive", "v1") == ["r00000005", "r00000006", "r00000007"]


def test_cli_lists_revisions_and_rolls_back(store, data, monkeypatch):
    from cli.main import app

    _, _, confirmed = data
    monkeypatch.setenv("HDX_MODEL_STORE_URI", store.top().uri)
    monkeypatch.setenv("HDX_ADAPTIVE_KEEP_REVISIONS", "4")
    runner = CliRunner()
    empty = runner.invoke(app, ["models", "revisions"])
    assert empty.exit_code == 0 and "adaptive v1: no learned state" in empty.output
    bundle = store.load("adaptive", "v1")
    for i in range(2):
        bundle, _ = learn_and_save(store, bundle, confirmed[i : i + 1], _valve(i), keep_revisions=10)

    back = runner.invoke(app, ["models", "rollback-state", "r00000001"])
    assert back.exit_code == 0, back.output
    assert "adaptive v1: state of r00000001 saved as r00000003" in back.output
    listed = runner.invoke(app, ["models", "revisions", "--family", "adaptive", "--version", "v1"]).output.splitlines()
    assert [line.split()[0] for line in listed] == ["r00000001", "r00000002", "r00000003"]
    assert "parent r00000002" in listed[2] and "updates 1" in listed[2] and "rolled back to r00000001" in listed[2]
    missing = runner.invoke(app, ["models", "rollback-state", "r00000042"])
    assert missing.exit_code == 1 and "no state revision 'r00000042'" in missing.output


def test_cache_key_changes_with_the_learned_state():
    cycle = {"TS1": np.arange(60.0)}
    versions = {"adaptive": "v1", "xgboost": "v1"}
    base = cache_key(cycle, "rig_1hz", versions)
    assert cache_key(cycle, "rig_1hz", versions, {}) == base
    learned = cache_key(cycle, "rig_1hz", versions, {"adaptive": "r00000001"})
    assert learned != base and learned != cache_key(cycle, "rig_1hz", versions, {"adaptive": "r00000002"})


def test_in_process_cache_honours_its_ttl_and_stays_bounded():
    now = [0.0]
    cache = LRUCache(max_entries=2, timer=lambda: now[0])

    async def run():
        await cache.set("a", {"n": 1}, ttl_s=10)
        await cache.set("b", {"n": 2}, ttl_s=60)
        assert await cache.get("a") == {"n": 1}  # a is now the most recently used
        await cache.set("c", {"n": 3}, ttl_s=60)
        assert [await cache.get(k) for k in "abc"] == [{"n": 1}, None, {"n": 3}]
        now[0] = 10.0
        assert await cache.get("a") is None and await cache.get("c") == {"n": 3}
        assert len(cache) == 1

    asyncio.run(run())


def test_the_ingress_cache_never_answers_from_before_an_update(store, data):
    """The ingress client in front of a stand-in ensemble made of the real pieces (a model
    server for ``learn``/``info``, the replicas' scoring and the ensemble's voting)."""
    from api.services.diagnosis_client import DiagnosisClient
    from configs.settings import Settings
    from diagnosis.scoring import answer_blocks
    from diagnosis.voting import diagnose_answers
    from hydraulics.features import extract_cycles

    class Remote:
        def __init__(self, fn):
            self.remote = fn

    class InProcessEnsemble:
        def __init__(self, server: ModelServer):
            self.server = server
            self.diagnose = Remote(self._diagnose)
            self.models_info = Remote(self._info)
            self.learn = Remote(self._learn)

        async def _diagnose(self, cycles, profile=None, components=None):
            X, errors = extract_cycles(cycles, "rig_1hz")
            assert not errors
            bundle = (await self.server.get_bundle(MODEL_ID)).bundle
            return diagnose_answers({"adaptive": answer_blocks(bundle, [X])[0]}, {"adaptive": 1.0}, 0.5, X.shape[1])

        async def _info(self):
            return {"adaptive": await self.server.info()}

        async def _learn(self, cycle, labels, profile=None):
            X, _ = extract_cycles([cycle], "rig_1hz")
            return await self.server.learn(X, labels, MODEL_ID)

    cycle = {c: v.tolist() for c, v in simulate_cycle(100, 100, 0, 130, rng=5).items()}
    settings = Settings(home=store.root, model_store_uri=store.uri, redis_url=None, model_version_refresh_s=3600)

    async def run():
        server = ModelServer.func_or_class(family="adaptive", store=store.top(), sync_interval_s=3600)
        client = DiagnosisClient(InProcessEnsemble(server), settings)
        try:
            first = await client.diagnose_one(cycle)
            assert not first.cache_hit and first.state_revisions == {}
            assert (await client.diagnose_one(cycle)).cache_hit
            learned = await client.learn(cycle, {"valve": [73]})
            after = await client.diagnose_one(cycle)
            again = await client.diagnose_one(cycle)
        finally:
            server._sync_task.cancel()
            client._refresh_task.cancel()
        return learned, after, again

    learned, after, again = asyncio.run(run())
    assert learned["state_revision"] == "r00000001"
    assert not after.cache_hit and after.state_revisions == {"adaptive": "r00000001"}
    assert after.ml_predictions[0].state_revision == "r00000001"
    assert again.cache_hit and again.state_revisions == {"adaptive": "r00000001"}
