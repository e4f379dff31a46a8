"""Novelty scores: in-distribution cycles pass, tampered channels are flagged, the model round-trips without pickle."""

import json

import numpy as np
import pytest

from diagnosis.novelty import JSON_FILE, NPZ_FILE, NoveltyModel
from hydraulics.channels import UCI_1HZ_CHANNELS
from hydraulics.features import extract, get_feature_set
from hydraulics.simulator import simulate_dataset

NAMES = get_feature_set("rig_1hz").feature_names()


def _features(channels, ids=None):
    return extract(channels, "rig_1hz", ids)


@pytest.fixture(scope="module")
def fitted():
    train = simulate_dataset(8, seed=101, channels=UCI_1HZ_CHANNELS)
    return NoveltyModel.fit(_features(train.channels, train.cycle_ids), NAMES)


@pytest.fixture(scope="module")
def held_out():
    return simulate_dataset(1, seed=202, channels=UCI_1HZ_CHANNELS).channels


def test_held_out_cycles_are_rarely_flagged(fitted, held_out):
    result = fitted.score(_features(held_out))
    assert result.score.shape == result.flagged.shape == (len(held_out["TS1"]),)
    assert result.flagged.dtype == bool
    np.testing.assert_array_equal(result.flagged, result.score > 1.0)
    assert result.flagged.mean() <= 0.05


@pytest.mark.parametrize("channel", ["TS1", "SE"])
def test_a_scaled_channel_is_flagged_and_named(fitted, held_out, channel):
    result = fitted.score(_features({**held_out, channel: held_out[channel] * 1.2}))
    assert result.flagged.mean() >= 0.9
    named = [any(f.startswith(f"{channel}__") for f in result.top_features(i, k=3)) for i in range(len(result.score))]
    assert np.mean(named) >= 0.9


@pytest.mark.parametrize("channel", ["TS1", "VS1", "SE"])
def test_a_stuck_sensor_is_flagged(fitted, held_out, channel):
    stuck = np.repeat(held_out[channel][:, :1], held_out[channel].shape[1], axis=1)
    assert fitted.score(_features({**held_out, channel: stuck})).flagged.mean() >= 0.9


@pytest.mark.parametrize(("a", "b"), [("TS1", "TS2"), ("TS3", "TS4")])
def test_swapped_channels_are_flagged(fitted, held_out, a, b):
    swapped = {**held_out, a: held_out[b], b: held_out[a]}
    assert fitted.score(_features(swapped)).flagged.mean() >= 0.9


def test_save_and_load_give_identical_scores_without_pickle(fitted, held_out, tmp_path):
    X = _features(held_out)
    fitted.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([JSON_FILE, NPZ_FILE])
    meta = json.loads((tmp_path / JSON_FILE).read_text())
    assert meta["design"] == "pca_range" and meta["feature_names"] == NAMES
    with np.load(tmp_path / NPZ_FILE, allow_pickle=False) as arrays:  # plain arrays only
        assert all(arrays[k].dtype != object for k in arrays.files)
    loaded = NoveltyModel.load(tmp_path)
    np.testing.assert_array_equal(loaded.score(X).score, fitted.score(X).score)
    assert loaded.score(X[:1]).top_features(0) == fitted.score(X[:1]).top_features(0)


def test_bad_input_is_refused(fitted):
    with pytest.raises(ValueError, match="columns"):
        fitted.score(np.zeros((2, len(NAMES) - 1)))
    with pytest.raises(ValueError, match="rows"):
        NoveltyModel.fit(np.zeros((10, len(NAMES))), NAMES)
    assert fitted.score(np.full((1, len(NAMES)), np.nan)).flagged.all()  # NaN features are never "in distribution"
