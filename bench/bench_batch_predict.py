"""Batch prediction throughput: the Ray Data job against a single-process loop.

    python -m bench.bench_batch_predict [--cycles 100000] [--batch-size 500] [--workers 1,2]
    python -m bench.bench_batch_predict --cycles 10000,100000,1000000 --workers 2 --no-loop-above 100000

Both sides run the same code on the same directory of Parquet files of simulated
cycles (only the feature set's channels): read -> ``EnsemblePredictor`` (features,
four models, ``diagnosis.voting.combine_columns``) -> ``OutputWriter`` (Parquet),
with the same batch size. The loop calls the predictor in-process, one batch after
another, on one thread, and times every stage; the job runs it in a Ray Data actor
pool on a local cluster of ``--cpus`` CPUs that is already up (a warm-up job has
run), and prints Ray Data's per-operator stats, the time to its first written
file and the peak memory (RSS) of its processes. Prints figures; no assertions
(timings depend on the machine and its load).

Inputs above ``--unique`` cycles repeat a simulated block of that many cycles with
new cycle ids, file after file (simulating a cycle costs more than diagnosing it):
the work per row is the same, and no input is ever held in memory whole.

Model bundles come from the configured store when it holds all four families;
otherwise they are trained first (``python -m pipelines.train --source
simulator``) into a temporary HDX_HOME. The output says which.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from bench.bench_serve import process_role
from configs.settings import PROJECT_ROOT, Settings, get_settings
from diagnosis.profiles import builtin_profile
from diagnosis.registry import FAMILY_NAMES, ensemble_weights
from diagnosis.scoring import answer_blocks
from diagnosis.store import BundleError
from diagnosis.voting import combine_columns
from hydraulics.loaders import save_table
from hydraulics.simulator import simulate_dataset
from pipelines.batch_predict import resolve_versions, run_batch_predict
from pipelines.ensemble_predictor import ProfileScorer, load_bundles
from pipelines.prediction_output import OutputWriter, combined_schema, prediction_schema, scored_table, verdict_arrays

DOC = PROJECT_ROOT / "docs" / "bench_batch.md"
FILE_CYCLES = 10_000  # cycles per input file


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


def simulated_block(n_cycles: int, settings: Settings, path: Path) -> pa.Table:
    if not path.exists():
        channels = list(builtin_profile(settings.default_profile).channels)
        data = simulate_dataset(math.ceil(n_cycles / 144), seed=7, channels=channels)
        save_table(data.subset(range(n_cycles)), str(path))
    return pq.read_table(path)


def make_input(n_cycles: int, block: pa.Table, folder: Path) -> None:
    """``n_cycles`` rows in files of ``FILE_CYCLES``: ``block`` again and again, with new cycle ids."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = block["cycle_id"].to_numpy()
    for i, start in enumerate(range(0, n_cycles, FILE_CYCLES)):
        size = min(FILE_CYCLES, n_cycles - start)
        part = pa.concat_tables([block] * math.ceil(size / block.num_rows)).slice(0, size)
        offset = start - int(ids.min())
        part = part.set_column(0, "cycle_id", pa.array(part["cycle_id"].to_numpy() + offset))
        pq.write_table(part, folder / f"part-{i:05d}.parquet")


def single_process(source: Path, out: Path, settings: Settings, batch_size: int) -> tuple[float, dict[str, float]]:
    """Cycles/s of the same predictor called batch after batch in this process, on one
    thread (``ProfileScorer`` pins every family to ``threads=1`` through
    ``FamilyModel.pin_threads``, as in each actor), writing the same two outputs with
    the same writer as the job; and the seconds spent in each stage."""
    stages: dict[str, float] = defaultdict(float)

    def timed(stage: str, started: float) -> float:
        now = time.perf_counter()
        stages[stage] += now - started
        return now

    started = t = time.perf_counter()
    profile = settings.default_profile
    predictor = ProfileScorer(
        load_bundles(settings.model_store_uri, profile, resolve_versions(settings)),
        ensemble_weights(settings.ensemble_weights),
        settings.anomaly_threshold,
        threads=1,
    )
    schema = combined_schema(prediction_schema(FAMILY_NAMES))
    t = timed("model loading", t)
    rows = 0
    writer = OutputWriter(str(out), prediction_schema(FAMILY_NAMES))
    for record_batch in pads.dataset(source, format="parquet").to_batches(batch_size=batch_size):
        batch = pa.Table.from_batches([record_batch])
        t = timed("read", t)
        found = predictor.features(batch)
        t = timed("features", t)
        answers = {}
        for family, bundle in predictor.bundles.items():
            answers[family] = answer_blocks(bundle, [found.features])[0]
            t = timed(f"model: {family}", t)
        by_family = {f: a.probas for f, a in answers.items()}
        verdicts = combine_columns(by_family, predictor.weights, predictor.threshold, None, found.flagged)
        t = timed("combine", t)
        arrays = verdict_arrays(verdicts, predictor.versions, found.novelty, found.flagged)
        scored = scored_table(batch, profile, found.rows, arrays, found.errors, "bench", schema)
        t = timed("output conversion", t)
        writer.write(scored)
        t = timed("write", t)
        rows += batch.num_rows
    writer.finish()
    timed("write", t)
    return rows / (time.perf_counter() - started), dict(stages)


def two_loops(source: Path, out: Path, settings: Settings, batch_size: int) -> float | None:
    """Cycles/s of two ``single_process`` loops run at once in two processes, each on half
    of the input files: what two workers could do on this machine with no framework at all
    (two cores share memory bandwidth and caches, and a cloud VM's cores may share more).
    None for an input of one file (``FILE_CYCLES`` cycles or fewer): nothing to split."""
    files = sorted(source.glob("*.parquet"))
    if len(files) < 2:
        return None
    halves = [files[0::2], files[1::2]]
    procs = []
    for i, half in enumerate(halves):
        part = out / f"half-{i}"
        part.mkdir(parents=True, exist_ok=True)
        for f in half:
            (part / f.name).symlink_to(f)
        code = (
            "from pathlib import Path\n"
            "from configs.settings import Settings\n"
            "from bench.bench_batch_predict import single_process\n"
            f"s = Settings(home={str(settings.home)!r}, model_store_uri={settings.model_store_uri!r})\n"
            f"print(single_process(Path({str(part)!r}), Path({str(out / f'out-{i}')!r}), s, {batch_size})[0])\n"
        )
        cmd = [sys.executable, "-c", code]
        procs.append(subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True))
    rates = [float(p.communicate()[0].split()[-1]) for p in procs]
    rows = [sum(pq.read_metadata(f).num_rows for f in half) for half in halves]
    return sum(rows) / max(r / rate for r, rate in zip(rows, rates))


def actor_start_cost(settings: Settings, scratch: Path) -> dict[str, float]:
    """What a new actor process pays before its first batch, measured in a fresh
    Python process: importing the predictor's module, then taking the four bundles
    as the job hands them over (unpickled from what the driver loaded), and, for
    comparison, loading them from the store itself."""
    blob = scratch / "bundles.pickle"
    blob.write_bytes(
        pickle.dumps(load_bundles(settings.model_store_uri, settings.default_profile, resolve_versions(settings)))
    )
    code = (
        "import pickle, time; t = time.perf_counter()\n"
        "from pipelines.ensemble_predictor import ProfileScorer, load_bundles\n"
        "i = time.perf_counter() - t; t = time.perf_counter()\n"
        f"bundles = pickle.loads(open({str(blob)!r}, 'rb').read())\n"
        "ProfileScorer(bundles, {}, 0.5)\n"
        "u = time.perf_counter() - t; t = time.perf_counter()\n"
        f"load_bundles({settings.model_store_uri!r}, {settings.default_profile!r}, {resolve_versions(settings)!r})\n"
        "print(i, u, time.perf_counter() - t)\n"
    )
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    total = time.perf_counter() - started
    imports, handed, loading = (float(v) for v in out.stdout.split())
    return {
        "process + interpreter": total - imports - handed - loading,
        "imports": imports,
        "bundles from the driver (unpickling)": handed,
        "for comparison: loading them from the store (not done by actors)": loading,
    }


@dataclass
class JobRun:
    summary: dict
    peak_total: int  # bytes, all of the job's processes together
    peak_process: int  # bytes, the largest one
    operators: list[str]  # table rows from Ray Data's stats
    cpu: dict[str, tuple[int, float]]  # ProcessSampler.cpu_by_role


def job_role(argv: list[str], is_driver: bool) -> str:
    """What a process of the job is: the driver, else ``bench.bench_serve.process_role``'s
    name for it (Ray's daemons, or the Ray Data operator a worker runs, ``MapWorker(...)``,
    ``Write``, …) without the ``ray::`` prefix and the operator's arguments."""
    if is_driver:
        return "driver (run_batch_predict)"
    role = process_role(argv, pid=0)
    return role.removeprefix("ray::").split("[", 1)[0] if role else "other"


class ProcessSampler:
    """Peak RSS of this process plus every Ray worker process under it, and the CPU time
    each process of the local cluster spent, sampled every 0.2 s. A worker is named by
    the first operator it is seen running (an idle worker that never ran one, ``IDLE``).

    Finding the processes scans all of ``/proc``, which costs real CPU on a busy machine,
    so it is done once a second; the sampler's own CPU is left out of the driver's."""

    SAMPLE_S = 0.2
    RESCAN_S = 1.0
    UNNAMED = ("IDLE", "other", "ray default_worker")  # a worker not yet running an operator

    def __init__(self):
        self.peak_total = 0
        self.peak_process = 0
        self._cpu: dict[int, list] = {}  # pid -> [role, cpu at first sight, cpu at last sight]
        self._own_cpu = 0.0  # this sampler thread's CPU, spent in the driver's process
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        procs: list[psutil.Process] = []
        rescanned = 0.0
        while not self._stop.is_set():
            if time.monotonic() - rescanned >= self.RESCAN_S:
                procs, rescanned = [me, *me.children(recursive=True)], time.monotonic()
            total = 0
            for proc in procs:
                try:
                    argv = proc.cmdline()
                    times = proc.cpu_times()
                    rss = proc.memory_info().rss
                except psutil.Error:
                    continue
                role = job_role(argv, proc.pid == me.pid)
                seen = self._cpu.setdefault(proc.pid, [role, times.user + times.system, 0.0])
                if seen[0] in self.UNNAMED and role not in self.UNNAMED:
                    seen[0] = role
                seen[2] = times.user + times.system
                if proc is not me and "default_worker.py" not in " ".join(argv):
                    continue  # raylet, GCS, dashboard: the cluster's memory, not the job's
                total += rss
                self.peak_process = max(self.peak_process, rss)
            self.peak_total = max(self.peak_total, total)
            self._own_cpu = time.thread_time()
            self._stop.wait(self.SAMPLE_S)

    def cpu_by_role(self) -> dict[str, tuple[int, float]]:
        """Role -> (processes, CPU seconds spent while sampled), largest first."""
        out: dict[str, list] = defaultdict(lambda: [0, 0.0])
        for pid, (role, first, last) in self._cpu.items():
            if pid == os.getpid():
                last -= self._own_cpu
            if last > first:
                out[role][0] += 1
                out[role][1] += last - first
        return dict(sorted(((r, (n, s)) for r, (n, s) in out.items()), key=lambda kv: -kv[1][1]))

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        time.sleep(0.5)  # a first reading of every process before the job starts
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def operator_lines(stats: str) -> list[str]:
    """One line per Ray Data operator: wall time of the operator and its tasks' totals."""
    out = []
    for block in re.split(r"\n(?=Operator \d)", stats):
        head = re.match(r"Operator \d+ (.+?): (\d+) tasks executed, (\d+) blocks produced in ([\d.]+)s", block)
        if not head:
            continue
        wall = re.search(r"Remote wall time:.*?([\d.]+)(\w+) total", block)
        cpu = re.search(r"Remote cpu time:.*?([\d.]+)(\w+) total", block)
        out.append(
            f"| {head[1]} | {head[2]} | {head[4]} s | "
            f"{wall[1] + ' ' + wall[2] if wall else '–'} | {cpu[1] + ' ' + cpu[2] if cpu else '–'} |"
        )
    return out


def main(argv=None) -> None:
    defaults = get_settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", default="100000", help="input sizes, comma-separated")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_predict_batch_size)
    parser.add_argument("--workers", default="1,2", help="actor pool sizes to measure, comma-separated")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--unique", type=int, default=FILE_CYCLES, help="distinct simulated cycles")
    parser.add_argument("--no-loop-above", type=int, default=0, help="skip the loop for larger inputs (0: never)")
    parser.add_argument("--no-doc", action="store_true", help=f"do not rewrite {DOC.relative_to(PROJECT_ROOT)}")
    args = parser.parse_args(argv)
    sizes = [int(c) for c in args.cycles.split(",")]
    workers = [int(w) for w in args.workers.split(",")]

    import ray

    report: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hdx-bench-") as tmp:
        scratch = Path(tmp)
        settings, models = bundles(defaults, scratch)
        print(f"models: {models}")
        started = time.perf_counter()
        block = simulated_block(min(args.unique, max(sizes)), settings, scratch / "unique.parquet")
        print(f"simulated {block.num_rows} distinct cycles in {time.perf_counter() - started:.0f} s")
        start_cost = actor_start_cost(settings, scratch)
        print("actor start-up, in a fresh process: " + ", ".join(f"{k} {v:.2f} s" for k, v in start_cost.items()))

        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        # A warm-up job starts the worker processes, as on a cluster that has run jobs before.
        make_input(200, block.slice(0, 200), scratch / "warm")
        run_batch_predict(
            str(scratch / "warm"), str(scratch / "warm-out"), settings=settings, workers=max(workers), system_id="b"
        )
        rows = []
        for n in sizes:
            source = scratch / f"cycles-{n}"
            make_input(n, block, source)
            loop, ceiling, stages = None, None, {}
            if not args.no_loop_above or n <= args.no_loop_above:
                loop, stages = single_process(source, scratch / f"loop-out-{n}", settings, args.batch_size)
                print(f"{n} cycles, single-process loop: {loop:.0f} cycles/s")
                ceiling = two_loops(source, scratch / f"two-loops-{n}", settings, args.batch_size)
                if ceiling:
                    print(f"{n} cycles, two loops at once: {ceiling:.0f} cycles/s ({ceiling / loop:.2f}x one loop)")
            results = {}
            for w in workers:
                stats: list[str] = []
                with ProcessSampler() as memory:
                    summary = run_batch_predict(
                        str(source),
                        str(scratch / f"out-{n}-{w}"),
                        settings=settings,
                        batch_size=args.batch_size,
                        workers=w,
                        system_id="bench",
                        stats=stats,
                    )
                results[w] = JobRun(
                    summary, memory.peak_total, memory.peak_process, operator_lines(stats[0]), memory.cpu_by_role()
                )
                print(
                    f"{n} cycles, Ray Data job, {w} worker(s): {summary['cycles_per_s']:.0f} cycles/s"
                    + (f" ({summary['cycles_per_s'] / loop:.2f}x the loop)" if loop else "")
                    + f", first file written after {summary['first_write_seconds']} s, "
                    f"peak RSS {memory.peak_total / 2**20:.0f} MiB "
                    f"(largest process {memory.peak_process / 2**20:.0f} MiB)"
                )
                print("\n".join(results[w].operators))
                print("CPU by process: " + ", ".join(f"{r} {c:.1f} s" for r, (_, c) in results[w].cpu.items()))
                shutil_rmtree(scratch / f"out-{n}-{w}")
            rows.append((n, loop, ceiling, stages, results, os.getloadavg()[0]))
            shutil_rmtree(source)
        ray.shutdown()

    report.append(tables(rows, args, start_cost))
    text = "\n".join(report)
    print(text)
    if not args.no_doc:
        command = "python -m bench.bench_batch_predict " + " ".join(sys.argv[1:] if argv is None else argv)
        DOC.write_text(
            f"# Batch prediction throughput\n\nMeasured with:\n\n```\n{command.strip()}\n```\n\n"
            f"Models: {models}.\n\n{text}"
        )
        print(f"wrote {DOC}")


def shutil_rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def tables(rows, args, start_cost) -> str:
    out = [
        "| cycles | run | cycles/s | × loop | 2 w / 1 w | first file written | peak RSS (all job processes) "
        "| largest process | 1-min load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, loop, ceiling, _, results, load in rows:
        if loop:
            out.append(f"| {n:,} | single-process loop | {loop:.0f} | 1.00 | | | | | {load:.1f} |")
        if ceiling:
            run = "two loops at once, half the files each"
            out.append(f"| {n:,} | {run} | {ceiling:.0f} | {ceiling / loop:.2f} | | | | | |")
        for w, job in results.items():
            rate = job.summary["cycles_per_s"]
            scale = f"{rate / results[1].summary['cycles_per_s']:.2f}" if w == 2 and 1 in results else ""
            out.append(
                f"| {n:,} | Ray Data job, {w} worker(s) | {rate:.0f} | {f'{rate / loop:.2f}' if loop else '–'} | "
                f"{scale} | {job.summary['first_write_seconds']} s | {job.peak_total / 2**20:.0f} MiB | "
                f"{job.peak_process / 2**20:.0f} MiB | {load:.1f} |"
            )
    out.append(
        f"\nBatch size {args.batch_size}, {args.cpus}-CPU local Ray cluster on a machine with {os.cpu_count()} cores. "
        '"First file written": from the call of `run_batch_predict` to the first write task\'s end.'
    )
    for n, _, _, stages, results, _ in rows:
        if stages:
            total = sum(stages.values())
            out.append(f"\n### Where the loop's time goes ({n:,} cycles, {total:.1f} s)\n")
            out.append("| stage | s | share |\n|---|---|---|")
            out += [f"| {k} | {v:.2f} | {100 * v / total:.0f} % |" for k, v in stages.items()]
        for w, job in results.items():
            out.append(
                f"\n### Ray Data operators ({n:,} cycles, {w} worker(s), wall {job.summary['wall_seconds']} s)\n\n"
                "| operator | tasks | operator wall | tasks' wall (total) | tasks' CPU (total) |\n|---|---|---|---|---|"
            )
            out += job.operators
            spent = sum(c for _, c in job.cpu.values())
            out.append(
                f"\nCPU by process ({spent:.1f} s in all, {spent / job.summary['wall_seconds']:.2f} cores):\n\n"
                "| process (first operator it ran) | processes | CPU s |\n|---|---|---|"
            )
            out += [f"| {role} | {k} | {c:.2f} |" for role, (k, c) in job.cpu.items()]
    out.append(
        "\n### Actor start-up (a fresh Python process, as each actor is)\n\n| part | s |\n|---|---|\n"
        + "\n".join(f"| {k} | {v:.2f} |" for k, v in start_cost.items())
    )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
