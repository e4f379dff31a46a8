"""What the batch job writes: the two output schemas, ``Diagnosis`` objects
flattened into their columns, and the writer of both Parquet outputs.

Predictions are flat columns (one set per component, then the overall verdict,
then the bundle version of every family) rather than the nested ``Diagnosis``,
so a reader can filter and aggregate them column by column without unnesting.
A rejected row goes to a separate output with the channel at fault and why.

The predictor emits both kinds of row in one table of ``COMBINED_SCHEMA``
(tagged by ``KIND_COLUMN``) so every batch of the actor pool has one schema;
``OutputWriter`` splits them into the two outputs as the batches arrive.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from diagnosis.registry import FAMILY_NAMES
from diagnosis.report import Diagnosis
from hydraulics.components import COMPONENT_NAMES
from hydraulics.validation import SensorDataError

PREDICTIONS_DIR = "predictions"
ERRORS_DIR = "errors"
KIND_COLUMN = "_kind"  # internal column: which output a row goes to

PREDICTION_SCHEMA = pa.schema(
    [pa.field("system_id", pa.string()), pa.field("cycle_id", pa.int64())]
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
    ]
    + [pa.field(f"model_version_{f}", pa.string()) for f in FAMILY_NAMES]
)
ERROR_SCHEMA = pa.schema(
    [
        pa.field("system_id", pa.string()),
        pa.field("cycle_id", pa.int64()),
        pa.field("channel", pa.string()),
        pa.field("problem", pa.string()),
    ]
)
# One schema for both kinds of rows, so every batch of the actor pool looks alike;
# the rows are split into the two outputs after the pool has run.
COMBINED_SCHEMA = pa.schema(
    list(PREDICTION_SCHEMA)
    + [f for f in ERROR_SCHEMA if f.name not in PREDICTION_SCHEMA.names]
    + [pa.field(KIND_COLUMN, pa.string())]
)


def diagnosis_columns(diagnoses: Sequence[Diagnosis]) -> dict[str, list]:
    """The prediction columns of ``diagnoses``, one value per diagnosis."""
    verdicts = [d.prediction for d in diagnoses]
    cols: dict[str, list] = {}
    for name in COMPONENT_NAMES:
        comps = [v.components[name] for v in verdicts]
        cols[f"{name}_level"] = [c.level for c in comps]
        cols[f"{name}_severity"] = [c.severity for c in comps]
        cols[f"{name}_probability"] = [c.probabilities[str(c.level)] for c in comps]
        cols[f"{name}_nominal_probability"] = [c.nominal_probability for c in comps]
    cols["is_anomaly"] = [v.is_anomaly for v in verdicts]
    cols["anomaly_score"] = [v.anomaly_score for v in verdicts]
    cols["severity"] = [v.severity for v in verdicts]
    cols["confidence"] = [v.confidence for v in verdicts]
    cols["anomaly_type"] = [v.anomaly_type for v in verdicts]
    cols["affected_components"] = [v.affected_components for v in verdicts]
    cols["probability_not_stable"] = [
        None if v.steady_state is None else v.steady_state.probability_not_stable for v in verdicts
    ]
    for f in FAMILY_NAMES:
        cols[f"model_version_{f}"] = [d.model_versions.get(f) for d in diagnoses]
    return cols


def scored_table(
    batch: pa.Table,
    rows: np.ndarray,
    diagnoses: Sequence[Diagnosis],
    errors: Mapping[int, SensorDataError],
    default_system_id: str | None,
) -> pa.Table:
    """One row of ``COMBINED_SCHEMA`` per row of ``batch``, in order: its prediction
    (``diagnoses`` are those of the batch rows ``rows``), or its error."""
    n = batch.num_rows
    all_valid = len(rows) == n
    rows_list = rows.tolist()

    def spread(values: list) -> list:  # values of the valid rows -> one per row
        if all_valid:
            return values
        out = [None] * n
        for i, v in zip(rows_list, values):
            out[i] = v
        return out

    cols: dict[str, list] = {
        "system_id": _system_ids(batch, default_system_id),
        "cycle_id": batch["cycle_id"].cast(pa.int64()).to_pylist(),
    }
    cols.update({name: spread(values) for name, values in diagnosis_columns(diagnoses).items()})
    cols["channel"] = [None] * n
    cols["problem"] = [None] * n
    kinds = ["prediction"] * n
    for i, err in errors.items():
        cols["channel"][i] = err.channel
        cols["problem"][i] = err.problem
        kinds[i] = "error"
    cols[KIND_COLUMN] = kinds
    return pa.Table.from_pydict({f.name: cols.get(f.name, [None] * n) for f in COMBINED_SCHEMA}, schema=COMBINED_SCHEMA)


def _system_ids(batch: pa.Table, default: str | None) -> list[str | None]:
    if "system_id" not in batch.column_names:
        return [default] * batch.num_rows
    ids = batch["system_id"].cast(pa.string()).to_pylist()
    return [default if s is None else s for s in ids]


def _select(batch: pa.Table, kind: str, schema: pa.Schema) -> pa.Table:
    return batch.filter(pc.equal(batch[KIND_COLUMN], kind)).select(schema.names).cast(schema)


def _filesystem(uri: str):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), str(Path(uri).resolve()))


class OutputWriter:
    """Writes the two outputs as scored batches arrive: ``predictions/`` and ``errors/``
    under ``output_dir``, one Parquet file each (a new name per run), empty if no row
    of that kind came. Used by the job (on the driver, streaming the actor pool's
    small result rows) and by the benchmark's single-process loop alike."""

    OUTPUTS = (("prediction", PREDICTIONS_DIR, PREDICTION_SCHEMA), ("error", ERRORS_DIR, ERROR_SCHEMA))

    def __init__(self, output_dir: str):
        import pyarrow.parquet as pq

        fs, base = _filesystem(output_dir)
        name = f"part-{uuid.uuid4().hex[:12]}.parquet"
        self.counts = {kind: 0 for kind, _, _ in self.OUTPUTS}
        self.writers = {}
        for kind, folder, schema in self.OUTPUTS:
            fs.create_dir(f"{base}/{folder}", recursive=True)
            self.writers[kind] = pq.ParquetWriter(f"{base}/{folder}/{name}", schema, filesystem=fs)

    def write(self, scored: pa.Table) -> None:
        for kind, _, schema in self.OUTPUTS:
            part = _select(scored, kind, schema)
            if part.num_rows:
                self.writers[kind].write_table(part)
                self.counts[kind] += part.num_rows

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
