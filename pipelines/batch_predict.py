"""Diagnose stored cycles in bulk with Ray Data and write the answers to Parquet.

    read Parquet / CSV / UCI folder -> features + four models + combine_columns (actor pool)
    -> write tasks: <output>/predictions/*.parquet and <output>/errors/*.parquet (+ summary.json)

Locally:       python -m pipelines.batch_predict --source cycles.parquet --output out/
On a cluster:  ray job submit --working-dir . -- python -m pipelines.batch_predict \
                   --source s3://bucket/cycles.parquet --output s3://bucket/hdx/predictions

An input may mix equipment profiles: a ``profile`` column names each row's (rows
without one, and inputs without the column, are ``--profile``'s, default the
settings' ``default_profile``). The driver reads that column first, pins a version
of every profile it names, and each actor holds all of them; a row naming a
profile with no trained models is written to the error output with the reason.

This module is only the job: it pins the bundle versions, builds the Ray Data
plan and writes the summary. Reading and Arrow conversion are in
``pipelines.cycle_reader``, the actor that diagnoses each batch in
``pipelines.ensemble_predictor``, and the output columns and writer in
``pipelines.prediction_output``.

Each row is diagnosed by exactly the code the online ``DiagnosisEnsemble`` runs
(``extract_cycles`` -> every family's ``predict_proba`` -> the combination of
``diagnosis.voting``, ``combine_columns``, which ``diagnose_answers`` builds its
``Diagnosis`` objects from, with the configured weights and threshold), so a cycle
gets the same answer in batch as over HTTP. The batch job keeps the combination's
columns: no per-row object is built between the models and the Parquet files.
A row that fails validation is written to the error output
with the channel at fault and why; it never aborts the job and never vanishes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import typer

from configs.settings import Settings, get_settings
from diagnosis.profiles import ProfileError
from diagnosis.registry import FAMILY_NAMES, ensemble_weights
from diagnosis.store import LATEST, BundleError, ModelStore, check_feature_set
from pipelines.cycle_reader import BatchInputError, profile_names, read_cycles
from pipelines.ensemble_predictor import EnsemblePredictor, load_bundles
from pipelines.prediction_output import ERRORS_DIR, PREDICTIONS_DIR, PredictionSink, prediction_schema

SUMMARY_FILE = "summary.json"
# Rows per output file (at least; Ray Data hands each write task this many): fewer,
# larger files than one per batch, and still the first file soon after the pool starts.
ROWS_PER_FILE = 5000
# Batches per block handed to an actor. Every block costs the driver and the object
# store the same bookkeeping whatever its size, so blocks of one batch (200 per 100,000
# rows) made the driver one of the job's largest consumers of CPU; five (40 blocks) keep
# that down and still spread one 10,000-row file over four actors. An input of fewer
# blocks than actors leaves some idle. Figures: docs/bench_batch.md.
BATCHES_PER_BLOCK = 5
# Actors per write task running at once. A write costs about 5 µs a row against about
# 190 µs in an actor, and each concurrent write task runs in a worker process of its own
# (they ask for no CPU, so Ray's CPU count does not bound them): starting one costs
# about 1–2 s of CPU. Unbounded, a 2-actor job of 100,000 rows started five of them.
ACTORS_PER_WRITER = 8


def resolve_versions(settings: Settings, model_version: str = LATEST, profile: str | None = None) -> dict[str, str]:
    """Pin every family to the profile's version before the job starts: all actors then
    use the same models even if someone trains a new version mid-job, and a missing or
    mismatched bundle fails here with its reason instead of inside every actor."""
    store = ModelStore(settings.model_store_uri).for_profile(profile or settings.default_profile)
    version = store.resolve_profile_version(model_version)
    versions = {}
    for family in FAMILY_NAMES:
        manifest = store.manifest(family, version)
        check_feature_set(manifest)
        versions[family] = manifest["version"]
    return versions


def parse_versions(spec: str, default_profile: str) -> dict[str, str]:
    """``--model-version``: ``latest``, a version of the default profile, or
    ``PROFILE=VERSION[,PROFILE=VERSION...]``; a profile not named gets its latest."""
    if "=" not in spec:
        return {default_profile: spec or LATEST}
    out = {}
    for part in spec.split(","):
        name, sep, version = (x.strip() for x in part.partition("="))
        if not sep or not name or not version:
            raise typer.BadParameter(f"{part!r}: expected PROFILE=VERSION")
        out[name] = version
    return out


def pin_profiles(
    source: str, settings: Settings, model_version: str = LATEST, profile: str | None = None
) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """The versions pinned for every profile the job needs (``{profile: {family: version}}``)
    and the profiles named by the input's rows that cannot be served, with why.

    The default profile is needed when the input has no ``profile`` column or some rows
    name none; a problem with it, or with a version asked for by name, stops the job
    here. An untrained profile that rows name is a reason to reject those rows (the
    others are still diagnosed)."""
    default = profile or settings.default_profile
    wanted = parse_versions(model_version, default)
    names, some_unnamed = profile_names(source) or ([], True)
    unused = sorted(set(wanted) - set(names) - ({default} if some_unnamed else set()))
    if unused and "=" in model_version:
        raise BatchInputError(
            f"--model-version names {unused}, but no row of {source} is of that profile "
            f"(its rows are of {sorted(set(names) | ({default} if some_unnamed else set()))})"
        )
    pinned, rejected = {}, {}
    if some_unnamed:
        pinned[default] = resolve_versions(settings, wanted.get(default, LATEST), default)
    for name in names:
        if name in pinned:
            continue
        try:
            pinned[name] = resolve_versions(settings, wanted.get(name, LATEST), name)
        except (ProfileError, BundleError) as exc:
            if wanted.get(name, LATEST) != LATEST:
                raise  # a version asked for by name that does not exist is the caller's mistake
            rejected[name] = str(exc)
    return pinned, rejected


def _actor_cpus(workers: int) -> float:
    """CPUs each actor asks Ray for: one, unless a pool of ``workers`` actors would leave
    less than one CPU of what is free now (a Serve application on the same cluster holds
    the rest); then an equal share of all but one. Ray Data's file listing asks for one
    whole CPU (Ray 2.60 has no option for it) and the read tasks a quarter each, and a
    pool holding every free CPU for its whole life starves them: the job hangs. (On a
    cluster whose free CPUs are split across nodes into pieces under one, the listing
    still cannot be placed; give a node one free CPU.) Actors are pinned to one thread
    either way; this is only Ray's bookkeeping."""
    import ray

    free = float(ray.available_resources().get("CPU", ray.cluster_resources().get("CPU", workers + 1)))
    return max(0.1, min(1.0, (free - 1.0) / workers))


def _writers(workers: int) -> int:
    return max(1, workers // ACTORS_PER_WRITER)


def plan(
    source: str,
    settings: Settings,
    pinned: dict[str, dict[str, str]],
    weights: dict[str, float],
    batch_size: int,
    workers: int,
    system_id: str | None = None,
    cycles: Sequence[int] | None = None,
    profile: str | None = None,
    rejected: dict[str, str] | None = None,
):
    """The Ray Dataset of scored rows (``prediction_output.combined_schema``), not yet run:
    every profile of ``pinned`` at its versions (``pin_profiles``)."""
    import ray

    profile = profile or settings.default_profile
    # Loaded and verified here, once; every actor gets them from the object store. The
    # channels to read are those of the pinned versions' profiles (as trained).
    bundles = {name: load_bundles(settings.model_store_uri, name, v) for name, v in pinned.items()}
    channels = list(dict.fromkeys(c for _, reference in bundles.values() for c in reference.profile.channels))
    # Blocks of a few batches, so that a single large file is spread over the whole pool.
    # In Ray 2.60 this is a streaming split (no all-to-all barrier), run in the read tasks.
    ds = read_cycles(source, channels, cycles).repartition(target_num_rows_per_block=batch_size * BATCHES_PER_BLOCK)
    if "system_id" not in ds.schema().names and system_id is None:
        raise BatchInputError(f"{source} has no system_id column; pass --system-id to name the system")
    loaded = ray.put(bundles)
    return ds.map_batches(
        EnsemblePredictor,
        fn_constructor_kwargs={
            "loaded": loaded,
            "default_profile": profile,
            "rejected": rejected or {},
            "weights": weights,
            "threshold": settings.anomaly_threshold,
            "default_system_id": system_id,
            "threads": 1,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        num_cpus=_actor_cpus(workers),
        # A fixed pool: all actors load their models at once, at the start, instead of
        # the pool growing mid-run. _actor_cpus leaves the upstream tasks a CPU.
        compute=ray.data.ActorPoolStrategy(size=workers),
    )


def run_batch_predict(
    source: str,
    output_dir: str,
    model_version: str = LATEST,
    settings: Settings | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    system_id: str | None = None,
    cycles: Sequence[int] | None = None,
    rows_per_file: int | None = None,
    stats: list[str] | None = None,
    profile: str | None = None,
) -> dict:
    """Diagnose every cycle in ``source``; write predictions and rejected rows under ``output_dir``.

    Returns the summary (also written to ``<output_dir>/summary.json``).
    """
    import ray

    settings = settings or get_settings()
    batch_size = batch_size or settings.batch_predict_batch_size
    workers = workers or settings.batch_predict_workers
    rows_per_file = rows_per_file or ROWS_PER_FILE
    if batch_size < 1 or workers < 1 or rows_per_file < 1:
        raise ValueError(
            f"batch_size, workers and rows_per_file must be at least 1 (got {batch_size}, {workers}, {rows_per_file})"
        )
    source, output_dir = str(source), str(output_dir).rstrip("/")
    started = time.perf_counter()
    started_at = time.time()
    profile = profile or settings.default_profile
    pinned, rejected = pin_profiles(source, settings, model_version, profile)
    weights = ensemble_weights(settings.ensemble_weights)  # a bad override fails here, not in every actor
    if not ray.is_initialized():
        ray.init()  # joins the cluster named by RAY_ADDRESS (ray job submit), else starts a local one
    ray.data.DataContext.get_current().enable_progress_bars = True

    scored = plan(source, settings, pinned, weights, batch_size, workers, system_id, cycles, profile, rejected)
    # Write tasks next to the pool (not the driver): each splits its rows into the two
    # outputs, so nothing downstream of the actors runs one batch at a time. They ask
    # for no CPU: they are light (Parquet of ~340 B a row), and with the pool's share
    # and the streaming split's CPU taken, a write asking for one waited for the whole
    # input to be split before the first file was written (measured: 22 s of 29 s).
    sink = PredictionSink(output_dir, prediction_schema(FAMILY_NAMES), rows_per_file)
    scored.write_datasink(sink, ray_remote_args={"num_cpus": 0}, concurrency=_writers(workers))
    n_pred, n_err = sink.counts["prediction"], sink.counts["error"]
    wall = time.perf_counter() - started
    if stats is not None:  # Ray Data's per-operator times, for the benchmark
        # write_datasink runs a derived dataset and keeps it as ``_write_ds`` (Ray 2.60);
        # the scored dataset itself has not run, so its own stats are empty.
        written = getattr(scored, "_write_ds", None)
        stats.append(written.stats() if written is not None else scored.stats())

    summary = {
        "source": source,
        "output_dir": output_dir,
        "rows_in": n_pred + n_err,
        "predicted": n_pred,
        "rejected": n_err,
        "wall_seconds": round(wall, 3),
        "cycles_per_s": round((n_pred + n_err) / wall, 1) if wall > 0 else None,
        "model_versions": pinned,  # {profile: {family: version}}
        "default_profile": profile,
        "profiles_rejected": rejected,
        "batch_size": batch_size,
        "workers": workers,
        "rows_per_file": rows_per_file,
        "first_write_seconds": None if sink.first_write_at is None else round(sink.first_write_at - started_at, 3),
    }
    _write_summary(f"{output_dir}/{SUMMARY_FILE}", summary)
    return summary


def _write_summary(uri: str, summary: dict) -> None:
    import fsspec

    with fsspec.open(uri, "w") as f:
        f.write(json.dumps(summary, indent=2))


def format_summary(summary: dict) -> str:
    return (
        f"rows in: {summary['rows_in']}  predicted: {summary['predicted']}  rejected: {summary['rejected']}  "
        f"throughput: {summary['cycles_per_s']} cycles/s  wall: {summary['wall_seconds']} s\n"
        f"predictions: {summary['output_dir']}/{PREDICTIONS_DIR}/  errors: {summary['output_dir']}/{ERRORS_DIR}/  "
        f"models: {summary['model_versions']}"
    )


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
    model_version: str = typer.Option(
        LATEST, help="'latest', a version (training run) of --profile, or PROFILE=VERSION[,...]"
    ),
    profile: str = typer.Option(
        "", help="profile of rows without a 'profile' column value (default: settings' default_profile)"
    ),
    system_id: str = typer.Option(None, help="system id for inputs without a system_id column"),
    batch_size: int = typer.Option(0, help="cycles per model call (default: settings.batch_predict_batch_size)"),
    workers: int = typer.Option(0, help="max actors in the pool (default: settings.batch_predict_workers)"),
    cycles: str = typer.Option(None, help="only these cycle ids, e.g. '0-99,150'"),
    store_uri: str = typer.Option("", help="model store URI (default from settings)"),
) -> None:
    settings = Settings(model_store_uri=store_uri) if store_uri else get_settings()
    summary = run_batch_predict(
        source,
        output,
        model_version,
        settings,
        batch_size or None,
        workers or None,
        system_id,
        parse_cycles(cycles),
        profile=profile or None,
    )
    print(format_summary(summary))


if __name__ == "__main__":
    # Run through the importable module, not __main__: Ray pickles functions and
    # classes by reference, and workers cannot import anything from a __main__
    # that is not theirs. The UDFs live in pipelines.ensemble_predictor and
    # pipelines.cycle_reader; this keeps whatever this module ever hands to Ray
    # importable as pipelines.batch_predict too.
    from pipelines.batch_predict import main as _main

    typer.run(_main)
