"""Whole-second alignment: edge-padded shifts, and recovering known shifts on simulated and UCI cycles."""

from pathlib import Path

import numpy as np
import pytest

from hydraulics.alignment import (
    align,
    augment_with_shifts,
    estimate_shift,
    pad_from_shape,
    reference_cycle,
    shape_curves,
    shift_block,
)
from hydraulics.channels import UCI_1HZ_CHANNELS
from hydraulics.simulator import simulate_dataset

UCI_FOLDER = Path(__file__).resolve().parents[2] / "shared" / "data" / "uci_hydraulic"
UCI_ALIGN = ("SE", "VS1")
BASIC = ("PS1", "TS1", "FS1", "VS1")
BASIC_ALIGN = ("PS1", "FS1", "VS1")


@pytest.fixture(scope="module")
def uci_like():
    """Reference from one seed, test cycles from another: the profile never saw them."""
    return simulate_dataset(1, seed=11, channels=UCI_1HZ_CHANNELS), simulate_dataset(
        1, seed=12, channels=UCI_1HZ_CHANNELS
    )


@pytest.fixture(scope="module")
def basic():
    return simulate_dataset(1, seed=21, channels=BASIC), simulate_dataset(1, seed=22, channels=BASIC)


def test_one_second_late_repeats_the_first_sample_and_drops_the_last():
    x = np.arange(60.0)[None, :]
    late = shift_block({"TS1": x}, 1)["TS1"][0]
    assert late[0] == 0.0 and late[1] == 0.0
    np.testing.assert_array_equal(late[1:], x[0, :-1])
    early = shift_block({"TS1": x}, -2)["TS1"][0]
    np.testing.assert_array_equal(early[:-2], x[0, 2:])
    np.testing.assert_array_equal(early[-2:], [59.0, 59.0])  # edge-padded, never wrapped
    np.testing.assert_array_equal(shift_block({"TS1": x}, 0)["TS1"], x)


def test_shift_works_at_native_rates_and_per_cycle():
    ps1 = np.arange(6000.0)[None, :].repeat(3, axis=0)  # 100 Hz: one second is 100 samples
    fs1 = np.arange(600.0)[None, :].repeat(3, axis=0)  # 10 Hz
    out = shift_block({"PS1": ps1, "FS1": fs1}, np.array([1, -2, 0]))
    np.testing.assert_array_equal(out["PS1"][0, :101], np.r_[np.zeros(100), 0.0])
    np.testing.assert_array_equal(out["PS1"][0, 100:], ps1[0, :-100])
    np.testing.assert_array_equal(out["PS1"][1, :-200], ps1[1, 200:])
    np.testing.assert_array_equal(out["PS1"][1, -200:], np.full(200, 5999.0))
    np.testing.assert_array_equal(out["PS1"][2], ps1[2])
    np.testing.assert_array_equal(out["FS1"][0, 10:], fs1[0, :-10])
    np.testing.assert_array_equal(out["FS1"][1, -20:], np.full(20, 599.0))


@pytest.mark.parametrize(
    ("data", "channels", "share"),
    # The simulated temperatures carry almost no step shape, so all eight 1 Hz channels do a little worse.
    [("uci_like", UCI_ALIGN, 0.97), ("uci_like", UCI_1HZ_CHANNELS, 0.93), ("basic", BASIC_ALIGN, 0.97)],
)
def test_align_recovers_known_shifts(request, data, channels, share):
    train, test = request.getfixturevalue(data)
    reference = reference_cycle(train.channels, channels)
    true = np.random.default_rng(0).integers(-3, 4, len(test))
    aligned, found, quality = align(shift_block(test.channels, true), reference, channels)
    assert (found == true).mean() >= share
    assert found.dtype.kind == "i" and quality.shape == true.shape
    ok = found == true
    for ch, values in test.channels.items():  # every channel moves back, not only the alignment ones
        rate = values.shape[1] // 60
        np.testing.assert_array_equal(aligned[ch][ok, 3 * rate : -3 * rate], values[ok, 3 * rate : -3 * rate])
    unshifted, _ = estimate_shift(test.channels, reference, channels)
    assert (unshifted == 0).mean() >= share


def test_max_shift_is_respected(uci_like):
    train, test = uci_like
    reference = reference_cycle(train.channels, UCI_ALIGN)
    late = shift_block(test.channels, 4)
    found, _ = estimate_shift(late, reference, UCI_ALIGN, max_shift_s=2)
    assert np.abs(found).max() <= 2
    found, _ = estimate_shift(late, reference, UCI_ALIGN, max_shift_s=5)
    assert (found == 4).mean() >= 0.97


def test_quality_is_high_for_cycles_and_low_for_noise(uci_like):
    train, test = uci_like
    reference = reference_cycle(train.channels, UCI_ALIGN)
    _, good = estimate_shift(test.channels, reference, UCI_ALIGN)
    rng = np.random.default_rng(1)
    noise = {ch: rng.normal(50.0, 1.0, test.channels[ch].shape) for ch in UCI_ALIGN}
    _, bad = estimate_shift(noise, reference, UCI_ALIGN)
    assert np.all((-1.0 <= bad) & (bad <= 1.0))
    assert np.median(good) > 0.8
    assert np.median(bad) < 0.3


def test_one_cycle_aligns_fast(uci_like):
    import time

    train, test = uci_like
    reference = reference_cycle(train.channels, UCI_1HZ_CHANNELS)
    one = {ch: v[:1] for ch, v in test.channels.items()}
    estimate_shift(one, reference, UCI_1HZ_CHANNELS)
    start = time.perf_counter()
    for _ in range(100):
        estimate_shift(one, reference, UCI_1HZ_CHANNELS)
    assert (time.perf_counter() - start) / 100 < 5e-3  # ~0.5 ms measured; generous for loaded CI machines


def test_augment_appends_shifted_copies_with_their_source_rows():
    x = np.arange(120.0).reshape(2, 60)
    out, source = augment_with_shifts({"TS1": x}, shifts=(-1, 2))
    assert out["TS1"].shape == (6, 60)
    np.testing.assert_array_equal(source, [0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(out["TS1"][:2], x)
    np.testing.assert_array_equal(out["TS1"][2:4], shift_block({"TS1": x}, -1)["TS1"])
    np.testing.assert_array_equal(out["TS1"][4:], shift_block({"TS1": x}, 2)["TS1"])


@pytest.mark.skipif(not UCI_FOLDER.is_dir(), reason="UCI data not present")
@pytest.mark.parametrize("channels", [UCI_ALIGN, UCI_1HZ_CHANNELS])
def test_uci_shifts_are_recovered(channels):
    from hydraulics.loaders import load_holdout, load_uci, uci_split

    train, test = uci_split(load_uci(UCI_FOLDER, channels=UCI_1HZ_CHANNELS), load_holdout(UCI_FOLDER))
    reference = reference_cycle(train.channels, channels)
    for shift in (-3, -2, -1, 1, 2, 3):
        found, _ = estimate_shift(shift_block(test.channels, shift), reference, channels)
        assert (found == shift).mean() >= 0.95, shift


def test_moved_in_samples_follow_the_shape_from_the_cycles_own_level():
    shape = np.r_[68.0, np.zeros(29), np.linspace(0.0, 10.0, 30)]  # a jump at the start, a ramp at the end
    cycle = shape + 5.0  # the same shape at another level
    early = shift_block({"SE": cycle[None, :]}, -1)  # one second early: the 68 is lost
    late = shift_block({"SE": cycle[None, :]}, 2)
    both = {"SE": np.vstack([shift_block(early, 1)["SE"], shift_block(late, -2)["SE"]])}
    assert both["SE"][0, 0] == 5.0  # edge-padded: the start no cycle has
    padded = pad_from_shape(both, np.array([1, -2]), {"SE": shape})["SE"]
    np.testing.assert_allclose(padded[0], cycle)  # the first second rebuilt from the shape
    np.testing.assert_allclose(padded[1], cycle)  # the last two: the ramp goes on
    untouched = pad_from_shape(both, np.array([0, 0]), {"SE": shape})["SE"]
    np.testing.assert_array_equal(untouched, both["SE"])
    high = pad_from_shape({"SE": np.full((1, 60), 90.0)}, np.array([1]), {"SE": shape})["SE"]
    assert high[0, 0] == 110.0  # 90 + 68 is no efficiency factor: kept inside the plausible range
    other_length = pad_from_shape({"PS1": np.ones((1, 6000))}, np.array([1]), {"PS1": np.zeros(60)})["PS1"]
    np.testing.assert_array_equal(other_length, np.ones((1, 6000)))  # no shape of its length: as it was


def test_shape_padding_at_native_rates():
    ps1 = np.tile(np.r_[np.full(100, 9.0), np.linspace(150.0, 200.0, 5900)], (2, 1))  # 100 Hz
    shapes = shape_curves({"PS1": ps1})
    moved = shift_block(shift_block({"PS1": ps1}, np.array([-1, 0])), np.array([1, 0]))
    np.testing.assert_allclose(pad_from_shape(moved, np.array([1, 0]), shapes)["PS1"], ps1)


@pytest.mark.skipif(not UCI_FOLDER.is_dir(), reason="UCI data not present")
def test_early_uci_cycles_are_not_novel_after_alignment():
    """A UCI cycle recorded one to three seconds early loses the efficiency factor's first
    sample (the previous cycle's value); aligned with edge padding every one of them looked
    novel. With the shape padding they are flagged about as often as unshifted cycles."""
    from diagnosis.profiles import ProfileReference, builtin_profile
    from hydraulics.features import extract
    from hydraulics.loaders import load_holdout, load_uci, uci_split

    profile = builtin_profile("uci-1hz")
    train, test = uci_split(load_uci(UCI_FOLDER, channels=UCI_1HZ_CHANNELS), load_holdout(UCI_FOLDER))
    aligned, _, _ = ProfileReference.fit(profile, train.channels).align(train.channels)
    reference = ProfileReference.fit(profile, train.channels, extract(aligned, profile.feature_set))
    unshifted = reference.prepare(test.channels).flagged.mean()
    for shift in (-3, -1, 2):
        flagged = reference.prepare(shift_block(test.channels, shift)).flagged.mean()
        assert flagged <= unshifted + 0.02, (shift, flagged, unshifted)
    edge = ProfileReference(reference.profile, reference.curves, reference.novelty, reference.novelty_columns)
    assert edge.prepare(shift_block(test.channels, -1)).flagged.mean() > 0.5  # what edge padding did
