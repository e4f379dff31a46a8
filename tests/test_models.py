"""Model families, bundles and the Adaptive model's learning from feedback."""

import json

import numpy as np
import pandas as pd
import pytest

from diagnosis.registry import FAMILY_NAMES
from diagnosis.store import BundleError, ModelStore
from diagnosis.training import fit_family, score
from hydraulics.components import TARGETS, target_classes
from hydraulics.features import extract
from hydraulics.simulator import simulate_dataset

FAST = {
    "catboost": {"iterations": 40, "depth": 4},
    "xgboost": {"n_estimators": 40},
    "random_forest": {"n_estimators": 40},
    "adaptive": {"epochs": 150},
}


@pytest.fixture(scope="module")
def sim_data():
    train = simulate_dataset(3, seed=11)
    test = simulate_dataset(1, seed=12)
    return (extract(train.channels, "rig_1hz"), train.labels, extract(test.channels, "rig_1hz"), test.labels)


@pytest.fixture(scope="module")
def trained(sim_data):
    X, y, _, _ = sim_data
    return {f: fit_family(f, X, y, seed=0, params=FAST[f])[0] for f in FAMILY_NAMES}


def test_every_family_separates_simulated_levels(trained, sim_data):
    _, _, Xt, yt = sim_data
    for family, model in trained.items():
        probas = model.predict_proba(Xt)
        for target in TARGETS:
            assert probas[target].shape == (len(Xt), len(target_classes(target)))
            assert np.allclose(probas[target].sum(axis=1), 1.0)
        metrics = score(probas, yt)
        for component in ("cooler", "valve", "pump", "accumulator"):
            # far above chance (≤ 1/3) even with tiny models and 3 cycles per condition
            assert metrics[component]["accuracy"] > 0.6, (family, component, metrics[component])


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_bundle_round_trip_predicts_identically(tmp_path, trained, sim_data, family):
    _, _, Xt, _ = sim_data
    store = ModelStore(str(tmp_path / "models"))
    manifest = store.save(trained[family], "v-test", "rig_1hz", training={"source": "test"}, metrics={"x": 1})
    assert manifest["required_channels"] == ["TS1", "TS2", "TS3", "TS4", "VS1", "CE", "CP", "SE"]
    assert manifest["classes"]["accumulator"] == [130, 115, 100, 90]
    assert "scikit-learn" in manifest["library_versions"]
    bundle = store.load(family)  # "latest" resolves to the only version
    assert bundle.version == "v-test"
    before, after = trained[family].predict_proba(Xt), bundle.model.predict_proba(Xt)
    for target in TARGETS:
        np.testing.assert_array_equal(before[target], after[target])


def test_feature_set_mismatch_is_refused(tmp_path, trained):
    store = ModelStore(str(tmp_path / "models"))
    store.save(trained["random_forest"], "v1", "rig_1hz", training={}, metrics={})
    path = tmp_path / "models" / "random_forest" / "v1" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["feature_set"]["feature_names"] = manifest["feature_set"]["feature_names"][:-1]
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"trained on feature set rig_1hz v\d+ \(\d+ features\).* retrain"):
        store.load("random_forest", "v1")
    with pytest.raises(BundleError, match="no xgboost model in store"):
        store.load("xgboost")


def test_adaptive_learns_from_feedback_and_keeps_it_after_save(tmp_path, sim_data):
    X, y, Xt, yt = sim_data
    model, _ = fit_family("adaptive", X, y, seed=0, params=FAST["adaptive"])
    pattern = Xt[:1]
    before = model.predict_proba(pattern)["accumulator"][0]
    cooler_before = model.predict_proba(Xt)["cooler"].argmax(axis=1)
    # The operator says this pattern is at a level the model does not currently pick.
    wrong_level_idx = int(np.argsort(before)[0])
    confirmed = target_classes("accumulator")[wrong_level_idx]
    made = model.update(pattern, pd.DataFrame({"accumulator": [confirmed]}))
    assert made == 1 and model.n_updates == 1
    after = model.predict_proba(pattern)["accumulator"][0]
    assert after[wrong_level_idx] > before[wrong_level_idx] + 0.3
    assert after.argmax() == wrong_level_idx
    # The cooler was not part of the feedback: its answers across the test set barely move.
    assert (model.predict_proba(Xt)["cooler"].argmax(axis=1) == cooler_before).mean() > 0.95

    store = ModelStore(str(tmp_path / "models"))
    store.save(model, "v1", "rig_1hz", training={}, metrics={})
    bundle = store.load("adaptive", "v1")
    assert bundle.state_revision is None
    revision = store.save_state(type(bundle)(bundle.family, bundle.version, model, bundle.manifest))
    reloaded = store.load("adaptive", "v1")
    assert reloaded.state_revision == revision and reloaded.model.n_updates == 1
    np.testing.assert_allclose(reloaded.model.predict_proba(pattern)["accumulator"][0], after)
    # And the rest of the test set is still diagnosed sensibly (no catastrophic forgetting).
    assert score(reloaded.model.predict_proba(Xt), yt)["cooler"]["accuracy"] > 0.6


@pytest.mark.parametrize("family", ["random_forest", "xgboost"])
def test_fast_inference_paths_equal_sklearn(trained, sim_data, family):
    """The forest's per-tree loop and XGBoost's direct booster call give the
    scikit-learn wrappers' probabilities."""
    _, _, Xt, _ = sim_data
    model = trained[family]
    for target, est in model.estimators.items():
        cols = model.columns[target]
        np.testing.assert_allclose(
            model._predict_proba(est, Xt[:, cols]), est.predict_proba(Xt[:, cols]), rtol=1e-6, atol=1e-7
        )


def test_random_forest_packed_path_equals_sklearn(trained, sim_data):
    """Small requests take the all-trees-at-once path (diagnosis.forest); it must give
    scikit-learn's probabilities for every target, one row or several."""
    from diagnosis.families import PACKED_MAX_ROWS

    _, _, Xt, _ = sim_data
    model = trained["random_forest"]
    for rows in (Xt[:1], Xt[1:PACKED_MAX_ROWS]):
        got = model.predict_proba(rows)
        assert "_packed" in model.__dict__
        for target, est in model.estimators.items():
            cols = model.columns[target]
            np.testing.assert_allclose(
                got[target], model._all_levels(target, est, est.predict_proba(rows[:, cols])), rtol=1e-6, atol=1e-9
            )


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_pin_threads_sets_each_librarys_own_thread_count(tmp_path, trained, sim_data, family):
    """A bundle loaded from disk predicts on every core unless pinned (the batch job's
    actors pin theirs through ``FamilyModel.pin_threads``). Pinned to 3, which is neither
    the 1 the models were trained with nor a library's default, so the test sees the pin."""
    from threadpoolctl import threadpool_info, threadpool_limits

    _, _, Xt, _ = sim_data
    store = ModelStore(str(tmp_path / "models"))
    store.save(trained[family], "v-pin", "rig_1hz", training={}, metrics={})
    model = store.load(family).model
    before = model.predict_proba(Xt)
    with threadpool_limits(limits=None):  # undoes the process-wide BLAS limit on the way out
        model.pin_threads(3)
        for est in model.estimators.values():
            if family == "catboost":
                assert est.predict_proba.keywords == {"thread_count": 3}
            elif family == "xgboost":  # the booster itself: _predict_proba calls it directly
                assert json.loads(est.get_booster().save_config())["learner"]["generic_param"]["nthread"] == "3"
            elif family == "random_forest":
                assert est.n_jobs == 3
        if family == "adaptive":
            blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
            assert blas and all(n == 3 for n in blas), blas
        after = model.predict_proba(Xt)
    for target in TARGETS:
        np.testing.assert_array_equal(before[target], after[target])
