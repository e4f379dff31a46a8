"""Equipment profiles end to end, without Ray: profile selection and its explanation, the
alias form diagnosed with the basic profile, validation against a system's profile,
topology-limited diagnoses, alignment and the novelty flag.

The app is ``api.application.create_app`` in a ``TestClient`` on the ``database_url``
fixture (SQLite and PostgreSQL), with the ensemble's real library steps in process
(``tests.fixtures.local_ensemble.InProcessEnsemble``) on small real bundles of the
``uci-1hz`` and ``basic`` profiles (``tests.fixtures.serve_app.train_test_bundles``).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from fastapi.testclient import TestClient

from diagnosis.profiles import BUILTIN_PROFILES, ProfileReference, builtin_profile, choose_profile, prepare_cycles
from diagnosis.store import ModelStore
from hydraulics.alignment import shift_block
from hydraulics.channels import ALIASES, UCI_1HZ_CHANNELS
from hydraulics.simulator import simulate_cycle, simulate_dataset
from tests.fixtures.db import TEST_PASSWORD, add_user
from tests.fixtures.serve_app import MODEL_VERSIONS, train_test_bundles
from tests.test_platform_support import platform_settings

ALIAS_OF = {channel: alias for alias, channel in ALIASES.items()}
NO_ACCUMULATOR = {
    "nodes": [{"id": "p", "kind": "pump"}, {"id": "v", "kind": "valve"}, {"id": "c", "kind": "cooler"}],
    "edges": [{"from": "p", "to": "v"}, {"from": "v", "to": "c"}],
}


@pytest.fixture(scope="module")
def model_store(tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("profile_models"))
    train_test_bundles(uri)
    return uri


@pytest.fixture
def app(db, tmp_path, database_url, model_store):
    from api.application import create_app
    from tests.fixtures.local_ensemble import InProcessEnsemble

    settings = platform_settings(tmp_path, database_url, model_store_uri=model_store)
    with TestClient(create_app(settings)) as client:
        client.app.state.ensemble = InProcessEnsemble(settings)
        client.portal.call(_add_engineer, client.app.state.db)
        token = client.post("/api/v1/auth/token", json={"username": "eng", "password": TEST_PASSWORD}).json()
        client.headers["Authorization"] = f"Bearer {token['access_token']}"
        yield client


async def _add_engineer(db) -> None:
    async with db.sessionmaker() as session:
        await add_user(session, "eng", role="engineer", tier="enterprise")


def _cycle(channels, aliases: bool = False, seed: int = 1, **conditions) -> dict:
    c = simulate_cycle(
        conditions.get("cooler", 100), conditions.get("valve", 100), conditions.get("pump", 0), 130, rng=seed
    )
    return {(ALIAS_OF.get(ch, ch) if aliases else ch): [round(float(x), 4) for x in c[ch]] for ch in channels}


def _register(app, system_id: str, channels: list[str], **extra) -> dict:
    r = app.post("/api/v1/systems", json={"id": system_id, "name": system_id, "channels": channels, **extra})
    assert r.status_code == 201, r.text
    return r.json()


# --- choosing a profile ------------------------------------------------------------------------


def test_the_best_fitting_trained_profile_is_chosen_and_explained():
    trained = list(BUILTIN_PROFILES.values())
    everything = list(BUILTIN_PROFILES["full-rig"].channels)
    assert choose_profile(everything, trained).profile == "full-rig"  # reads the most channels
    uci = choose_profile([*UCI_1HZ_CHANNELS, "PS1"], trained)
    assert uci.profile == "uci-1hz" and "8 of the system's 9 channels" in uci.reason
    basic = choose_profile(["PS1", "TS1", "FS1", "VS1", "EPS1"], trained)
    assert basic.profile == "basic" and "chosen automatically" in basic.reason
    none = choose_profile(["TS1", "TS2", "VS1"], trained)
    assert none.profile is None and "basic needs ['FS1', 'PS1']" in none.reason
    assert choose_profile([], trained).profile == "uci-1hz"  # no channels declared: the default
    # Only trained profiles count: without full-rig trained, all 17 channels get uci-1hz.
    assert choose_profile(everything, [BUILTIN_PROFILES["uci-1hz"], BUILTIN_PROFILES["basic"]]).profile == "uci-1hz"


def test_systems_get_their_profile_and_channel_changes_re_evaluate_it(app):
    assert _register(app, "press-1", ["pressure", "temperature", "flow", "vibration"])["profile"] == "basic"
    gap = _register(app, "odd-1", ["TS1", "TS2", "VS1"])
    assert gap["profile"] is None and "no trained profile fits" in gap["profile_reason"]
    moved = app.patch("/api/v1/systems/odd-1", json={"channels": list(UCI_1HZ_CHANNELS)}).json()
    assert moved["profile"] == "uci-1hz" and "chosen automatically" in moved["profile_reason"]
    shown = app.get("/api/v1/systems/odd-1").json()
    assert (shown["profile"], shown["profile_reason"]) == (moved["profile"], moved["profile_reason"])
    explicit = app.patch("/api/v1/systems/press-1", json={"profile": "uci-1hz"})
    assert explicit.status_code == 422 and "does not report" in explicit.text
    unknown = app.post("/api/v1/systems", json={"id": "x-1", "name": "x", "profile": "nope"})
    assert unknown.status_code == 422 and "not trained" in unknown.text


# --- diagnosing with a profile ------------------------------------------------------------------


def test_a_basic_system_is_diagnosed_from_the_alias_form(app):
    _register(app, "press-2", ["pressure", "temperature", "flow", "vibration"])
    cycle = _cycle(BUILTIN_PROFILES["basic"].channels + ("EPS1",), aliases=True, pump=2)
    r = app.post("/api/v1/diagnostics/predict", json={"system_id": "press-2", "sensor_data": cycle})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["profile"] == "basic" and out["channels_ignored"] == ["EPS1"]  # motor_power: not read by basic
    assert {m["version"] for m in out["ml_predictions"]} <= set(MODEL_VERSIONS)
    assert out["alignment"]["shift_s"] == 0 and out["prediction"]["out_of_distribution"]["flagged"] is False


def test_missing_channels_name_the_gap_and_the_profiles_that_would_fit(app):
    _register(app, "press-3", ["pressure", "temperature", "flow", "vibration"])
    r = app.post("/api/v1/diagnostics/predict", json={"system_id": "press-3", "sensor_data": _cycle(UCI_1HZ_CHANNELS)})
    assert r.status_code == 422
    assert "missing ['PS1', 'FS1']: required by profile basic" in r.text and "uci-1hz" in r.text
    _register(app, "odd-2", ["TS1", "VS1"])
    r = app.post("/api/v1/diagnostics/predict", json={"system_id": "odd-2", "sensor_data": _cycle(["TS1", "VS1"])})
    assert r.status_code == 422 and "no trained profile fits" in r.text


def test_a_topology_without_an_accumulator_gets_no_accumulator_verdict(app):
    _register(app, "rig-na", list(UCI_1HZ_CHANNELS), topology=NO_ACCUMULATOR)
    body = {"system_id": "rig-na", "sensor_data": _cycle(UCI_1HZ_CHANNELS, valve=73)}
    out = app.post("/api/v1/diagnostics/predict", json=body).json()
    assert out["components_diagnosed"] == ["cooler", "valve", "pump"]
    assert set(out["prediction"]["components"]) == {"cooler", "valve", "pump"}
    assert "accumulator" not in out["prediction"]["affected_components"]
    _register(app, "rig-all", list(UCI_1HZ_CHANNELS))
    full = app.post("/api/v1/diagnostics/predict", json={**body, "system_id": "rig-all"}).json()
    assert set(full["prediction"]["components"]) == {"cooler", "valve", "pump", "accumulator"}
    # The cache keeps the two apart: the same cycle, other components.
    assert full["cache_hit"] is False


def test_readings_within_the_noise_margin_are_clipped_and_reported(app):
    _register(app, "rig-noise", list(UCI_1HZ_CHANNELS))
    cycle = _cycle(UCI_1HZ_CHANNELS)
    cycle["SE"][3] = -0.16  # sensor noise at zero load
    out = app.post("/api/v1/diagnostics/predict", json={"system_id": "rig-noise", "sensor_data": cycle})
    assert out.status_code == 200, out.text
    assert any("channel SE: 1 below 0 (lowest -0.16) % clipped" in w for w in out.json()["warnings"])
    cycle["SE"][3] = -30.0  # far outside: a broken sensor
    far = app.post("/api/v1/diagnostics/predict", json={"system_id": "rig-noise", "sensor_data": cycle})
    assert far.status_code == 422 and "outside the plausible range" in far.text


# --- alignment and novelty, in the library ----------------------------------------------------


@pytest.fixture(scope="module")
def uci_reference(model_store) -> ProfileReference:
    return ModelStore(model_store).for_profile("uci-1hz").load_reference(MODEL_VERSIONS[0])


@pytest.mark.parametrize("shift", [-3, -1, 2, 4])
def test_alignment_recovers_a_known_shift(uci_reference, shift):
    data = simulate_dataset(1, seed=77, channels=list(UCI_1HZ_CHANNELS)).subset(range(0, 144, 12))
    moved = shift_block(data.channels, shift)
    prepared = uci_reference.prepare(moved)
    assert (prepared.shift_s == shift).mean() >= 0.9, prepared.shift_s
    assert (uci_reference.prepare(data.channels).shift_s == 0).all()


def test_the_stored_reference_keeps_every_channels_padding_shape(uci_reference):
    assert sorted(uci_reference.shapes) == sorted(UCI_1HZ_CHANNELS)  # saved and read back from the store
    assert all(shape.shape == (60,) for shape in uci_reference.shapes.values())


def test_the_novelty_flag_fires_on_a_scaled_channel_not_on_a_training_like_cycle(uci_reference):
    data = simulate_dataset(1, seed=78, channels=list(UCI_1HZ_CHANNELS)).subset(range(0, 144, 6))
    cycles = [{c: data.channels[c][i] for c in UCI_1HZ_CHANNELS} for i in range(len(data))]
    like = prepare_cycles(uci_reference, cycles)
    assert like.rows.flagged.mean() <= 0.1
    scaled = prepare_cycles(uci_reference, [{**c, "TS1": c["TS1"] * 1.2} for c in cycles])
    assert scaled.rows.flagged.mean() >= 0.9
    assert any(f.startswith("TS1__") for f in scaled.rows.top_features[0])


def test_a_flagged_diagnosis_says_the_models_cannot_vouch_for_it(model_store):
    from configs.settings import Settings
    from tests.fixtures.local_ensemble import InProcessEnsemble

    ensemble = InProcessEnsemble(Settings(model_store_uri=model_store, redis_url=None))
    cycle = _cycle(UCI_1HZ_CHANNELS)
    cycle["TS1"] = [v * 1.2 for v in cycle["TS1"]]
    [out] = asyncio.run(ensemble.diagnose.remote([cycle]))
    assert out.prediction.out_of_distribution.flagged
    assert out.prediction.severity == "unknown" and out.prediction.confidence == 0.0
    assert out.prediction.anomaly_type == "out_of_distribution" and "cannot vouch" in out.warnings[-1]


def test_a_profile_with_fewer_components_trains_and_diagnoses_only_those(tmp_path):
    """``hdx train --components`` narrows a profile; its models predict those components only."""
    from diagnosis.training import fit_family
    from diagnosis.voting import combine
    from hydraulics.features import extract

    profile = builtin_profile("basic").with_options(name="basic-pv", components=["pump", "valve"])
    data = simulate_dataset(1, seed=3, channels=list(profile.channels))
    X = extract(data.channels, profile.feature_set)
    model, _ = fit_family(
        "xgboost", X, data.labels, params={"n_estimators": 10}, feature_set=profile.feature_set, targets=profile.targets
    )
    probas = model.predict_proba(X[:3])
    assert set(probas) == {"valve", "pump", "stable"}
    [verdict, *_] = combine({"xgboost": probas}, {"xgboost": 1.0})
    assert set(verdict.components) == {"valve", "pump"}
    assert np.isfinite(verdict.anomaly_score)
