"""The feature pipeline: hand-computed values and every kind of bad input."""

import numpy as np
import pytest

from hydraulics.channels import UCI_1HZ_CHANNELS
from hydraulics.features import FEATURE_SETS, LOAD_STEPS_S, extract, extract_cycles, get_feature_set
from hydraulics.validation import SensorDataError, cycle_arrays


def _flat_cycle(value_by_channel=None, seconds=60):
    values = {"TS1": 45.0, "TS2": 50.0, "TS3": 47.0, "TS4": 40.0, "VS1": 0.6, "CE": 30.0, "CP": 1.8, "SE": 60.0}
    values.update(value_by_channel or {})
    return {c: np.full(seconds, v) for c, v in values.items()}


def _features(cycle, fs="rig_1hz"):
    names = get_feature_set(fs).feature_names()
    row = extract({c: np.asarray(v, float)[None, :] for c, v in cycle.items()}, fs)[0]
    return dict(zip(names, row))


def test_curve_statistics_match_hand_computation():
    cycle = _flat_cycle()
    cycle["TS1"] = 40.0 + 0.1 * np.arange(60)  # a steady warm-up ramp: 40.0 … 45.9 °C
    f = _features(cycle)
    assert f["TS1__mean"] == pytest.approx(42.95)
    assert f["TS1__min"] == pytest.approx(40.0)
    assert f["TS1__max"] == pytest.approx(45.9)
    assert f["TS1__first10"] == pytest.approx(40.45)  # mean of 40.0 … 40.9
    assert f["TS1__last10"] == pytest.approx(45.45)
    assert f["TS1__drift"] == pytest.approx(5.0)
    assert f["TS1__slope"] == pytest.approx(0.1)
    assert f["TS1__std"] == pytest.approx(np.std(cycle["TS1"]))


def test_step_response_profile_and_cross_channel_features():
    cycle = _flat_cycle()
    se = np.full(60, 68.0)
    se[LOAD_STEPS_S[0]] = 32.0  # a badly lagging valve: efficiency collapses at the first step
    se[LOAD_STEPS_S[2]] = 60.0
    cycle["SE"] = se
    ts2 = np.full(60, 50.0)
    ts2[LOAD_STEPS_S[1]] = 47.0
    cycle["TS2"] = ts2
    f = _features(cycle)
    # SE is described by its full profile, sampled every 2 s from the first step.
    assert f["SE__s9"] == pytest.approx(32.0)
    assert f["SE__s9_rel"] == pytest.approx(-36.0)
    assert f["SE__s11_delta"] == pytest.approx(36.0)
    assert f["SE__s29_rel"] == pytest.approx(-8.0)
    assert f["SE__s31_delta"] == pytest.approx(8.0)
    assert f["SE__switch_ratio"] == pytest.approx(32.0 / 68.0)
    assert f["SE__switch_vs_settled"] == pytest.approx(32.0 - 68.0)
    # Other channels: the response at each step against their plateau and settled level.
    assert f["TS2__plateau"] == pytest.approx(50.0)
    assert f["TS2__step1_dev"] == pytest.approx(-3.0)
    assert f["TS2__step1_dip"] == pytest.approx(-3.0)
    assert f["TS2__step0_dev"] == pytest.approx(0.0)
    assert f["x__cooler_delta_mean"] == pytest.approx(7.0)  # TS3 47 − TS4 40
    assert f["x__cp_per_ce"] == pytest.approx(1.8 / 30.0)
    assert f["x__se_plateau_per_ts1"] == pytest.approx(68.0 / 45.0)


def test_rise_time_of_high_rate_pressure():
    rate = 100
    t = np.arange(60 * rate) / rate
    fast = np.where(t >= LOAD_STEPS_S[0], 160.0, 140.0)
    slow = fast.copy()
    window = (t >= LOAD_STEPS_S[0]) & (t < LOAD_STEPS_S[0] + 1.0)  # a one-second linear ramp
    slow[window] = 140.0 + 20.0 * (t[window] - LOAD_STEPS_S[0])
    names = get_feature_set("compact").feature_names()
    base = {"EPS1": np.full(6000, 2500.0), "FS1": np.full(600, 8.0), "TS1": np.full(60, 45.0), "VS1": np.full(60, 0.6)}
    rows = extract({**{k: np.stack([v, v]) for k, v in base.items()}, "PS1": np.stack([fast, slow])}, "compact")
    rise = rows[:, names.index("PS1__rise_step0")]
    assert rise[0] == pytest.approx(0.0)
    assert rise[1] == pytest.approx(0.9)  # 90 % of a 1 s linear ramp


def test_batch_equals_single_and_aliases_map_to_channels():
    rng = np.random.default_rng(1)
    cycles = [{c: v + rng.normal(0, 0.01, 60) for c, v in _flat_cycle().items()} for _ in range(3)]
    X, errors = extract_cycles(cycles, "rig_1hz")
    assert not errors
    for i, cycle in enumerate(cycles):
        assert np.allclose(X[i], list(_features(cycle).values()))
    aliased = dict(cycles[0])
    aliased["temperature"] = aliased.pop("TS1")
    aliased["vibration"] = aliased.pop("VS1")
    X2, _ = extract_cycles([aliased], "rig_1hz")
    assert np.allclose(X2[0], X[0])


def test_variable_length_batches_and_longer_recordings():
    short_ok = _flat_cycle()
    longer = _flat_cycle(seconds=75)
    X, errors = extract_cycles([short_ok, longer], "rig_1hz")
    assert not errors and X.shape == (2, len(get_feature_set("rig_1hz").feature_names()))


@pytest.mark.parametrize(
    "mutate, channel, fragment",
    [
        (
            lambda c: c.__setitem__("TS2", np.r_[c["TS2"][:5], np.nan, c["TS2"][6:]]),
            "TS2",
            "NaN or infinity (first at sample 5)",
        ),
        (lambda c: c.__setitem__("CP", np.r_[c["CP"][:2], np.inf, c["CP"][3:]]), "CP", "NaN or infinity"),
        (lambda c: c.__setitem__("VS1", np.array([])), "VS1", "empty"),
        (
            lambda c: c.__setitem__("TS1", np.r_[c["TS1"][:10], 500.0, c["TS1"][11:]]),
            "TS1",
            "value 500 at sample 10 is outside the plausible range",
        ),
        (lambda c: c.__setitem__("SE", c["SE"][:59]), "SE", "cover 59 s, but TS1 covers 60 s"),
        (lambda c: c.pop("CE"), "CE", "missing: required by feature set rig_1hz"),
        (lambda c: c.__setitem__("bogus", np.zeros(60)), "bogus", "unknown channel"),
        (lambda c: c.__setitem__("temperature", c["TS1"]), "TS1", "given twice"),
        (lambda c: c.__setitem__("TS3", [[1.0, 2.0]]), "TS3", "flat list"),
        (lambda c: c.__setitem__("TS3", ["hot"] * 60), "TS3", "must be numbers"),
    ],
)
def test_bad_input_names_channel_and_problem(mutate, channel, fragment):
    cycle = _flat_cycle()
    mutate(cycle)
    _, errors = extract_cycles([cycle], "rig_1hz")
    assert list(errors) == [0]
    assert errors[0].channel == channel
    assert fragment in str(errors[0])


def test_too_short_and_wrong_rate():
    _, errors = extract_cycles([_flat_cycle(seconds=30)], "rig_1hz")
    assert "too short: cycle covers 30 s, feature set rig_1hz needs at least 60 s" in str(errors[0])
    with pytest.raises(SensorDataError, match="6001 samples is not a whole number of seconds at 100 Hz"):
        cycle_arrays({"PS1": np.full(6001, 150.0)})


def test_one_bad_cycle_does_not_fail_the_batch():
    good, bad = _flat_cycle(), _flat_cycle()
    bad["SE"] = np.full(60, -5.0)
    X, errors = extract_cycles([good, bad, good], "rig_1hz")
    assert X.shape[0] == 2 and list(errors) == [1] and errors[1].channel == "SE"


def test_block_errors_name_the_cycle():
    block = {c: np.stack([v, v, v]) for c, v in _flat_cycle().items()}
    block["TS4"][2, 7] = np.nan
    with pytest.raises(SensorDataError, match=r"cycle 1002, channel TS4: contains NaN"):
        extract(block, "rig_1hz", cycle_ids=[1000, 1001, 1002])


def test_feature_sets_declare_their_channels():
    assert FEATURE_SETS["rig_1hz"].channels == UCI_1HZ_CHANNELS
    assert len(FEATURE_SETS["rig_full"].channels) == 17
    for fs in FEATURE_SETS.values():
        names = fs.feature_names()
        assert len(names) == len(set(names))


def test_feature_names_are_stable_under_concurrent_first_use():
    from concurrent.futures import ThreadPoolExecutor

    from hydraulics.features import FeatureSet

    fresh = FeatureSet("probe", UCI_1HZ_CHANNELS)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: fresh.feature_names(), range(32)))
    assert all(r == results[0] for r in results)
    assert len(fresh.feature_names()) == len(get_feature_set("rig_1hz").feature_names())
