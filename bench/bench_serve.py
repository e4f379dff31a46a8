"""Latency and throughput of /diagnostics/predict: Ray Serve vs one process.

    python -m bench.bench_serve --rate 10 --seconds 20          # light load
    python -m bench.bench_serve --rate 100 --idle-seconds 0     # offered 100 req/s

Starts, in one run:
1. the HDX Serve application (ingress → ensemble → four model deployments)
   on a local Ray started as the quick start starts it (``configs.ray_env``:
   throughput-optimized mode with HAProxy; ``--data-plane default`` for Serve's
   default proxy and actor calls), and
2. the same FastAPI app and the same ensemble and model code in ONE uvicorn
   process (the old single-service design): handles are replaced by direct
   calls, so the only difference is the serving architecture.

Each is driven open-loop at ``--rate`` requests/s (a request is sent on
schedule whether or not earlier ones finished, up to ``--concurrency`` in
flight) with a fixed mix of simulated cycles, first with caching off (every
request is a cache miss), then repeating one cycle (cache hits), then with the
no-op ``GET /health`` (no auth, no work: what the serving path alone costs).
Before the load, each side sits idle for ``--idle-seconds`` (after warm-up)
and the CPU every process spent meanwhile is printed as % of one core.
Prints p50/p90/p99 latency, throughput, errors and CPU per request by process
for each phase, and the ratios Serve / one process.
Nothing here asserts: the figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import aiohttp
import httpx
import numpy as np

from bench.ready import wait_ready

CHANNELS = ["TS1", "TS2", "TS3", "TS4", "VS1", "CE", "CP", "SE"]


# --- the single-process variant ------------------------------------------------------


class LocalEnsemble:
    """Stands where the ensemble's DeploymentHandle stands (``x.method.remote(...)``), with
    the ensemble's library steps called in this process, one request at a time and one
    model call per request (no batching: what the single-service design does)."""

    def __init__(self, settings):
        from diagnosis.registry import ensemble_weights
        from diagnosis.store import ModelStore

        self.store = ModelStore(settings.model_store_uri)
        self.default_profile = settings.default_profile
        self.weights = ensemble_weights(settings.ensemble_weights)
        self.threshold = settings.anomaly_threshold
        self.loaded: dict[str, tuple] = {}  # profile → (version, reference, bundles)
        self.diagnose = SimpleNamespace(remote=self._diagnose)
        self.models_info = SimpleNamespace(remote=self._models_info)
        self.served_profiles = SimpleNamespace(remote=self._served_profiles)
        self.trained = self.store.trained_profiles()  # what a rejected cycle's channels would fit
        self.profile(self.default_profile)

    def profile(self, name: str | None) -> tuple:
        """The profile's newest version: its reference and every family's bundle."""
        from diagnosis.registry import FAMILIES

        name = name or self.default_profile
        if name not in self.loaded:
            store = self.store.for_profile(name)
            version = store.resolve_profile_version()
            bundles = {family: store.load(family, version) for family in FAMILIES}
            self.loaded[name] = (version, store.load_reference(version), bundles)
        return self.loaded[name]

    async def _diagnose(self, cycles, profile=None, components=None):
        from diagnosis.profiles import diagnose_prepared, prepare_cycles
        from diagnosis.report import CycleRejected
        from diagnosis.scoring import answer_blocks

        start = time.perf_counter()
        profile = profile or self.default_profile
        _, reference, bundles = self.profile(profile)
        prepared = prepare_cycles(reference, cycles, self.trained)
        out = {i: CycleRejected.from_error(e) for i, e in prepared.errors.items()}
        if prepared.rows is not None:
            X = prepared.rows.features
            answers = {family: answer_blocks(bundle, [X])[0] for family, bundle in bundles.items()}
            wanted = [c for c in reference.profile.components if components is None or c in components]
            for i, d in diagnose_prepared(
                prepared, profile, answers, self.weights, self.threshold, None, wanted
            ).items():
                d.total_processing_time_ms = round((time.perf_counter() - start) * 1000, 3)
                out[i] = d
        return [out[i] for i in range(len(cycles))]

    async def _models_info(self):
        from diagnosis.profiles import model_id
        from diagnosis.scoring import bundle_info

        families: dict[str, dict] = {}
        for profile, (version, _, bundles) in self.loaded.items():
            for family, bundle in bundles.items():
                entry = families.setdefault(family, {"ml_model": family, "replica": "local", "models": []})
                entry["models"].append({**bundle_info(bundle), "model_id": model_id(profile, version)})
        return families

    async def _served_profiles(self):
        return {profile: version for profile, (version, _, _) in self.loaded.items()}


def single_process_app():
    """uvicorn factory: the same FastAPI app with the ensemble's library code in this process."""
    from api.application import create_app
    from configs.settings import get_settings

    settings = get_settings()
    app = create_app(settings)
    app.state.ensemble = LocalEnsemble(settings)
    app.state.rag = None
    return app


# --- load generation -----------------------------------------------------------------------


async def drive(
    base: str, headers: dict, bodies: list[dict] | None, rate: float, seconds: float, concurrency: int
) -> dict:
    """Open-loop load: request i is sent at ``i / rate`` s, up to ``concurrency`` in flight.
    ``POST /diagnostics/predict`` with the bodies in turn, or with ``bodies=None`` the
    no-op ``GET /health`` (the latency of the serving path itself).

    The client is aiohttp with the bodies encoded once up front: the latency measured
    should be the service's, and on two shared cores httpx's own per-request work
    (about 2 ms a request, measured against a no-op endpoint) would be counted in it.
    """
    latencies, errors = [], {}
    sem = asyncio.Semaphore(concurrency)
    payloads = [json.dumps(b).encode() for b in bodies] if bodies is not None else [None]
    headers = {**headers, "content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        base_url=base, connector=connector, headers=headers, timeout=aiohttp.ClientTimeout(total=30)
    ) as http:

        async def one(payload: bytes | None):
            async with sem:
                start = time.perf_counter()
                try:
                    async with (
                        http.post("/api/v1/diagnostics/predict", data=payload)
                        if payload is not None
                        else http.get("/api/v1/health")
                    ) as r:
                        await r.read()
                        if r.status != 200:
                            errors[r.status] = errors.get(r.status, 0) + 1
                            return
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    return
                latencies.append((time.perf_counter() - start) * 1000)

        tasks, n = [], int(rate * seconds)
        t0 = time.perf_counter()
        for i in range(n):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(payloads[i % len(payloads)])))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {
        "sent": n,
        "ok": len(latencies),
        "errors": errors,
        "throughput_rps": round(len(latencies) / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p90_ms": round(float(np.percentile(lat, 90)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
    }


def simulated_bodies(system_id: str, n: int) -> list[dict]:
    """``n`` uncached /diagnostics/predict bodies: simulated cycles, the same ones on every run."""
    from hydraulics.simulator import simulate_dataset

    data = simulate_dataset(1, seed=42, channels=CHANNELS)
    idx = np.random.default_rng(0).permutation(len(data))[:n]
    return [
        {
            "system_id": system_id,
            "use_cache": False,
            "sensor_data": {c: data.channels[c][i].round(4).tolist() for c in CHANNELS},
        }
        for i in idx
    ]


async def _setup_db(database_url: str) -> tuple[str, str]:
    from auth.passwords import hash_password
    from storage.db import Database, migrate
    from storage.repositories import systems as systems_repo
    from storage.repositories import users as users_repo

    await migrate(database_url)
    db = Database(database_url)
    async with db.sessionmaker() as s:
        user = await users_repo.get_user_by_username(s, "bench")
        if user is None:
            user = await users_repo.create_user(
                s, username="bench", password_hash=hash_password("bench-password"), role="engineer", tier="enterprise"
            )
        if await systems_repo.get_system(s, "bench-rig") is None:
            await systems_repo.create_system(s, system_id="bench-rig", name="bench", owner_id=user.id)
        await s.commit()
    await db.dispose()
    return "bench", "bench-password"


def _token(base: str) -> dict:
    r = httpx.post(f"{base}/api/v1/auth/token", json={"username": "bench", "password": "bench-password"}, timeout=30)
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def process_role(argv: list[str], pid: int, server_pids: tuple[int, ...] = ()) -> str | None:
    """Which part of the benchmark a process is, or None for one that is not taking part:
    Ray's workers by their title (one line per deployment), Ray's daemons and helper
    processes by name, HAProxy, the single-process server and this load generator."""
    first = argv[0] if argv else ""
    if first.startswith("ray::"):  # "ray::Class" idle, "ray::Class.method" while it runs one
        return first.split(".", 1)[0].replace("ray::ServeReplica:", "replica ")
    if first.endswith(("/raylet", "/gcs_server", "/haproxy")):
        return first.rsplit("/", 1)[1]
    if pid in server_pids:
        return "single-process server"
    if pid == os.getpid():
        return "load generator (this script)"
    script = next((a for a in argv[1:3] if "/site-packages/ray/" in a), None)
    if script:  # the dashboard, log monitor, autoscaler monitor: Ray's own Python helpers
        return "ray " + script.rsplit("/", 1)[1].removesuffix(".py")
    return None


def cpu_seconds(server_pids: tuple[int, ...] = ()) -> dict[int, tuple[str, float]]:
    """CPU time (user + system) so far of every process taking part: pid → (role, seconds).
    Only this script's own process tree counts (the local Ray cluster, the single-process
    server), so another cluster on the same machine is not mistaken for this one's."""
    import psutil

    out: dict[int, tuple[str, float]] = {}
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            role = process_role(proc.cmdline(), proc.pid, server_pids)
            if role is not None:
                times = proc.cpu_times()
                out[proc.pid] = (role, times.user + times.system)
        except psutil.Error:
            continue
    return out


def cpu_spent(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds each role spent between two ``cpu_seconds`` readings (per process, so a
    process that changes its title mid-phase is not counted from its start)."""
    spent: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        spent[role] = spent.get(role, 0.0) + seconds - (before[pid][1] if pid in before else 0.0)
    return spent


def start_profilers(profile_dir: str, seconds: float, server_pids: tuple[int, ...]) -> list[subprocess.Popen]:
    """``py-spy record`` on every replica (or the single-process server) for ``seconds``,
    raw stacks of the threads that were running (not idle) into ``profile_dir``."""
    os.makedirs(profile_dir, exist_ok=True)
    py_spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    out = []
    for pid, (role, _) in cpu_seconds(server_pids).items():
        if role.startswith("replica ") or role == "single-process server":
            path = os.path.join(profile_dir, f"{role.replace(' ', '_')}-{pid}.txt")
            cmd = [py_spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "100", "-f", "raw", "-o", path]
            out.append(subprocess.Popen([*cmd, "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return out


def profile_summary(path: str, top: int = 8) -> str:
    """Where one process's samples went: share by the package of the innermost frame
    (project code, Ray, gRPC, numpy, ...), then the busiest innermost functions."""
    by_package: dict[str, int] = {}
    by_function: dict[str, int] = {}
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            leaf = stack.rsplit(";", 1)[-1]
            where = leaf[leaf.find("(") + 1 : leaf.rfind(":")] if "(" in leaf else leaf
            package = where.split("/", 1)[0] if "/" in where else where
            n = int(count)
            total += n
            by_package[package] = by_package.get(package, 0) + n
            by_function[leaf] = by_function.get(leaf, 0) + n
    if not total:
        return f"{os.path.basename(path)}: no samples"
    shares = ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in sorted(by_package.items(), key=lambda kv: -kv[1])[:8])
    lines = [f"{os.path.basename(path)}: {total} samples; {shares}"]
    for leaf, n in sorted(by_function.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {100 * n / total:5.1f} %  {leaf}")
    return "\n".join(lines)


def measured(base, headers, bodies, args, server_pids, profile_dir: str | None = None) -> dict:
    """One phase at the benchmark's rate, with the CPU each process spent per answered
    request; with ``profile_dir``, py-spy samples every replica meanwhile."""
    profilers = start_profilers(profile_dir, args.seconds, server_pids) if profile_dir else []
    before = cpu_seconds(server_pids)
    result = asyncio.run(drive(base, headers, bodies, args.rate, args.seconds, args.concurrency))
    used = cpu_spent(before, cpu_seconds(server_pids))
    for profiler in profilers:
        profiler.wait(60)
    spent = {role: cpu * 1000 / max(result["ok"], 1) for role, cpu in used.items()}
    result["cpu_ms_per_request"] = {
        role: round(ms, 2) for role, ms in sorted(spent.items(), key=lambda kv: -kv[1]) if ms >= 0.05
    }
    result["cpu_ms_per_request_total"] = round(sum(spent.values()), 2)
    return result


def idle_cpu(seconds: float, server_pids: tuple[int, ...] = ()) -> dict:
    """% of one core each process spends over ``seconds`` with no request at all."""
    before = cpu_seconds(server_pids)
    time.sleep(seconds)
    pct = {role: cpu * 100 / seconds for role, cpu in cpu_spent(before, cpu_seconds(server_pids)).items()}
    pct.pop("load generator (this script)", None)
    return {
        "seconds": seconds,
        "percent_of_one_core": round(sum(pct.values()), 2),
        "by_process": {role: round(p, 2) for role, p in sorted(pct.items(), key=lambda kv: -kv[1]) if p >= 0.05},
    }


def run_phases(base: str, args, server_pids: tuple[int, ...] = (), design: str = "") -> dict:
    headers = _token(base)
    bodies = simulated_bodies("bench-rig", 200)
    asyncio.run(drive(base, headers, bodies[:20], rate=20, seconds=2, concurrency=8))  # warm-up
    idle = None
    if args.idle_seconds > 0:
        time.sleep(5)  # let the warm-up's after-effects (autoscaling metrics, batched writes) settle
        idle = idle_cpu(args.idle_seconds, server_pids)
        print("idle", json.dumps(idle), flush=True)
    profile_dir = os.path.join(args.profile, design) if args.profile else None
    miss = measured(base, headers, bodies, args, server_pids, profile_dir)
    if profile_dir:
        print(f"py-spy, {design}, cache_miss phase:")
        for name in sorted(os.listdir(profile_dir)):
            print(profile_summary(os.path.join(profile_dir, name)), flush=True)
    hit_body = dict(bodies[0], use_cache=True)
    asyncio.run(drive(base, headers, [hit_body], rate=5, seconds=1, concurrency=1))  # fill the cache
    hit = measured(base, headers, [hit_body], args, server_pids)
    noop = measured(base, headers, None, args, server_pids)
    return {"idle": idle, "phases": {"cache_miss": miss, "cache_hit": hit, "noop_health": noop}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="idle CPU phase before the load; 0 skips it")
    parser.add_argument("--skip-single", action="store_true")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="py-spy every replica during the cache-miss phase into DIR and print where each spent its "
        "samples (py-spy's sampling costs CPU: take latency figures from a run without it)",
    )
    parser.add_argument(
        "--data-plane",
        choices=["quickstart", "default"],
        default="quickstart",
        help="quickstart: Ray started with configs.ray_env (throughput-optimized mode, HAProxy, tuned "
        "intervals), as the quick start and the tests run it; default: Serve's own defaults",
    )
    args = parser.parse_args()
    # Read by every Ray process when it starts: set before ray.init.
    from configs.ray_env import RAY_ENV, apply_ray_env

    if args.data_plane == "quickstart":
        print("Ray environment:", apply_ray_env())
    else:
        for name in RAY_ENV:
            os.environ.pop(name, None)

    from configs.settings import get_settings
    from diagnosis.registry import FAMILY_NAMES
    from diagnosis.store import ModelStore

    os.environ.setdefault("HDX_DEV_MODE", "true")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    settings = get_settings()
    store = ModelStore(settings.model_store_uri).for_profile(settings.default_profile)
    if not store.reference_versions() or not all(store.versions(f) for f in FAMILY_NAMES):
        sys.exit(f"no {settings.default_profile} bundles in {settings.model_store_uri}: run `hdx bootstrap` first")
    # A database of its own, so the benchmark never touches real users.
    tmp = tempfile.mkdtemp(prefix="hdx-bench-")
    os.environ["HDX_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp}/bench.db"
    get_settings.cache_clear()
    asyncio.run(_setup_db(os.environ["HDX_DATABASE_URL"]))
    results, idle = {}, {}

    import ray
    from ray import serve

    from deployments.builder import app_from_serve_config

    ray.init(
        runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith(("HDX_", "OMP_"))}},
        log_to_driver=False,
        include_dashboard=False,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": 8011})
    serve.run(app_from_serve_config(assistant=False), name="hdx-bench", route_prefix="/")
    wait_ready("http://127.0.0.1:8011", 180)
    run = run_phases("http://127.0.0.1:8011", args, design="ray_serve")
    results["ray_serve"], idle["ray_serve"] = run["phases"], run["idle"]
    print("ray_serve", json.dumps(results["ray_serve"]), flush=True)
    serve.shutdown()
    ray.shutdown()

    if not args.skip_single:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.bench_serve:single_process_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                "8012",
                "--log-level",
                "warning",
            ],
            env=os.environ.copy(),
        )
        try:
            wait_ready("http://127.0.0.1:8012", 180)
            run = run_phases("http://127.0.0.1:8012", args, server_pids=(proc.pid,), design="single_process")
            results["single_process"], idle["single_process"] = run["phases"], run["idle"]
            print("single_process", json.dumps(results["single_process"]), flush=True)
        finally:
            proc.terminate()
            proc.wait(30)

    print(
        json.dumps(
            {"rate": args.rate, "seconds": args.seconds, "concurrency": args.concurrency, "idle": idle, **results},
            indent=2,
        )
    )
    for design, r in idle.items():
        if r:
            parts = ", ".join(f"{role} {p}" for role, p in r["by_process"].items())
            print(f"idle {r['seconds']:.0f} s, {design}: {r['percent_of_one_core']} % of one core = {parts}")
    print("\n| design | phase | sent | ok | errors | throughput (req/s) | p50 ms | p90 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for design, phases in results.items():
        for phase, r in phases.items():
            print(
                f"| {design} | {phase} | {r['sent']} | {r['ok']} | {sum(r['errors'].values())} | "
                f"{r['throughput_rps']} | {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} |"
            )
    print("\nCPU per answered request (ms), by process:")
    for design, phases in results.items():
        for phase, r in phases.items():
            parts = ", ".join(f"{role} {ms}" for role, ms in r["cpu_ms_per_request"].items())
            print(f"  {design} {phase}: total {r['cpu_ms_per_request_total']} = {parts}")
    if "single_process" in results:
        print("\nServe / one process:")
        for phase in ("cache_miss", "cache_hit", "noop_health"):
            a, b = results["ray_serve"][phase], results["single_process"][phase]
            print(
                f"  {phase}: p50 {a['p50_ms'] / b['p50_ms']:.2f}×, p99 {a['p99_ms'] / b['p99_ms']:.2f}×, "
                f"throughput {a['throughput_rps'] / max(b['throughput_rps'], 1e-9):.2f}×, "
                f"CPU per request {a['cpu_ms_per_request_total'] / max(b['cpu_ms_per_request_total'], 1e-9):.2f}×"
            )


if __name__ == "__main__":
    main()
