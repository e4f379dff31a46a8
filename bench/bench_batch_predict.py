"""Batch prediction throughput: the Ray Data job against a single-process loop.

    python -m bench.bench_batch_predict [--cycles 10000] [--batch-size 500] [--workers 1,2]

Both sides run the same code on the same Parquet file of simulated cycles
(only the feature set's channels): read -> ``EnsemblePredictor`` (features,
four models, ``diagnose_answers``) -> ``OutputWriter`` (Parquet), with the same
batch size. The loop calls the predictor in-process, one batch after another;
the job runs it in a Ray Data actor pool on a local cluster of ``--cpus`` CPUs.
Prints cycles/s and the ratio; no assertions (timings depend on the machine and
its load).

Model bundles come from the configured store when it holds all four families;
otherwise they are trained first (``python -m pipelines.train --source
simulator``) into a temporary HDX_HOME. The output says which.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from configs.settings import PROJECT_ROOT, Settings, get_settings
from diagnosis.registry import ensemble_weights
from diagnosis.store import BundleError
from hydraulics.features import get_feature_set
from hydraulics.loaders import save_table
from hydraulics.simulator import simulate_dataset
from pipelines.batch_predict import resolve_versions, run_batch_predict
from pipelines.ensemble_predictor import EnsemblePredictor
from pipelines.prediction_output import OutputWriter

DOC = PROJECT_ROOT / "docs" / "bench_batch.md"


def bundles(settings: Settings, scratch: Path) -> tuple[Settings, str]:
    """Settings whose store holds all four families, and where they came from."""
    try:
        resolve_versions(settings)
        return settings, f"configured store {settings.model_store_uri}"
    except BundleError as exc:
        print(f"no usable bundles in the configured store ({exc}); training into a temporary HDX_HOME ...")
    home = scratch / "hdx-home"
    store = str(home / "models")
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pipelines.train", "--source", "simulator", "--store-uri", store],
        check=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, "HDX_HOME": str(home)},
    )
    trained = Settings(home=home)
    return trained, f"trained for this run in {time.perf_counter() - started:.0f} s into {store}"


def make_input(n_cycles: int, settings: Settings, path: Path) -> None:
    channels = list(get_feature_set(settings.feature_set).channels)
    data = simulate_dataset(math.ceil(n_cycles / 144), seed=7, channels=channels)
    save_table(data.subset(range(n_cycles)), str(path))


def single_process(source: Path, out: Path, settings: Settings, batch_size: int) -> float:
    """Cycles/s of the same predictor called batch after batch in this process, on one
    thread (``EnsemblePredictor`` pins every family to ``threads=1`` through
    ``FamilyModel.pin_threads``, as in each actor), writing the same two outputs
    with the same writer as the job."""
    started = time.perf_counter()
    predictor = EnsemblePredictor(
        settings.model_store_uri,
        resolve_versions(settings),
        settings.feature_set,
        ensemble_weights(settings.ensemble_weights),
        settings.anomaly_threshold,
        "bench",
        threads=1,
    )
    rows = 0
    with OutputWriter(str(out)) as writer:
        for batch in pq.ParquetFile(source).iter_batches(batch_size=batch_size):
            writer.write(predictor(pa.Table.from_batches([batch])))
            rows += batch.num_rows
    return rows / (time.perf_counter() - started)


def write_doc(table: str, command: str, models: str) -> None:
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(
        "# Batch prediction throughput\n\n"
        f"Measured with:\n\n```\n{command}\n```\n\n"
        f"Models: {models}.\n\n"
        + table
        + "\nBoth rows run the same code (`pipelines.ensemble_predictor.EnsemblePredictor`: Arrow -> feature "
        "block, four models, `diagnose_answers`; then `pipelines.prediction_output.OutputWriter` for the two "
        "Parquet outputs) on the same Parquet file, with the same batch size and one thread per process: every "
        "family is pinned to 1 thread (`FamilyModel.pin_threads(1)`: CatBoost, XGBoost, the forest and the "
        "adaptive family's BLAS) in the loop and in every actor. The loop is one process, one thread. The job "
        "runs a fixed pool of `workers` actors on a local Ray cluster that is already up (a warm-up job has "
        "started its worker processes), so cluster start-up is not counted, but actor start-up (a new process "
        "per actor: imports, model loading) is, as the loop's imports and model loading are.\n"
    )


def main(argv=None) -> None:
    defaults = get_settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_predict_batch_size)
    parser.add_argument("--workers", default="1,2", help="actor pool sizes to measure, comma-separated")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--no-doc", action="store_true", help=f"do not rewrite {DOC.relative_to(PROJECT_ROOT)}")
    args = parser.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]

    import ray

    with tempfile.TemporaryDirectory(prefix="hdx-bench-") as tmp:
        scratch = Path(tmp)
        settings, models = bundles(defaults, scratch)
        print(f"models: {models}")
        source = scratch / "cycles.parquet"
        make_input(args.cycles, settings, source)
        print(f"input: {args.cycles} simulated cycles ({settings.feature_set} channels) in {source}")

        loop = single_process(source, scratch / "loop-out", settings, args.batch_size)
        print(f"single-process loop: {loop:.0f} cycles/s")

        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        # A warm-up job starts the worker processes, as on a cluster that has run jobs before.
        warm = scratch / "warm.parquet"
        make_input(200, settings, warm)
        run_batch_predict(
            str(warm),
            str(scratch / "warm-out"),
            settings=settings,
            batch_size=args.batch_size,
            workers=max(workers),
            system_id="bench",
        )
        results = {}
        for w in workers:
            summary = run_batch_predict(
                str(source),
                str(scratch / f"out-{w}"),
                settings=settings,
                batch_size=args.batch_size,
                workers=w,
                system_id="bench",
            )
            results[w] = summary["cycles_per_s"]
            print(f"Ray Data job, {w} worker(s): {results[w]:.0f} cycles/s ({results[w] / loop:.2f}x the loop)")
        ray.shutdown()

    load = os.getloadavg()[0]
    table = (
        "| run | workers | batch size | cycles/s | × loop |\n|---|---|---|---|---|\n"
        f"| single-process loop | – | {args.batch_size} | {loop:.0f} | 1.00 |\n"
        + "".join(
            f"| Ray Data job | {w} | {args.batch_size} | {r:.0f} | {r / loop:.2f} |\n" for w, r in results.items()
        )
        + f"\n{args.cycles} cycles, {args.cpus}-CPU local Ray cluster on a machine with {os.cpu_count()} cores "
        f"(1-min load average at the end: {load:.1f}).\n"
    )
    print(table)
    if not args.no_doc:
        command = "python -m bench.bench_batch_predict " + " ".join(sys.argv[1:] if argv is None else argv)
        write_doc(table, command.strip(), models)
        print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
