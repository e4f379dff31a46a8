"""Reading stored cycles for the batch job, and turning Arrow rows into cycles.

The batch job (``pipelines.batch_predict``) reads Parquet, CSV or a UCI folder
into a Ray Dataset here; the predictor (``pipelines.ensemble_predictor``) turns
each batch back into what the online path validates: a block of samples per
channel for the rows that look well formed (``fast_block``), and request-shaped
cycles for the rest (``batch_to_cycles``), so a bad row is rejected with the same
channel and reason as over HTTP.

Two kinds of failure are kept apart: ``BatchInputError`` is the input as a whole
(unreadable, no ``cycle_id``, a channel column of the wrong type) and stops the
job; a bad row is a ``hydraulics.validation.SensorDataError`` for that row only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hydraulics.channels import CHANNELS
from hydraulics.features import FeatureSet
from hydraulics.validation import SensorDataError
from pipelines.prediction_output import PROFILE_COLUMN
from storage.files import filesystem

# CPUs asked for by the read tasks: they are short and mostly I/O, so several can
# share the CPU that the actor pool leaves free (see pipelines.batch_predict._actor_cpus).
READ_CPUS = 0.25
# Ray Data (2.60) reads Parquet footers on a pool of actors started for every read,
# 32 by default (RAY_DATA_PARQUET_FOOTER_NUM_ACTORS, read when read_parquet is
# called). Each is a new worker process, about 1.5 s of CPU to start: on 2 cores the
# default cost several seconds per job for a few footers. One actor drives 128
# concurrent footer reads (RAY_DATA_PARQUET_FOOTER_IO_CONCURRENCY); set the variable
# to spread inputs of many thousands of remote files over more.
FOOTER_READERS_ENV = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
FOOTER_READERS = 1


class BatchInputError(ValueError):
    """The input as a whole cannot be read (as opposed to one bad row)."""


# --------------------------------------------------------------------------- reading


def source_format(source: str) -> str:
    """``parquet``, ``csv`` or ``uci``: by suffix, else by what a directory holds.

    A directory (local or URI) of ``*.parquet`` / ``*.csv`` files is one table, as Ray
    Data reads it; a local directory of ``<CHANNEL>.txt`` files is the UCI format.
    """
    import pyarrow.fs as pafs

    suffix = Path(source.split("?", 1)[0].rstrip("/")).suffix.lower()
    if suffix in (".parquet", ".csv"):
        return suffix[1:]
    if "://" not in source and Path(source).is_dir():
        folder = Path(source)
        if (folder / "profile.txt").is_file() or any((folder / f"{c}.txt").is_file() for c in CHANNELS):
            return "uci"
    try:
        fs, path = filesystem(source)
        names = [i.path for i in fs.get_file_info(pafs.FileSelector(path)) if i.type == pafs.FileType.File]
    except (FileNotFoundError, OSError, pa.ArrowInvalid):
        names = []
    for fmt in ("parquet", "csv"):
        if any(n.lower().endswith("." + fmt) for n in names):
            return fmt
    raise BatchInputError(
        f"{source}: expected a .parquet or .csv table (a file, or a directory of them, local or URI) "
        "or a UCI folder (<CHANNEL>.txt files)"
    )


def row_profiles(column: pa.ChunkedArray | pa.Array, default: str) -> np.ndarray:
    """Each row's profile name (object array): the ``profile`` cell, stripped; ``default``
    where it is null or blank (a CSV's empty cell reads as ``""``, not null)."""
    names = pc.utf8_trim_whitespace(column.cast(pa.string()))
    blank = pc.fill_null(pc.equal(names, ""), True)
    return np.asarray(pc.if_else(blank, default, names).to_pylist(), dtype=object)


def profile_names(source: str) -> tuple[list[str], bool] | None:
    """The profiles an input's ``profile`` column names (sorted) and whether some rows name
    none (null or blank); None when the input has no such column (a UCI folder never has).
    Reads that one column only, before the job starts, so the job loads exactly those
    profiles' models."""
    import pyarrow.dataset as pads

    fmt = source_format(source)
    if fmt == "uci":
        return None
    fs, path = filesystem(source)
    try:
        if fmt == "parquet":
            dataset = pads.dataset(path, filesystem=fs, format="parquet")
        else:
            options = pads.CsvFileFormat(convert_options=_csv_types({PROFILE_COLUMN: pa.string()}))
            dataset = pads.dataset(path, filesystem=fs, format=options)
        if PROFILE_COLUMN not in dataset.schema.names:
            return None
        column = dataset.to_table(columns=[PROFILE_COLUMN])[PROFILE_COLUMN]
    except (OSError, pa.ArrowInvalid) as exc:
        raise BatchInputError(f"{source}: cannot read its {PROFILE_COLUMN} column ({exc})") from exc
    named = row_profiles(column, "")
    return sorted({str(n) for n in named if n}), bool((named == "").any())


def _csv_types(types: dict[str, pa.DataType]):
    """CSV conversion options that read ``types``' columns as given (ids and JSON cells as text)."""
    import pyarrow.csv as pacsv

    return pacsv.ConvertOptions(column_types=types)


def read_cycles(source: str, channels: Sequence[str], cycles: Sequence[int] | None = None):
    """A Ray Dataset with ``cycle_id``, maybe ``system_id`` and ``profile``, and one column per
    channel of ``channels`` the input has (the job's profiles' channels together).

    Tables are read by Ray Data in parallel (only the columns we need); a UCI
    folder is loaded by ``hydraulics.loaders`` (its text matrices are not a
    format Ray Data reads) and handed over as Arrow.
    """
    import ray

    fmt = source_format(source)
    if fmt == "parquet":
        schema_names = _parquet_columns(source)
        wanted = ["cycle_id", "system_id", PROFILE_COLUMN, *channels]
        with _env_default(FOOTER_READERS_ENV, str(FOOTER_READERS)):
            ds = ray.data.read_parquet(source, num_cpus=READ_CPUS)
        ds = ds.select_columns([c for c in wanted if c in schema_names])
    elif fmt == "csv":
        # Channel cells are JSON arrays (see hydraulics.loaders); keep them and ids as text.
        types = {c: pa.string() for c in ("system_id", PROFILE_COLUMN, *channels)}
        ds = ray.data.read_csv(source, convert_options=_csv_types(types), num_cpus=READ_CPUS)
    else:
        from hydraulics.loaders import load_uci

        data = load_uci(source, channels=None, cycles=cycles)
        present = [c for c in channels if c in data.channels]
        columns = {"cycle_id": pa.array(data.cycle_ids.astype(np.int64))}
        for name in present:
            block = np.ascontiguousarray(data.channels[name], dtype=np.float64)
            columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), block.shape[1])
        return ray.data.from_arrow(pa.table(columns))
    names = ds.schema().names
    if "cycle_id" not in names:
        raise BatchInputError(f"{source}: no cycle_id column (columns: {names})")
    if cycles is not None:
        keep = pa.array(sorted({int(c) for c in cycles}), pa.int64())
        ds = ds.map_batches(_keep_cycles, fn_kwargs={"keep": keep}, batch_format="pyarrow", num_cpus=READ_CPUS)
    return ds


@contextmanager
def _env_default(name: str, value: str):
    """``name=value`` in this process's environment for the block, unless already set."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _keep_cycles(batch: pa.Table, keep: pa.Array) -> pa.Table:
    return batch.filter(pc.is_in(batch["cycle_id"].cast(pa.int64()), value_set=keep))


def _parquet_columns(source: str) -> list[str]:
    import pyarrow.dataset as pads

    try:
        fs, path = filesystem(source)
        return pads.dataset(path, filesystem=fs, format="parquet").schema.names
    except (FileNotFoundError, pa.ArrowInvalid) as exc:
        raise BatchInputError(f"{source}: cannot open as Parquet ({exc})") from exc


# --------------------------------------------------------------------------- rows -> cycles


def _list_column(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A list<float> column as (length per row, -1 where the cell is null; start of each
    row in the flat values; the flat float64 values). Null samples inside a list become
    NaN, which validation then rejects by name."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = pc.list_value_length(arr).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    # The values buffer as numpy (no copy for float64 without nulls); the samples of
    # null cells are left out, as the starts below assume.
    flat = pc.list_flatten(arr).cast(pa.float64()).to_numpy(zero_copy_only=False)
    starts = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths) > 1:
        np.cumsum(np.maximum(lengths[:-1], 0), out=starts[1:])
    return lengths, starts, flat


def _list_rows(column: pa.ChunkedArray) -> list[np.ndarray | None]:
    """A list<float> column as one array per row; None where the cell is null."""
    lengths, starts, flat = _list_column(column)
    return [None if n < 0 else flat[s : s + n] for n, s in zip(lengths.tolist(), starts.tolist())]


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def fast_block(batch: pa.Table, fs: FeatureSet) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The rows that can go to ``extract`` as one block, straight from the Arrow columns.

    A row qualifies when every channel of the feature set is a non-null list of that
    channel's most common length in the batch, with finite values inside the channel's
    plausible range. Returns the mask of those rows and ``{channel: (rows, samples)}``.
    This is only a pre-filter: ``extract`` still validates the block, and every row
    outside it goes through the per-row path (``batch_to_cycles`` + ``extract_cycles``),
    which names what is wrong with it.
    """
    n = batch.num_rows
    none = np.zeros(n, dtype=bool), {}
    columns = {}
    ok = np.ones(n, dtype=bool)
    for name in fs.channels:
        if n == 0 or name not in batch.column_names or not _is_list(batch[name].type):
            return none  # a missing channel, or CSV text: the per-row path
        lengths, starts, flat = _list_column(batch[name])
        present = lengths[lengths > 0]
        if not len(present):
            return none
        values, counts = np.unique(present, return_counts=True)
        length = int(values[counts.argmax()])
        ok &= lengths == length
        columns[name] = (length, starts, flat)
    rows = np.flatnonzero(ok)
    if not len(rows):
        return none
    blocks = {}
    for name, (length, starts, flat) in columns.items():
        if len(rows) == n and len(flat) == n * length:
            block = flat.reshape(n, length)  # every row has the common length: no copy
        else:
            block = flat[starts[rows, None] + np.arange(length)]
        lo, hi = CHANNELS[name].plausible_range
        ok[rows] &= np.isfinite(block).all(axis=1) & ((block >= lo) & (block <= hi)).all(axis=1)
        blocks[name] = block
    keep = ok[rows]
    if not keep.all():
        blocks = {name: block[keep] for name, block in blocks.items()}
    return ok, blocks


def _json_rows(column: pa.ChunkedArray, name: str) -> tuple[list[object], dict[int, SensorDataError]]:
    out: list[object] = []
    errors: dict[int, SensorDataError] = {}
    for i, text in enumerate(column.to_pylist()):
        if text is None or text == "":
            out.append(None)
            continue
        try:
            out.append(json.loads(text))
        except json.JSONDecodeError as exc:
            out.append(None)
            errors[i] = SensorDataError(name, f"not a JSON array of numbers ({exc.msg})")
    return out, errors


def batch_to_cycles(batch: pa.Table, channels: Sequence[str]) -> tuple[list[dict], dict[int, SensorDataError]]:
    """Request-shaped cycles (channel -> samples) and the rows already known to be bad.

    A null cell or an absent column leaves the channel out of the cycle, so
    validation reports it as missing, exactly as for an API request without it.
    """
    n = batch.num_rows
    cycles: list[dict] = [{} for _ in range(n)]
    errors: dict[int, SensorDataError] = {}
    for name in channels:
        if name not in batch.column_names:
            continue
        column = batch[name]
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            values, bad = _json_rows(column, name)
            for i, err in bad.items():
                errors.setdefault(i, err)
        elif _is_list(column.type):
            values = _list_rows(column)
        else:
            raise BatchInputError(
                f"channel column {name} has type {column.type}, expected list<double> "
                "(Parquet) or a JSON array string (CSV)"
            )
        for i, v in enumerate(values):
            if v is not None:
                cycles[i][name] = v
    return cycles, errors
