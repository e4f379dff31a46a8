"""The rig simulator: reproducibility, shapes, ranges and each documented physical effect."""

from __future__ import annotations

import numpy as np
import pytest

from hydraulics.channels import CHANNELS, UCI_1HZ_CHANNELS
from hydraulics.components import COMPONENT_NAMES, TARGETS
from hydraulics.simulator import LOAD_PROFILE, SWITCH_TIMES, simulate_cycle, simulate_dataset

NOMINAL = {"cooler": 100, "valve": 100, "pump": 0, "accumulator": 130, "stable": 0}
N = 24  # cycles per side when comparing levels: enough that per-cycle variation averages out


def _cycles(channels, **changes):
    return simulate_dataset(N, seed=11, channels=channels, conditions=[NOMINAL | changes]).channels


# --------------------------------------------------------------------------- basics


def test_same_seed_same_arrays_different_seed_different():
    cond = [NOMINAL, NOMINAL | {"pump": 2, "stable": 1}]
    a, b = simulate_dataset(3, seed=5, conditions=cond), simulate_dataset(3, seed=5, conditions=cond)
    c = simulate_dataset(3, seed=6, conditions=cond)
    for name in CHANNELS:
        np.testing.assert_array_equal(a.channels[name], b.channels[name])
        assert not np.array_equal(a.channels[name], c.channels[name]), name
    one, two = simulate_cycle(20, 80, 1, 100, rng=7), simulate_cycle(20, 80, 1, 100, rng=7)
    assert all(np.array_equal(one[k], two[k]) for k in CHANNELS)
    assert not np.array_equal(one["PS1"], simulate_cycle(20, 80, 1, 100, rng=8)["PS1"])


def test_channel_subset_gives_the_same_values():
    full = simulate_dataset(2, seed=3, conditions=[NOMINAL])
    part = simulate_dataset(2, seed=3, channels=["SE", "ts1"], conditions=[NOMINAL])
    assert set(part.channels) == {"SE", "TS1"}
    np.testing.assert_array_equal(part.channels["SE"], full.channels["SE"])
    np.testing.assert_array_equal(part.channels["TS1"], full.channels["TS1"])


def test_every_channel_at_its_rate():
    cycle = simulate_cycle(3, 73, 2, 90, stable=1, rng=np.random.default_rng(1))
    assert set(cycle) == set(CHANNELS)
    for name, channel in CHANNELS.items():
        assert cycle[name].shape == (channel.rate_hz * 60,), name
    assert cycle["PS1"].shape == (6000,) and cycle["FS1"].shape == (600,) and cycle["SE"].shape == (60,)


def test_default_dataset_covers_every_condition_with_labels():
    ds = simulate_dataset(2, seed=0, channels=["CE"])
    assert len(ds) == 144 * 2 and list(ds.labels.columns) == list(TARGETS)
    assert len(ds.labels[list(COMPONENT_NAMES)].drop_duplicates()) == 144
    assert 0.1 < ds.labels["stable"].mean() < 0.5
    np.testing.assert_array_equal(ds.cycle_ids, np.arange(288))


def test_values_stay_in_plausible_and_rig_like_ranges():
    ds = simulate_dataset(1, seed=2)
    for name, channel in CHANNELS.items():
        lo, hi = channel.plausible_range
        values = ds.channels[name]
        assert lo <= values.min() and values.max() <= hi, name
    # Magnitudes of the real rig (UCI data), on cycle means.
    rig = {
        "TS1": (30, 62),
        "TS2": (35, 65),
        "TS4": (25, 55),
        "VS1": (0.5, 0.8),
        "CE": (17, 50),
        "CP": (1.0, 2.9),
        "SE": (25, 70),
        "PS1": (130, 190),
        "EPS1": (2300, 3000),
        "FS1": (0, 20),
        "FS2": (8.8, 10.5),
    }
    for name, (lo, hi) in rig.items():
        means = ds.channels[name].mean(axis=1)
        assert lo <= means.min() and means.max() <= hi, (name, means.min(), means.max())


def test_unknown_level_is_refused_with_the_component_named():
    with pytest.raises(ValueError, match="valve: unknown level 95"):
        simulate_cycle(100, 95, 0, 130)
    with pytest.raises(ValueError, match="lacks \\['accumulator'\\]"):
        simulate_dataset(1, conditions=[{"cooler": 100, "valve": 100, "pump": 0}])


# --------------------------------------------------------------------------- physical effects


def test_fouled_cooler_runs_hotter_with_less_cooling():
    names = ["TS1", "TS2", "TS3", "TS4", "CP", "CE"]
    good, bad = _cycles(names), _cycles(names, cooler=3)
    for ts in ("TS1", "TS2", "TS3", "TS4"):
        assert bad[ts].mean() > good[ts].mean() + 5.0, ts
        assert bad[ts][:, 0].mean() > good[ts][:, 0].mean(), ts  # higher start level

    def rise(x):
        return (x[:, -10:].mean(axis=1) - x[:, :10].mean(axis=1)).mean()

    assert rise(bad["TS1"]) > rise(good["TS1"]) > 0  # still warming within the cycle
    assert bad["CP"].mean() < good["CP"].mean()
    assert bad["CE"].mean() < good["CE"].mean() - 10.0


def _time_to_90_percent(ps: np.ndarray) -> np.ndarray:
    """Seconds from the first load step until each cycle first reaches 90 % of the step."""
    t0, rate = SWITCH_TIMES[0], 100
    start, end = int(t0 * rate), int(SWITCH_TIMES[1] * rate)
    before = ps[:, start - 50 : start].mean(axis=1)
    plateau = ps[:, end - 300 : end].mean(axis=1)
    reached = ps[:, start:end] >= (before + 0.9 * (plateau - before))[:, None]
    return reached.argmax(axis=1) / rate


def test_valve_lag_delays_pressure_build_up_and_lowers_se():
    good, bad = _cycles(["PS1", "PS2", "SE"]), _cycles(["PS1", "PS2", "SE"], valve=73)
    for ps in ("PS1", "PS2"):
        assert _time_to_90_percent(bad[ps]).mean() > _time_to_90_percent(good[ps]).mean() + 0.3, ps
    assert bad["SE"].mean() < good["SE"].mean()
    # The loss sits in the second of the switching.
    second = int(SWITCH_TIMES[0])
    assert bad["SE"][:, second].mean() < 0.6 * good["SE"][:, second].mean()


def test_pump_leakage_lowers_flow_and_efficiency_and_raises_power_per_flow():
    names = ["FS1", "SE", "EPS1", "TS1"]
    good, bad = _cycles(names), _cycles(names, pump=2)
    assert bad["FS1"].mean() < good["FS1"].mean() - 0.5
    assert bad["SE"].mean() < good["SE"].mean()

    def per_flow(c):
        return (c["EPS1"].mean(axis=1) / c["FS1"].mean(axis=1)).mean()

    assert per_flow(bad) > per_flow(good)
    assert good["TS1"].mean() < bad["TS1"].mean() < good["TS1"].mean() + 3.0


def _min_around_load_changes(ps: np.ndarray) -> float:
    """Lowest pressure within 2.5 s of each load change, averaged over changes and cycles.

    Both sides of a comparison share the load profile, so a lower minimum is a deeper dip.
    """
    return float(np.mean([ps[:, int(t_k * 100) : int(t_k * 100) + 250].min(axis=1) for t_k in SWITCH_TIMES]))


def test_low_accumulator_precharge_deepens_pressure_dips():
    good, bad = _cycles(["PS1", "PS4", "SE"]), _cycles(["PS1", "PS4", "SE"], accumulator=90)
    assert _min_around_load_changes(bad["PS1"]) < _min_around_load_changes(good["PS1"]) - 3.0
    assert _min_around_load_changes(bad["PS4"]) < _min_around_load_changes(good["PS4"]) - 3.0
    assert bad["SE"].mean() < good["SE"].mean()


def test_warm_up_cycles_have_drifting_temperatures():
    settled, warming = _cycles(["TS1"]), _cycles(["TS1"], stable=1)

    def rise(x):
        return x[:, -5:].mean(axis=1) - x[:, :5].mean(axis=1)

    assert rise(warming["TS1"]).mean() > rise(settled["TS1"]).mean() + 0.3


def test_load_profile_shapes_the_pressure():
    ps1 = _cycles(["PS1"])["PS1"]
    for (start, level), (end, _) in zip(LOAD_PROFILE, list(LOAD_PROFILE[1:]) + [(60.0, None)]):
        # Late in each step the pressure sits near its set-point.
        settled = ps1[:, int(end * 100) - 200 : int(end * 100)].mean()
        assert abs(settled - level) < 5.0, (start, settled, level)


# --------------------------------------------------------------------------- learnability


def _stats(ds):
    cols = []
    for name in UCI_1HZ_CHANNELS:
        x = ds.channels[name]
        cols += [x.mean(1), x.std(1), x.min(1), x.max(1), x[:, :10].mean(1), x[:, -10:].mean(1)]
    return np.column_stack(cols)


def test_one_hertz_channels_separate_every_component():
    from sklearn.ensemble import RandomForestClassifier

    train = simulate_dataset(6, seed=0, channels=UCI_1HZ_CHANNELS)
    test = simulate_dataset(3, seed=1, channels=UCI_1HZ_CHANNELS)
    x_train, x_test = _stats(train), _stats(test)
    scores = {}
    for target in COMPONENT_NAMES:
        model = RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1)
        model.fit(x_train, train.labels[target])
        scores[target] = float((model.predict(x_test) == test.labels[target]).mean())
    assert all(score >= 0.85 for score in scores.values()), scores
    assert min(scores.values()) < 1.0, f"levels should overlap a little, got {scores}"
