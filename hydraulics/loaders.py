"""Read and write rig cycles: the UCI folder format and a one-row-per-cycle table.

UCI folder: ``<CHANNEL>.txt`` files (tab-separated, one row per cycle, one
column per sample) plus ``profile.txt`` with the labels. Table: Parquet or CSV
with ``cycle_id``, optional ``system_id``, one list column per channel and
optional label columns named as :data:`hydraulics.components.TARGETS`.

Every loader returns a :class:`~hydraulics.dataset.RigDataset`, so training
and batch jobs never care where the cycles came from.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hydraulics.channels import CHANNELS, canonical_name
from hydraulics.components import TARGETS
from hydraulics.dataset import RigDataset

PROFILE_FILE = "profile.txt"
HOLDOUT_FILE = "holdout_cycles.txt"
TABLE_SUFFIXES = (".parquet", ".csv")


# --------------------------------------------------------------------------- UCI folder


def _read_matrix(path: Path) -> np.ndarray:
    # The C parser reads the 2205x60 files in ~10 ms each; np.loadtxt is ~20x slower.
    try:
        frame = pd.read_csv(path, sep="\t", header=None, engine="c", dtype=np.float64)
    except (ValueError, pd.errors.ParserError) as exc:
        raise ValueError(f"{path}: not a tab-separated numeric matrix ({exc})") from exc
    return frame.to_numpy()


def _requested_channels(channels: Sequence[str] | None) -> list[str] | None:
    return None if channels is None else [canonical_name(c) for c in channels]


def load_uci(
    folder: str | Path,
    channels: Sequence[str] | None = None,
    cycles: Sequence[int] | None = None,
) -> RigDataset:
    """Load a UCI-format folder; ``channels=None`` loads every catalogue channel present.

    ``cycles`` picks rows (0-based cycle ids, which are the row indices).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"UCI folder {folder} does not exist")
    names = _requested_channels(channels)
    if names is None:
        names = [n for n in CHANNELS if (folder / f"{n}.txt").is_file()]
    else:
        missing = [n for n in names if not (folder / f"{n}.txt").is_file()]
        if missing:
            raise FileNotFoundError(f"UCI folder {folder} has no file(s) {[f'{n}.txt' for n in missing]}")

    profile_path = folder / PROFILE_FILE
    labels = _read_profile(profile_path) if profile_path.is_file() else None
    if not names and labels is None:
        raise FileNotFoundError(f"UCI folder {folder} has neither {PROFILE_FILE} nor any channel file")

    data: dict[str, np.ndarray] = {}
    n_rows = None if labels is None else len(labels)
    row_source = PROFILE_FILE
    for name in names:
        path = folder / f"{name}.txt"
        matrix = _read_matrix(path)
        expected = CHANNELS[name].samples_per_cycle
        if matrix.shape[1] != expected:
            raise ValueError(
                f"{path}: {matrix.shape[1]} columns per row, expected {expected} "
                f"({name} is sampled at {CHANNELS[name].rate_hz} Hz over a 60 s cycle)"
            )
        if n_rows is None:
            n_rows, row_source = matrix.shape[0], path.name
        elif matrix.shape[0] != n_rows:
            raise ValueError(f"{path}: {matrix.shape[0]} rows, but {row_source} has {n_rows}")
        data[name] = matrix

    dataset = RigDataset(data, np.arange(n_rows), labels, source=str(folder))
    if cycles is not None:
        index = np.asarray(cycles, dtype=np.int64)
        bad = index[(index < 0) | (index >= n_rows)]
        if bad.size:
            raise IndexError(f"cycle ids {bad[:10].tolist()} out of range 0..{n_rows - 1} in {folder}")
        dataset = dataset.subset(index)
    return dataset


def _read_profile(path: Path) -> pd.DataFrame:
    matrix = _read_matrix(path)
    if matrix.shape[1] != len(TARGETS):
        raise ValueError(f"{path}: {matrix.shape[1]} columns, expected {len(TARGETS)} ({', '.join(TARGETS)})")
    return pd.DataFrame(matrix.astype(np.int64), columns=list(TARGETS))


def load_holdout(folder: str | Path) -> np.ndarray:
    """The benchmark's held-out cycle ids (``holdout_cycles.txt``, one id a line)."""
    path = Path(folder) / HOLDOUT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return np.loadtxt(path, dtype=np.int64, ndmin=1)


def uci_split(dataset: RigDataset, holdout: Sequence[int] | np.ndarray) -> tuple[RigDataset, RigDataset]:
    """Split by cycle id into (train, test): test holds the ``holdout`` cycles."""
    holdout = np.asarray(holdout, dtype=np.int64)
    unknown = np.setdiff1d(holdout, dataset.cycle_ids)
    if unknown.size:
        raise ValueError(f"holdout names {unknown.size} cycle id(s) not in the dataset, e.g. {unknown[:5].tolist()}")
    is_test = np.isin(dataset.cycle_ids, holdout)
    return dataset.subset(np.flatnonzero(~is_test)), dataset.subset(np.flatnonzero(is_test))


# --------------------------------------------------------------------------- table format


def _table_format(uri: str) -> str:
    suffix = Path(uri.split("?", 1)[0]).suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ValueError(f"{uri}: unsupported table suffix {suffix!r}; expected one of {TABLE_SUFFIXES}")
    return suffix[1:]


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    # A plain local path (relative or absolute) is not a URI pyarrow accepts.
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).resolve())
    return pafs.FileSystem.from_uri(uri)


def save_table(dataset: RigDataset, uri: str) -> None:
    """Write one row per cycle to Parquet or CSV (chosen by the suffix of ``uri``)."""
    fmt = _table_format(uri)
    columns: dict[str, pa.Array] = {"cycle_id": pa.array(np.asarray(dataset.cycle_ids, dtype=np.int64))}
    if "system_id" in dataset.meta:
        columns["system_id"] = pa.array([str(s) for s in dataset.meta["system_id"]], pa.string())
    for name, values in dataset.channels.items():
        values = np.ascontiguousarray(values, dtype=np.float64)
        if fmt == "parquet":
            # A fixed-size list shares one flat buffer with the matrix: no per-row Python objects.
            flat = pa.array(values.reshape(-1))
            columns[name] = pa.FixedSizeListArray.from_arrays(flat, values.shape[1]).cast(pa.list_(pa.float64()))
        else:
            columns[name] = pa.array([json.dumps(row) for row in values.tolist()], pa.string())
    if dataset.labels is not None:
        for target in TARGETS:
            columns[target] = pa.array(dataset.labels[target].to_numpy(dtype=np.int64))
    table = pa.table(columns)

    fs, path = _filesystem(uri)
    parent = path.rsplit("/", 1)[0]
    if parent and parent != path:
        fs.create_dir(parent, recursive=True)
    if fmt == "parquet":
        pq.write_table(table, path, filesystem=fs)
    else:
        with fs.open_output_stream(path) as out:
            pacsv.write_csv(table, out)


def load_table(uri: str, channels: Sequence[str] | None = None) -> RigDataset:
    """Read a Parquet/CSV cycle table; ``channels=None`` loads every catalogue channel column."""
    fmt = _table_format(uri)
    fs, path = _filesystem(uri)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"{uri}: no such file")
    if fmt == "parquet":
        table = pq.read_table(path, filesystem=fs)
    else:
        with fs.open_input_file(path) as raw:
            frame = pd.read_csv(io.BytesIO(raw.read()), dtype={"system_id": str})
        table = pa.Table.from_pandas(frame, preserve_index=False)

    if "cycle_id" not in table.column_names:
        raise ValueError(f"{uri}: missing the cycle_id column")
    names = _requested_channels(channels)
    present = [c for c in table.column_names if c in CHANNELS]
    if names is None:
        names = present
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise KeyError(f"{uri}: no channel column(s) {missing}; it has {present}")

    data = {name: _channel_matrix(table.column(name), name, fmt, uri) for name in names}
    labels = None
    label_cols = [t for t in TARGETS if t in table.column_names]
    if label_cols:
        if len(label_cols) != len(TARGETS):
            absent = [t for t in TARGETS if t not in label_cols]
            raise ValueError(f"{uri}: label columns must be all of {list(TARGETS)} or none; missing {absent}")
        labels = pd.DataFrame({t: table.column(t).to_numpy().astype(np.int64) for t in TARGETS})
    meta = {}
    if "system_id" in table.column_names:
        meta["system_id"] = np.asarray(table.column("system_id").to_pylist(), dtype=object)
    cycle_ids = table.column("cycle_id").to_numpy().astype(np.int64)
    return RigDataset(data, cycle_ids, labels, source=uri, meta=meta)


def _channel_matrix(column: pa.ChunkedArray, name: str, fmt: str, uri: str) -> np.ndarray:
    if fmt == "csv":
        rows = []
        for i, text in enumerate(column.to_pylist()):
            try:
                rows.append(json.loads(text))
            except (TypeError, json.JSONDecodeError) as exc:
                raise ValueError(f"{uri}: channel {name}, row {i}: not a JSON array of numbers ({exc})") from exc
        lengths = np.array([len(r) for r in rows])
    else:
        column = column.combine_chunks()
        if not (
            pa.types.is_list(column.type)
            or pa.types.is_large_list(column.type)
            or pa.types.is_fixed_size_list(column.type)
        ):
            raise ValueError(f"{uri}: channel {name} has type {column.type}, expected list<float64>")
        if column.null_count:
            raise ValueError(f"{uri}: channel {name}, row {column.is_null().index(True).as_py()}: missing values")
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        row = int(np.flatnonzero(lengths != lengths[0])[0])
        raise ValueError(
            f"{uri}: channel {name}, row {row}: {lengths[row]} samples, but row 0 has {lengths[0]}; "
            "every cycle of a channel must have the same length"
        )
    width = int(lengths[0]) if len(lengths) else 0
    if fmt == "csv":
        return np.asarray(rows, dtype=np.float64).reshape(len(rows), width)
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return flat.reshape(len(column), width)


# --------------------------------------------------------------------------- dispatch


def load_cycles(source: str, channels: Sequence[str] | None = None) -> RigDataset:
    """Load cycles from a UCI folder or a ``.parquet``/``.csv`` table, chosen by what ``source`` is."""
    source = str(source)
    suffix = Path(source.split("?", 1)[0]).suffix.lower()
    if suffix in TABLE_SUFFIXES:
        return load_table(source, channels)
    folder = Path(source)
    if folder.is_dir():
        if (folder / PROFILE_FILE).is_file() or any((folder / f"{n}.txt").is_file() for n in CHANNELS):
            return load_uci(folder, channels)
        raise ValueError(f"{source}: a directory without {PROFILE_FILE} or any <CHANNEL>.txt file")
    raise ValueError(
        f"{source}: not a UCI folder and not a table; expected a directory or a path ending in {TABLE_SUFFIXES}"
    )
