"""Dataset loaders: the UCI folder format, the Parquet/CSV table and the dispatcher."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hydraulics.channels import UCI_1HZ_CHANNELS
from hydraulics.components import TARGETS
from hydraulics.dataset import RigDataset
from hydraulics.loaders import load_cycles, load_holdout, load_table, load_uci, save_table, uci_split

# --------------------------------------------------------------------------- UCI folder


@pytest.fixture(scope="module")
def uci(uci_dir):
    return load_uci(uci_dir)


def test_uci_loads_every_channel_present(uci):
    assert set(uci.channels) == set(UCI_1HZ_CHANNELS)
    for name, values in uci.channels.items():
        assert values.shape == (2205, 60), name
    np.testing.assert_array_equal(uci.cycle_ids, np.arange(2205))


def test_uci_values_and_labels_match_the_files(uci, uci_dir):
    first_row = np.array((uci_dir / "TS1.txt").open().readline().split("\t"), dtype=float)
    np.testing.assert_array_equal(uci.channels["TS1"][0], first_row)
    profile = np.loadtxt(uci_dir / "profile.txt", dtype=int, max_rows=5)
    assert list(uci.labels.columns) == list(TARGETS)
    np.testing.assert_array_equal(uci.labels.head(5).to_numpy(), profile)
    assert uci.labels.iloc[0].tolist() == [3, 100, 0, 130, 1]
    assert uci.labels.dtypes.map(lambda d: d.kind).eq("i").all()


def test_uci_channel_and_cycle_subsets(uci, uci_dir):
    part = load_uci(uci_dir, channels=["ts1", "SE"], cycles=[10, 3, 2204])
    assert set(part.channels) == {"TS1", "SE"}
    np.testing.assert_array_equal(part.cycle_ids, [10, 3, 2204])
    np.testing.assert_array_equal(part.channels["SE"], uci.channels["SE"][[10, 3, 2204]])
    assert part.labels.to_numpy().tolist() == uci.labels.iloc[[10, 3, 2204]].to_numpy().tolist()
    with pytest.raises(IndexError, match="2205"):
        load_uci(uci_dir, channels=["TS1"], cycles=[2205])
    with pytest.raises(FileNotFoundError, match="PS1.txt"):
        load_uci(uci_dir, channels=["PS1"])


def test_uci_holdout_split(uci, uci_dir):
    holdout = load_holdout(uci_dir)
    train, test = uci_split(uci, holdout)
    assert len(test) == 474 and len(train) == 1731
    assert not set(train.cycle_ids) & set(test.cycle_ids)
    assert set(test.cycle_ids) == set(holdout.tolist())
    np.testing.assert_array_equal(test.channels["CE"], uci.channels["CE"][np.sort(holdout)])


def test_uci_loads_quickly(uci_dir):
    import time

    start = time.perf_counter()
    load_uci(uci_dir)
    assert time.perf_counter() - start < 2.0


def _copy_uci(uci_dir, tmp_path, names):
    for name in names:
        shutil.copy(uci_dir / name, tmp_path / name)
    return tmp_path


def test_malformed_column_count_names_the_file(uci_dir, tmp_path):
    folder = _copy_uci(uci_dir, tmp_path, ["profile.txt", "TS1.txt", "CP.txt"])
    lines = (folder / "CP.txt").read_text().splitlines()
    (folder / "CP.txt").write_text("\n".join(line.rsplit("\t", 1)[0] for line in lines) + "\n")
    with pytest.raises(ValueError, match=r"CP\.txt: 59 columns per row, expected 60"):
        load_uci(folder)


def test_row_count_mismatch_names_the_file(uci_dir, tmp_path):
    folder = _copy_uci(uci_dir, tmp_path, ["profile.txt", "VS1.txt"])
    lines = (folder / "VS1.txt").read_text().splitlines()
    (folder / "VS1.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match=r"VS1\.txt: 2204 rows, but profile\.txt has 2205"):
        load_uci(folder)


def test_folder_without_profile_loads_unlabelled(uci_dir, tmp_path):
    folder = _copy_uci(uci_dir, tmp_path, ["SE.txt"])
    ds = load_uci(folder)
    assert ds.labels is None and ds.channels["SE"].shape == (2205, 60)


# --------------------------------------------------------------------------- table format


def _small_dataset(with_system=True) -> RigDataset:
    rng = np.random.default_rng(0)
    labels = pd.DataFrame([[3, 100, 0, 130, 1], [100, 73, 2, 90, 0], [20, 80, 1, 115, 0]], columns=list(TARGETS))
    meta = {"system_id": np.array(["rig-a", "rig-b", "rig-a"], dtype=object)} if with_system else {}
    return RigDataset(
        {"TS1": rng.normal(45, 5, (3, 60)), "FS1": rng.normal(6, 1, (3, 600)), "PS1": rng.normal(160, 20, (3, 6000))},
        np.array([7, 8, 42]),
        labels,
        source="test",
        meta=meta,
    )


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_table_round_trip(tmp_path, suffix):
    original = _small_dataset()
    uri = str(tmp_path / "nested" / f"cycles.{suffix}")
    save_table(original, uri)
    loaded = load_table(uri)
    assert set(loaded.channels) == set(original.channels)
    for name, values in original.channels.items():
        np.testing.assert_array_equal(loaded.channels[name], values)
    np.testing.assert_array_equal(loaded.cycle_ids, original.cycle_ids)
    pd.testing.assert_frame_equal(loaded.labels, original.labels, check_dtype=False)
    assert loaded.meta["system_id"].tolist() == ["rig-a", "rig-b", "rig-a"]
    assert set(load_cycles(uri, channels=["ts1"]).channels) == {"TS1"}


def test_table_without_labels_or_system_by_uri(tmp_path):
    original = _small_dataset(with_system=False)
    original.labels = None
    uri = (tmp_path / "plain.parquet").as_uri()  # file:// URI through pyarrow.fs
    save_table(original, uri)
    loaded = load_table(uri)
    assert loaded.labels is None and "system_id" not in loaded.meta
    np.testing.assert_array_equal(loaded.channels["PS1"], original.channels["PS1"])


def test_ragged_parquet_lists_name_the_channel_and_row(tmp_path):
    path = tmp_path / "ragged.parquet"
    pq.write_table(pa.table({"cycle_id": [0, 1, 2], "TS2": [[1.0] * 60, [2.0] * 60, [3.0] * 59]}), path)
    with pytest.raises(ValueError, match="channel TS2, row 2: 59 samples, but row 0 has 60"):
        load_table(str(path))


def test_ragged_csv_lists_name_the_channel_and_row(tmp_path):
    path = tmp_path / "ragged.csv"
    pd.DataFrame({"cycle_id": [0, 1], "SE": ["[1.0, 2.0]", "[1.0]"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="channel SE, row 1: 1 samples, but row 0 has 2"):
        load_table(str(path))


def test_table_errors(tmp_path):
    with pytest.raises(ValueError, match="unsupported table suffix '.json'"):
        load_table(str(tmp_path / "x.json"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_table(str(tmp_path / "missing.parquet"))
    path = tmp_path / "t.parquet"
    save_table(_small_dataset(), str(path))
    with pytest.raises(KeyError, match="no channel column"):
        load_table(str(path), channels=["PS2"])


# --------------------------------------------------------------------------- dispatch


def test_load_cycles_dispatches_on_folders(uci_dir, tmp_path):
    assert len(load_cycles(str(uci_dir), channels=["CP"])) == 2205
    with pytest.raises(ValueError, match="without profile.txt"):
        load_cycles(str(tmp_path))
    with pytest.raises(ValueError, match="not a UCI folder"):
        load_cycles(str(tmp_path / "nothing.h5"))
