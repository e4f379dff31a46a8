"""Diagnose stored cycles in bulk with Ray Data and write the answers to Parquet.

    read Parquet / CSV / UCI folder -> features + four models + combine (actor pool)
    -> <output>/predictions/*.parquet and <output>/errors/*.parquet (+ summary.json)

Locally:       python -m pipelines.batch_predict --source cycles.parquet --output out/
On a cluster:  ray job submit --working-dir . -- python -m pipelines.batch_predict \
                   --source s3://bucket/cycles.parquet --output s3://bucket/hdx/predictions

Each row is diagnosed by exactly the code the online ``DiagnosisEnsemble`` runs
(``extract_cycles`` -> every family's ``predict_proba`` -> ``combine`` with the
configured weights and threshold), so a cycle gets the same answer in batch as
over HTTP. A row that fails validation is written to the error output with the
channel at fault and why; it never aborts the job and never vanishes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import typer

from configs.settings import Settings, get_settings
from diagnosis.ensemble import combine
from diagnosis.families import FAMILY_NAMES
from diagnosis.store import LATEST, BundleError, ModelStore, check_feature_set
from hydraulics.channels import CHANNELS
from hydraulics.components import COMPONENT_NAMES
from hydraulics.features import extract_cycles, get_feature_set
from hydraulics.validation import SensorDataError

PREDICTIONS_DIR = "predictions"
ERRORS_DIR = "errors"
SUMMARY_FILE = "summary.json"
_KIND = "_kind"  # internal column: which output a row goes to

PREDICTION_SCHEMA = pa.schema(
    [pa.field("system_id", pa.string()), pa.field("cycle_id", pa.int64())]
    + [f for c in COMPONENT_NAMES for f in (
        pa.field(f"{c}_level", pa.int64()),
        pa.field(f"{c}_severity", pa.string()),
        pa.field(f"{c}_probability", pa.float64()),          # of the predicted level
        pa.field(f"{c}_nominal_probability", pa.float64()),  # of the healthy level
    )]
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
ERROR_SCHEMA = pa.schema([
    pa.field("system_id", pa.string()),
    pa.field("cycle_id", pa.int64()),
    pa.field("channel", pa.string()),
    pa.field("problem", pa.string()),
])
# One schema for both kinds of rows, so every batch of the actor pool looks alike;
# the rows are split into the two outputs after the pool has run.
_COMBINED_SCHEMA = pa.schema(
    list(PREDICTION_SCHEMA) + [f for f in ERROR_SCHEMA if f.name not in PREDICTION_SCHEMA.names]
    + [pa.field(_KIND, pa.string())]
)


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
        fs, path = pafs.FileSystem.from_uri(source) if "://" in source else (
            pafs.LocalFileSystem(), str(Path(source).resolve()))
        names = [i.path for i in fs.get_file_info(pafs.FileSelector(path)) if i.type == pafs.FileType.File]
    except (FileNotFoundError, OSError, pa.ArrowInvalid):
        names = []
    for fmt in ("parquet", "csv"):
        if any(n.lower().endswith("." + fmt) for n in names):
            return fmt
    raise BatchInputError(
        f"{source}: expected a .parquet or .csv table (a file, or a directory of them, local or URI) "
        "or a UCI folder (<CHANNEL>.txt files)")


def read_cycles(source: str, channels: Sequence[str], cycles: Sequence[int] | None = None):
    """A Ray Dataset with ``cycle_id``, maybe ``system_id``, and one column per channel.

    Tables are read by Ray Data in parallel (only the columns we need); a UCI
    folder is loaded by ``hydraulics.loaders`` (its text matrices are not a
    format Ray Data reads) and handed over as Arrow.
    """
    import pyarrow.csv as pacsv
    import ray

    fmt = source_format(source)
    if fmt == "parquet":
        schema_names = _parquet_columns(source)
        wanted = ["cycle_id", "system_id", *channels]
        ds = ray.data.read_parquet(source, columns=[c for c in wanted if c in schema_names])
    elif fmt == "csv":
        # Channel cells are JSON arrays (see hydraulics.loaders); keep them and ids as text.
        types = {c: pa.string() for c in ("system_id", *channels)}
        ds = ray.data.read_csv(source, convert_options=pacsv.ConvertOptions(column_types=types))
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
        ds = ds.map_batches(_keep_cycles, fn_kwargs={"keep": keep}, batch_format="pyarrow")
    return ds


def _keep_cycles(batch: pa.Table, keep: pa.Array) -> pa.Table:
    return batch.filter(pc.is_in(batch["cycle_id"].cast(pa.int64()), value_set=keep))


def _parquet_columns(source: str) -> list[str]:
    import pyarrow.dataset as pads

    try:
        return pads.dataset(source if "://" in source else str(Path(source).resolve()), format="parquet").schema.names
    except (FileNotFoundError, pa.ArrowInvalid) as exc:
        raise BatchInputError(f"{source}: cannot open as Parquet ({exc})") from exc


# --------------------------------------------------------------------------- rows -> cycles


def _list_rows(column: pa.ChunkedArray) -> list[np.ndarray | None]:
    """A list<float> column as one array per row; None where the cell is null."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_fixed_size_list(arr.type):
        arr = arr.cast(pa.list_(arr.type.value_type))
    lengths = pc.list_value_length(arr).fill_null(-1).to_numpy(zero_copy_only=False)
    # Null samples inside a list become NaN here, which validation then rejects by name.
    flat = pc.list_flatten(arr).cast(pa.float64()).to_numpy(zero_copy_only=False)
    out: list[np.ndarray | None] = []
    start = 0
    for n in lengths:
        if n < 0:
            out.append(None)
            continue
        out.append(flat[start:start + n])
        start += n
    return out


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
        elif pa.types.is_list(column.type) or pa.types.is_large_list(column.type) \
                or pa.types.is_fixed_size_list(column.type):
            values = _list_rows(column)
        else:
            raise BatchInputError(f"channel column {name} has type {column.type}, expected list<double> "
                                  "(Parquet) or a JSON array string (CSV)")
        for i, v in enumerate(values):
            if v is not None:
                cycles[i][name] = v
    return cycles, errors


# --------------------------------------------------------------------------- the actor


class EnsemblePredictor:
    """Actor-pool UDF: loads the four bundles once, then diagnoses batch after batch."""

    def __init__(self, store_uri: str, versions: dict[str, str], feature_set: str,
                 weights: dict[str, float], threshold: float, default_system_id: str | None):
        store = ModelStore(store_uri)
        self.bundles = {f: store.load(f, v) for f, v in versions.items()}
        self.feature_set = get_feature_set(feature_set)
        self.weights = weights
        self.threshold = threshold
        self.default_system_id = default_system_id

    def __call__(self, batch: pa.Table) -> pa.Table:
        cycles, errors = batch_to_cycles(batch, self.feature_set.channels)
        cycle_ids = batch["cycle_id"].cast(pa.int64()).to_pylist()
        system_ids = self._system_ids(batch)
        todo = [i for i in range(len(cycles)) if i not in errors]
        predictions: dict[int, dict] = {}
        if todo:
            X, feature_errors = extract_cycles([cycles[i] for i in todo], self.feature_set)
            for k, err in feature_errors.items():
                errors[todo[k]] = err
            valid = [todo[k] for k in range(len(todo)) if k not in feature_errors]
            if valid:
                by_family = {f: b.model.predict_proba(X) for f, b in self.bundles.items()}
                for i, diag in zip(valid, combine(by_family, self.weights, self.threshold)):
                    predictions[i] = diag
        rows = []
        for i in range(len(cycles)):
            base = {"system_id": system_ids[i], "cycle_id": cycle_ids[i]}
            if i in predictions:
                rows.append({**base, **self._prediction_row(predictions[i]), _KIND: "prediction"})
            else:
                err = errors[i]
                rows.append({**base, "channel": err.channel, "problem": err.problem, _KIND: "error"})
        return pa.Table.from_pylist(rows, schema=_COMBINED_SCHEMA)

    def _system_ids(self, batch: pa.Table) -> list[str | None]:
        if "system_id" not in batch.column_names:
            return [self.default_system_id] * batch.num_rows
        ids = batch["system_id"].cast(pa.string()).to_pylist()
        return [self.default_system_id if s is None else s for s in ids]

    def _prediction_row(self, diag: dict) -> dict:
        row = {}
        for name, comp in diag["components"].items():
            row[f"{name}_level"] = comp["level"]
            row[f"{name}_severity"] = comp["severity"]
            row[f"{name}_probability"] = comp["probabilities"][str(comp["level"])]
            row[f"{name}_nominal_probability"] = comp["nominal_probability"]
        row.update({k: diag[k] for k in ("is_anomaly", "anomaly_score", "severity", "confidence",
                                         "anomaly_type", "affected_components")})
        row["probability_not_stable"] = diag.get("steady_state", {}).get("probability_not_stable")
        row.update({f"model_version_{f}": b.version for f, b in self.bundles.items()})
        return row


def _select(batch: pa.Table, kind: str, schema: pa.Schema) -> pa.Table:
    return batch.filter(pc.equal(batch[_KIND], kind)).select(schema.names).cast(schema)


# --------------------------------------------------------------------------- the job


def resolve_versions(settings: Settings, model_version: str = LATEST) -> dict[str, str]:
    """Pin every family to one concrete bundle before the job starts: all actors then
    use the same models even if someone trains a new LATEST mid-job, and a missing or
    mismatched bundle fails here with its reason instead of inside every actor."""
    store = ModelStore(settings.model_store_uri)
    versions = {}
    for family in FAMILY_NAMES:
        manifest = store.manifest(family, model_version)
        check_feature_set(manifest)
        if manifest["feature_set"]["name"] != settings.feature_set:
            raise BundleError(
                f"{family} bundle {manifest['version']} uses feature set {manifest['feature_set']['name']}, "
                f"but HDX_FEATURE_SET is {settings.feature_set}")
        versions[family] = manifest["version"]
    return versions


def _write(ds, n_rows: int, uri: str, schema: pa.Schema) -> None:
    if n_rows:
        ds.write_parquet(uri)
        return
    # Ray writes no file for an empty dataset; an empty file keeps readers' code simple.
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, path = pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), str(Path(uri).resolve()))
    fs.create_dir(path, recursive=True)
    pq.write_table(schema.empty_table(), f"{path}/empty.parquet", filesystem=fs)


def run_batch_predict(source: str, output_dir: str, model_version: str = LATEST, settings: Settings | None = None,
                      batch_size: int | None = None, workers: int | None = None, system_id: str | None = None,
                      cycles: Sequence[int] | None = None) -> dict:
    """Diagnose every cycle in ``source``; write predictions and rejected rows under ``output_dir``.

    Returns the summary (also written to ``<output_dir>/summary.json``).
    """
    import ray

    settings = settings or get_settings()
    batch_size = batch_size or settings.batch_predict_batch_size
    workers = workers or settings.batch_predict_workers
    if batch_size < 1 or workers < 1:
        raise ValueError(f"batch_size and workers must be at least 1 (got {batch_size}, {workers})")
    source, output_dir = str(source), str(output_dir).rstrip("/")
    versions = resolve_versions(settings, model_version)
    if not ray.is_initialized():
        ray.init()  # joins the cluster named by RAY_ADDRESS (ray job submit), else starts a local one
    ray.data.DataContext.get_current().enable_progress_bars = True

    started = time.perf_counter()
    channels = get_feature_set(settings.feature_set).channels
    # Blocks of one batch each: a single large file would otherwise arrive as one block
    # that one actor works through alone while the rest of the pool idles.
    ds = read_cycles(source, channels, cycles).repartition(target_num_rows_per_block=batch_size)
    if "system_id" not in ds.schema().names and system_id is None:
        raise BatchInputError(f"{source} has no system_id column; pass --system-id to name the system")
    scored = ds.map_batches(
        EnsemblePredictor,
        fn_constructor_kwargs={"store_uri": settings.model_store_uri, "versions": versions,
                               "feature_set": settings.feature_set, "weights": dict(settings.ensemble_weights),
                               "threshold": settings.anomaly_threshold, "default_system_id": system_id},
        batch_size=batch_size, batch_format="pyarrow", num_cpus=1,
        # Start with one actor and let Ray Data grow the pool: starting all `workers` at once
        # can take every CPU of a small cluster and starve the read tasks that feed them.
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
    ).materialize()  # run the models once; both outputs are cut from this result
    # The result is small (no raw samples): count the two kinds on the driver.
    kinds = pc.value_counts(pa.concat_arrays(
        [b[_KIND].combine_chunks() for b in ray.get(scored.to_arrow_refs()) if b.num_rows]
        or [pa.array([], pa.string())])).to_pylist()
    counts = {k["values"]: k["counts"] for k in kinds}
    n_pred, n_err = counts.get("prediction", 0), counts.get("error", 0)
    for kind, n, name, schema in (("prediction", n_pred, PREDICTIONS_DIR, PREDICTION_SCHEMA),
                                  ("error", n_err, ERRORS_DIR, ERROR_SCHEMA)):
        part = scored.map_batches(_select, fn_kwargs={"kind": kind, "schema": schema}, batch_format="pyarrow")
        _write(part, n, f"{output_dir}/{name}", schema)
    wall = time.perf_counter() - started

    summary = {
        "source": source,
        "output_dir": output_dir,
        "rows_in": n_pred + n_err,
        "predicted": n_pred,
        "rejected": n_err,
        "wall_seconds": round(wall, 3),
        "cycles_per_s": round((n_pred + n_err) / wall, 1) if wall > 0 else None,
        "model_versions": versions,
        "feature_set": settings.feature_set,
        "batch_size": batch_size,
        "workers": workers,
    }
    _write_summary(f"{output_dir}/{SUMMARY_FILE}", summary)
    return summary


def _write_summary(uri: str, summary: dict) -> None:
    import fsspec

    with fsspec.open(uri, "w") as f:
        f.write(json.dumps(summary, indent=2))


def format_summary(summary: dict) -> str:
    return (f"rows in: {summary['rows_in']}  predicted: {summary['predicted']}  rejected: {summary['rejected']}  "
            f"throughput: {summary['cycles_per_s']} cycles/s  wall: {summary['wall_seconds']} s\n"
            f"predictions: {summary['output_dir']}/{PREDICTIONS_DIR}/  errors: {summary['output_dir']}/{ERRORS_DIR}/  "
            f"models: {summary['model_versions']}")


def parse_cycles(spec: str | None) -> list[int] | None:
    """``"0-99,150"`` -> [0, ..., 99, 150]."""
    if not spec:
        return None
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            out.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
        except ValueError:
            raise typer.BadParameter(f"{part!r}: expected N or N-M") from None
    return out


def main(
    source: str = typer.Option(..., help="cycles: a .parquet/.csv file or URI, or a UCI folder"),
    output: str = typer.Option(..., help="output directory or URI (predictions/, errors/, summary.json)"),
    model_version: str = typer.Option(LATEST, help="bundle version of all four families, or 'latest'"),
    system_id: str = typer.Option(None, help="system id for inputs without a system_id column"),
    batch_size: int = typer.Option(0, help="cycles per model call (default: settings.batch_predict_batch_size)"),
    workers: int = typer.Option(0, help="max actors in the pool (default: settings.batch_predict_workers)"),
    cycles: str = typer.Option(None, help="only these cycle ids, e.g. '0-99,150'"),
    store_uri: str = typer.Option("", help="model store URI (default from settings)"),
) -> None:
    settings = Settings(model_store_uri=store_uri) if store_uri else get_settings()
    summary = run_batch_predict(source, output, model_version, settings, batch_size or None, workers or None,
                                system_id, parse_cycles(cycles))
    print(format_summary(summary))


if __name__ == "__main__":
    # Run through the importable module, not __main__: Ray pickles the UDFs by
    # reference and workers must import them as pipelines.batch_predict.
    from pipelines.batch_predict import main as _main

    typer.run(_main)
