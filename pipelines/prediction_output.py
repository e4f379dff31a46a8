"""What the batch job writes: the two output schemas, the ensemble's verdicts
(``diagnosis.voting.VerdictColumns``) as their columns, and the writer of both
Parquet outputs.

Predictions are flat columns (one set per component, then the overall verdict,
then the bundle version of every family) rather than the nested ``Diagnosis``,
so a reader can filter and aggregate them column by column without unnesting.
A rejected row goes to a separate output with the channel at fault and why.

The predictor emits both kinds of row in one table of the combined schema
(tagged by ``KIND_COLUMN``) so every batch of the actor pool has one schema;
``OutputWriter`` splits them into the two outputs. In the job, Ray Data's write
tasks run it (``PredictionSink``), in parallel, next to the actor pool.

This module is imported by those write tasks, so it imports nothing heavy: the
model families' names come in as values (``prediction_schema(FAMILY_NAMES)``),
not from ``diagnosis.registry``, whose import loads every model library.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from ray.data import Datasink

from hydraulics.components import COMPONENT_NAMES
from storage.files import filesystem

if TYPE_CHECKING:
    from diagnosis.voting import VerdictColumns
    from hydraulics.validation import SensorDataError

PREDICTIONS_DIR = "predictions"
ERRORS_DIR = "errors"
KIND_COLUMN = "_kind"  # internal column: which output a row goes to
KINDS = (("prediction", PREDICTIONS_DIR), ("error", ERRORS_DIR))

PROFILE_COLUMN = "profile"  # in the input: each row's profile (optional); in both outputs: the one used

ERROR_SCHEMA = pa.schema(
    [
        pa.field("system_id", pa.string()),
        pa.field("cycle_id", pa.int64()),
        pa.field(PROFILE_COLUMN, pa.string()),
        pa.field("channel", pa.string()),
        pa.field("problem", pa.string()),
    ]
)


def prediction_schema(families: Sequence[str]) -> pa.Schema:
    """The prediction output's columns, with a bundle version column per family
    (``diagnosis.registry.FAMILY_NAMES``)."""
    return pa.schema(
        [pa.field("system_id", pa.string()), pa.field("cycle_id", pa.int64()), pa.field(PROFILE_COLUMN, pa.string())]
        + [
            f
            for c in COMPONENT_NAMES
            for f in (
                pa.field(f"{c}_level", pa.int64()),
                pa.field(f"{c}_severity", pa.string()),
                pa.field(f"{c}_probability", pa.float64()),  # of the predicted level
                pa.field(f"{c}_nominal_probability", pa.float64()),  # of the healthy level
            )
        ]
        + [
            pa.field("is_anomaly", pa.bool_()),
            pa.field("anomaly_score", pa.float64()),
            pa.field("severity", pa.string()),
            pa.field("confidence", pa.float64()),
            pa.field("anomaly_type", pa.string()),
            pa.field("affected_components", pa.list_(pa.string())),
            pa.field("probability_not_stable", pa.float64()),
            pa.field("novelty_score", pa.float64()),  # 1.0 = the profile's threshold (diagnosis.novelty)
            pa.field("out_of_distribution", pa.bool_()),  # flagged: severity unknown, confidence 0
        ]
        + [pa.field(f"model_version_{f}", pa.string()) for f in families]
    )


def combined_schema(predictions: pa.Schema) -> pa.Schema:
    """Both kinds of rows in one schema, so every batch of the actor pool looks alike."""
    return pa.schema(
        list(predictions)
        + [f for f in ERROR_SCHEMA if f.name not in predictions.names]
        + [pa.field(KIND_COLUMN, pa.string())]
    )


def verdict_arrays(
    verdicts: VerdictColumns,
    versions: Mapping[str, str],
    novelty: np.ndarray | None = None,
    flagged: np.ndarray | None = None,
) -> dict[str, pa.Array]:
    """The prediction columns of a block of verdicts (``diagnosis.voting.diagnose_columns``)
    and their cycles' novelty scores and flags (``diagnosis.profiles.Prepared``; None: the
    profile keeps no novelty model), straight from the arrays: no per-row object is built."""
    n = len(verdicts)
    cols: dict[str, pa.Array] = {}
    rows = np.arange(n)
    for name in COMPONENT_NAMES:
        if name not in verdicts.components:  # a profile without this component: no verdict on it
            cols[f"{name}_level"] = pa.nulls(n, pa.int64())
            cols[f"{name}_severity"] = pa.nulls(n, pa.string())
            cols[f"{name}_probability"] = pa.nulls(n, pa.float64())
            cols[f"{name}_nominal_probability"] = pa.nulls(n, pa.float64())
            continue
        p = verdicts.probabilities[name]
        cols[f"{name}_level"] = pa.array(verdicts.level_values(name), pa.int64())
        cols[f"{name}_severity"] = pa.array(verdicts.level_severities(name), pa.string())
        cols[f"{name}_probability"] = pa.array(p[rows, verdicts.level_index[name]])
        cols[f"{name}_nominal_probability"] = pa.array(p[:, 0])
    cols["is_anomaly"] = pa.array(verdicts.is_anomaly)
    cols["anomaly_score"] = pa.array(verdicts.anomaly_score)
    cols["severity"] = pa.array(verdicts.severity, pa.string())
    cols["confidence"] = pa.array(verdicts.confidence)
    cols["anomaly_type"] = pa.array(verdicts.anomaly_type, pa.string())
    which, component = np.nonzero(verdicts.affected)  # row-major: columns in verdicts.components order
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(which, minlength=n), out=offsets[1:])
    cols["affected_components"] = pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(np.array(verdicts.components, dtype=object)[component], pa.string())
    )
    stable = verdicts.probability_not_stable
    cols["probability_not_stable"] = pa.nulls(n, pa.float64()) if stable is None else pa.array(stable)
    cols["novelty_score"] = pa.nulls(n, pa.float64()) if novelty is None else pa.array(np.round(novelty, 4))
    cols["out_of_distribution"] = pa.nulls(n, pa.bool_()) if flagged is None else pa.array(flagged, pa.bool_())
    for family, version in versions.items():
        cols[f"model_version_{family}"] = pa.repeat(version, n)
    return cols


def scored_table(
    batch: pa.Table,
    profile: str,
    rows: np.ndarray,
    arrays: Mapping[str, pa.Array] | None,
    errors: Mapping[int, SensorDataError],
    default_system_id: str | None,
    schema: pa.Schema,
) -> pa.Table:
    """One row of ``schema`` (``combined_schema``) per row of ``batch`` (cycles of
    ``profile``), in order: its prediction (``arrays``, ``verdict_arrays`` of the batch
    rows ``rows``), or its error."""
    n = batch.num_rows
    cols: dict[str, pa.Array | pa.ChunkedArray] = {
        "system_id": _system_ids(batch, default_system_id),
        "cycle_id": batch["cycle_id"].cast(pa.int64()),
        PROFILE_COLUMN: pa.repeat(pa.scalar(profile, pa.string()), n),
    }
    if arrays is not None and len(rows):
        if len(rows) < n:  # spread the valid rows' values over the batch; null elsewhere
            where = np.zeros(n, dtype=np.int64)
            where[rows] = np.arange(len(rows))
            missing = np.ones(n, dtype=bool)
            missing[rows] = False
            index = pa.array(where, mask=missing)
            arrays = {name: a.take(index) for name, a in arrays.items()}
        cols.update(arrays)
    channel, problem = [None] * n, [None] * n
    kinds = np.full(n, "prediction", dtype=object)
    for i, err in errors.items():
        channel[i], problem[i], kinds[i] = err.channel, err.problem, "error"
    cols["channel"] = pa.array(channel, pa.string())
    cols["problem"] = pa.array(problem, pa.string())
    cols[KIND_COLUMN] = pa.array(kinds, pa.string())
    return pa.Table.from_arrays(
        [cols[f.name] if f.name in cols else pa.nulls(n, f.type) for f in schema], schema=schema
    )


def _system_ids(batch: pa.Table, default: str | None) -> pa.Array | pa.ChunkedArray:
    if "system_id" not in batch.column_names:
        return pa.nulls(batch.num_rows, pa.string()) if default is None else pa.repeat(default, batch.num_rows)
    ids = batch["system_id"].cast(pa.string())
    return ids if default is None else pc.fill_null(ids, default)


class OutputWriter:
    """Writes scored batches to the two outputs: ``predictions/`` and ``errors/`` under
    ``output_dir``, one Parquet file each named ``name``, opened when the first row of
    its kind comes. ``close`` returns the rows written of each kind.

    One writer per write task of the job (``PredictionSink``) and one for the
    benchmark's single-process loop."""

    def __init__(self, output_dir: str, predictions: pa.Schema, name: str | None = None):
        self.fs, self.base = filesystem(output_dir)
        self.name = name or f"part-{uuid.uuid4().hex[:12]}.parquet"
        self.schemas = {"prediction": predictions, "error": ERROR_SCHEMA}
        self.counts = {kind: 0 for kind, _ in KINDS}
        self.writers: dict = {}

    def write(self, scored: pa.Table) -> None:
        import pyarrow.parquet as pq

        for kind, folder in KINDS:
            schema = self.schemas[kind]
            part = scored.filter(pc.equal(scored[KIND_COLUMN], kind)).select(schema.names).cast(schema)
            if not part.num_rows:
                continue
            if kind not in self.writers:
                self.fs.create_dir(f"{self.base}/{folder}", recursive=True)
                self.writers[kind] = pq.ParquetWriter(f"{self.base}/{folder}/{self.name}", schema, filesystem=self.fs)
            self.writers[kind].write_table(part)
            self.counts[kind] += part.num_rows

    def close(self) -> dict[str, int]:
        for writer in self.writers.values():
            writer.close()
        return dict(self.counts)

    def finish(self) -> dict[str, int]:
        """``close``, and leave both outputs existing: an output no row went to gets an
        empty file, so a reader of ``errors/`` finds an empty table, not a missing path."""
        counts = self.close()
        ensure_outputs(self.fs, self.base, self.schemas["prediction"], self.name)
        return counts

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ensure_outputs(fs, base: str, predictions: pa.Schema, name: str) -> None:
    """An empty ``name`` in each output folder that holds no Parquet file."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    for (_, folder), schema in zip(KINDS, (predictions, ERROR_SCHEMA)):
        fs.create_dir(f"{base}/{folder}", recursive=True)
        listing = fs.get_file_info(pafs.FileSelector(f"{base}/{folder}"))
        if not any(i.path.endswith(".parquet") for i in listing):
            pq.write_table(schema.empty_table(), f"{base}/{folder}/{name}", filesystem=fs)


class PredictionSink(Datasink):
    """Ray Data sink of the scored rows: every write task splits its rows into the two
    outputs with its own ``OutputWriter`` (one file per output and task), so writing
    runs in parallel, off the driver. ``counts`` and ``first_write_at`` (the wall-clock
    time the first task finished its files) are set when the write completes."""

    def __init__(self, output_dir: str, predictions: pa.Schema, rows_per_file: int):
        self.output_dir = output_dir
        self.predictions = predictions
        self.rows_per_file = rows_per_file
        self.run = uuid.uuid4().hex[:12]
        self.counts = {kind: 0 for kind, _ in KINDS}
        self.first_write_at: float | None = None

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def write(self, blocks: Iterable[pa.Table], ctx) -> dict:
        writer = OutputWriter(self.output_dir, self.predictions, f"part-{self.run}-{ctx.task_idx:06d}.parquet")
        for block in blocks:
            writer.write(block)
        return {"counts": writer.close(), "written_at": time.time()}

    def on_write_complete(self, write_result) -> None:
        for result in write_result.write_returns:
            for kind, n in result["counts"].items():
                self.counts[kind] += n
        times = [r["written_at"] for r in write_result.write_returns]
        self.first_write_at = min(times) if times else None
        fs, base = filesystem(self.output_dir)
        ensure_outputs(fs, base, self.predictions, f"part-{self.run}-empty.parquet")
