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

import functools
import json
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import typer

from configs.settings import Settings, get_settings
from diagnosis.voting import combine
from diagnosis.registry import FAMILY_NAMES
from diagnosis.store import LATEST, BundleError, ModelStore, check_feature_set
from hydraulics.channels import CHANNELS
from hydraulics.components import COMPONENT_NAMES
from hydraulics.features import FeatureSet, extract, extract_cycles, get_feature_set
from hydraulics.validation import SensorDataError

PREDICTIONS_DIR = "predictions"
ERRORS_DIR = "errors"
SUMMARY_FILE = "summary.json"
_KIND = "_kind"  # internal column: which output a row goes to
# CPUs asked for by the read tasks: they are short and mostly I/O, so several can
# share the CPU that the actor pool leaves free (see _actor_cpus).
READ_CPUS = 0.25

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
        ds = ray.data.read_parquet(source, columns=[c for c in wanted if c in schema_names], num_cpus=READ_CPUS)
    elif fmt == "csv":
        # Channel cells are JSON arrays (see hydraulics.loaders); keep them and ids as text.
        types = {c: pa.string() for c in ("system_id", *channels)}
        ds = ray.data.read_csv(source, convert_options=pacsv.ConvertOptions(column_types=types), num_cpus=READ_CPUS)
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


def _keep_cycles(batch: pa.Table, keep: pa.Array) -> pa.Table:
    return batch.filter(pc.is_in(batch["cycle_id"].cast(pa.int64()), value_set=keep))


def _parquet_columns(source: str) -> list[str]:
    import pyarrow.dataset as pads

    try:
        return pads.dataset(source if "://" in source else str(Path(source).resolve()), format="parquet").schema.names
    except (FileNotFoundError, pa.ArrowInvalid) as exc:
        raise BatchInputError(f"{source}: cannot open as Parquet ({exc})") from exc


# --------------------------------------------------------------------------- rows -> cycles


def _list_column(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A list<float> column as (length per row, -1 where the cell is null; start of each
    row in the flat values; the flat float64 values). Null samples inside a list become
    NaN, which validation then rejects by name."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_fixed_size_list(arr.type):
        arr = arr.cast(pa.list_(arr.type.value_type))
    lengths = pc.list_value_length(arr).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(arr).cast(pa.float64()).to_numpy(zero_copy_only=False)
    starts = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths) > 1:
        np.cumsum(np.maximum(lengths[:-1], 0), out=starts[1:])
    return lengths, starts, flat


def _list_rows(column: pa.ChunkedArray) -> list[np.ndarray | None]:
    """A list<float> column as one array per row; None where the cell is null."""
    lengths, starts, flat = _list_column(column)
    return [None if n < 0 else flat[s:s + n] for n, s in zip(lengths.tolist(), starts.tolist())]


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
            raise BatchInputError(f"channel column {name} has type {column.type}, expected list<double> "
                                  "(Parquet) or a JSON array string (CSV)")
        for i, v in enumerate(values):
            if v is not None:
                cycles[i][name] = v
    return cycles, errors


# --------------------------------------------------------------------------- the actor


def pin_threads(bundles: dict, threads: int) -> None:
    """Make every model of ``bundles`` (and this process's BLAS/OpenMP pools) use ``threads`` threads.

    Bundles loaded from disk otherwise predict on every core: CatBoost's
    ``predict_proba`` defaults to all cores, XGBoost's loaded booster likewise, and
    numpy's BLAS (the adaptive family's MLP) starts one thread per core. In an actor
    pool that oversubscribes the CPUs the pool was given; in a single-process loop
    it makes the "single process" quietly use the whole machine.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)  # process-wide, for the rest of its life
    for bundle in bundles.values():
        for est in getattr(bundle.model, "estimators", {}).values():
            module = type(est).__module__
            if module.startswith("catboost"):
                est.predict_proba = functools.partial(type(est).predict_proba, est, thread_count=threads)
            elif module.startswith("xgboost"):
                est.set_params(n_jobs=threads)
            elif hasattr(est, "n_jobs"):
                est.n_jobs = threads


class EnsemblePredictor:
    """Actor-pool UDF: loads the four bundles once, then diagnoses batch after batch.

    ``threads`` pins every model library to that many threads (one per actor: the
    pool's parallelism is the number of actors).
    """

    def __init__(self, store_uri: str, versions: dict[str, str], feature_set: str,
                 weights: dict[str, float], threshold: float, default_system_id: str | None,
                 threads: int = 1):
        store = ModelStore(store_uri)
        self.bundles = {f: store.load(f, v) for f, v in versions.items()}
        pin_threads(self.bundles, threads)
        self.feature_set = get_feature_set(feature_set)
        self.n_features = len(self.feature_set.feature_names())
        self.weights = weights
        self.threshold = threshold
        self.default_system_id = default_system_id

    def features(self, batch: pa.Table) -> tuple[np.ndarray, np.ndarray, dict[int, SensorDataError]]:
        """Feature rows of the valid cycles (in batch order), their row numbers, and the
        errors of the others by row number.

        Rows of one common shape with plausible values are converted as one block
        (``fast_block``); the rest take the request path one by one, exactly as the
        online ensemble does, so a bad row gets the same error as over HTTP.
        """
        n = batch.num_rows
        X = np.empty((n, self.n_features))
        valid = np.zeros(n, dtype=bool)
        errors: dict[int, SensorDataError] = {}
        fast, block = fast_block(batch, self.feature_set)
        if fast.any():
            try:
                X[fast] = extract(block, self.feature_set)
                valid |= fast
            except SensorDataError:  # e.g. too short: every row on the per-row path names it
                fast[:] = False
        slow = np.flatnonzero(~fast)
        if len(slow):
            part = batch if len(slow) == n else batch.take(pa.array(slow))
            cycles, bad = batch_to_cycles(part, self.feature_set.channels)
            for k, err in bad.items():
                errors[int(slow[k])] = err
            todo = [k for k in range(len(cycles)) if k not in bad]
            if todo:
                Xs, feature_errors = extract_cycles([cycles[k] for k in todo], self.feature_set)
                for j, err in feature_errors.items():
                    errors[int(slow[todo[j]])] = err
                ok = slow[[todo[j] for j in range(len(todo)) if j not in feature_errors]]
                X[ok] = Xs
                valid[ok] = True
        rows = np.flatnonzero(valid)
        return X[rows], rows, errors

    def __call__(self, batch: pa.Table) -> pa.Table:
        X, rows, errors = self.features(batch)
        diags: list[dict] = []
        if len(rows):
            by_family = {f: b.model.predict_proba(X) for f, b in self.bundles.items()}
            diags = combine(by_family, self.weights, self.threshold)
        return self._output(batch, rows, diags, errors)

    def _output(self, batch: pa.Table, rows: np.ndarray, diags: list[dict],
                errors: dict[int, SensorDataError]) -> pa.Table:
        """One output row per input row, in order: a prediction, or the error."""
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
            "system_id": self._system_ids(batch),
            "cycle_id": batch["cycle_id"].cast(pa.int64()).to_pylist(),
        }
        for name in COMPONENT_NAMES:
            comps = [d["components"][name] for d in diags]
            cols[f"{name}_level"] = spread([c["level"] for c in comps])
            cols[f"{name}_severity"] = spread([c["severity"] for c in comps])
            cols[f"{name}_probability"] = spread([c["probabilities"][str(c["level"])] for c in comps])
            cols[f"{name}_nominal_probability"] = spread([c["nominal_probability"] for c in comps])
        for key in ("is_anomaly", "anomaly_score", "severity", "confidence", "anomaly_type", "affected_components"):
            cols[key] = spread([d[key] for d in diags])
        cols["probability_not_stable"] = spread(
            [d.get("steady_state", {}).get("probability_not_stable") for d in diags])
        for f, b in self.bundles.items():
            cols[f"model_version_{f}"] = spread([b.version] * len(diags))
        cols["channel"] = [None] * n
        cols["problem"] = [None] * n
        kinds = ["prediction"] * n
        for i, err in errors.items():
            cols["channel"][i] = err.channel
            cols["problem"][i] = err.problem
            kinds[i] = "error"
        cols[_KIND] = kinds
        return pa.Table.from_pydict({f.name: cols.get(f.name, [None] * n) for f in _COMBINED_SCHEMA},
                                    schema=_COMBINED_SCHEMA)

    def _system_ids(self, batch: pa.Table) -> list[str | None]:
        if "system_id" not in batch.column_names:
            return [self.default_system_id] * batch.num_rows
        ids = batch["system_id"].cast(pa.string()).to_pylist()
        return [self.default_system_id if s is None else s for s in ids]


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

    def __enter__(self) -> "OutputWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _actor_cpus(workers: int) -> float:
    """CPUs each actor asks Ray for: one, unless a pool of ``workers`` actors would leave
    the cluster less than one CPU; then an equal share of all but one. The operators
    upstream of the pool (listing files, reading, cutting blocks) ask for up to one
    CPU each, and a pool holding every CPU for its whole life starves them: the job
    hangs. Actors are pinned to one thread either way; this is only Ray's bookkeeping."""
    import ray

    total = float(ray.cluster_resources().get("CPU", workers + 1))
    return max(0.1, min(1.0, (total - 1.0) / workers))


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
    # Blocks of one batch each, so that a single large file is spread over the whole pool.
    # In Ray 2.60 this is a streaming split (no all-to-all barrier), run in the read tasks.
    ds = read_cycles(source, channels, cycles).repartition(target_num_rows_per_block=batch_size)
    if "system_id" not in ds.schema().names and system_id is None:
        raise BatchInputError(f"{source} has no system_id column; pass --system-id to name the system")
    scored = ds.map_batches(
        EnsemblePredictor,
        fn_constructor_kwargs={"store_uri": settings.model_store_uri, "versions": versions,
                               "feature_set": settings.feature_set, "weights": dict(settings.ensemble_weights),
                               "threshold": settings.anomaly_threshold, "default_system_id": system_id,
                               "threads": 1},
        batch_size=batch_size, batch_format="pyarrow", num_cpus=_actor_cpus(workers),
        # A fixed pool: all actors load their models at once, at the start, instead of
        # the pool growing mid-run. _actor_cpus leaves the upstream tasks a CPU.
        compute=ray.data.ActorPoolStrategy(size=workers),
    )
    # The scored rows are small (no raw samples): stream them to the driver and write
    # both outputs in this one pass, instead of materialising and re-reading the result.
    with OutputWriter(output_dir) as out:
        for part in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
            out.write(part)
    n_pred, n_err = out.counts["prediction"], out.counts["error"]
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
