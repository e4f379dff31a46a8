"""Whole-second alignment: edge-padded shifts, and recovering known shifts on simulated and UCI cycles."""

from pathlib import Path

import numpy as np
import pytest

from hydraulics.alignment import align, augment_with_shifts, estimate_shift, reference_cycle, shift_block
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
