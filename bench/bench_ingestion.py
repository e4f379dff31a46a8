"""Ingestion throughput: 1 Hz, 8-channel load cycles through the running HDX app.

Two ways to run it:

  # against an app that is already up (an engineer's API key with write access to the system)
  .venv/bin/python bench/bench_ingestion.py --url http://127.0.0.1:8000 --api-key hdx_... --system rig-01

  # self-contained: a fresh PostgreSQL database, a local Ray cluster and the Serve app
  .venv/bin/python bench/bench_ingestion.py --local \
      --postgres-admin-url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres

It sends ``--batch`` cycles per request from ``--concurrency`` clients for
``--duration`` seconds (idempotency keys never repeat, so every cycle is a new
row) and prints cycles/s and request latency percentiles. ``--diagnose`` also
runs the ensemble on every stored cycle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ready import wait_ready

CHANNELS = ("TS1", "TS2", "TS3", "TS4", "VS1", "CE", "CP", "SE")


def make_cycles(n: int, seed: int = 0) -> list[dict[str, list[float]]]:
    """Realistic 1 Hz cycles from the rig simulator (60 samples per channel)."""
    from hydraulics.simulator import simulate_cycle

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        cycle = simulate_cycle(cooler=100, valve=100, pump=0, accumulator=130, rng=int(rng.integers(1 << 30)))
        out.append({c: cycle[c].round(3).tolist() for c in CHANNELS})
    return out


async def run_load(
    url: str, headers: dict, system: str, *, batch: int, concurrency: int, duration_s: float, diagnose: bool
) -> dict:
    templates = make_cycles(16)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    counter = 0
    latencies: list[float] = []
    stored = errors = 0

    def next_batch() -> dict:
        nonlocal counter
        cycles = []
        for _ in range(batch):
            counter += 1
            cycles.append(
                {
                    "idempotency_key": f"bench-{counter}",
                    "started_at": (t0 + timedelta(seconds=60 * counter)).isoformat(),
                    "sensor_data": templates[counter % len(templates)],
                }
            )
        return {"system_id": system, "cycles": cycles, "diagnose": diagnose}

    async def client(http: httpx.AsyncClient, deadline: float) -> None:
        nonlocal stored, errors
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            r = await http.post("/api/v1/ingestion/cycles", json=next_batch(), headers=headers)
            latencies.append((time.perf_counter() - start) * 1000)
            if r.status_code == 200:
                stored += r.json()["stored"]
            else:
                errors += 1
                print(f"HTTP {r.status_code}: {r.text[:200]}", file=sys.stderr)

    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        await http.post("/api/v1/ingestion/cycles", json=next_batch(), headers=headers)  # warm-up, not counted
        start = time.perf_counter()
        await asyncio.gather(*(client(http, start + duration_s) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "cycles_stored": stored,
        "seconds": round(elapsed, 2),
        "cycles_per_s": round(stored / elapsed, 1),
        "requests": len(latencies),
        "errors": errors,
        "batch": batch,
        "concurrency": concurrency,
        "diagnose": diagnose,
        "latency_ms": {
            "p50": round(statistics.median(latencies), 1),
            "p95": round(latencies[int(0.95 * (len(latencies) - 1))], 1),
            "max": round(latencies[-1], 1),
        },
    }


async def _setup_local_db(admin_url: str) -> str:
    from sqlalchemy.engine import make_url

    from storage.db import create_engine

    name = f"hdx_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as c:
        await c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    await admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


async def _drop_local_db(admin_url: str, url: str) -> None:
    from sqlalchemy.engine import make_url

    from storage.db import create_engine

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as c:
        await c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    await admin.dispose()


async def _seed(url: str) -> tuple[str, str]:
    """An enterprise-tier engineer with an API key for a new system."""
    from auth.api_keys import create_api_key
    from auth.passwords import hash_password
    from storage.db import Database, migrate
    from storage.repositories import systems as systems_repo
    from storage.repositories import users as users_repo

    await migrate(url)
    db = Database(url)
    async with db.sessionmaker() as s:
        user = await users_repo.create_user(
            s, username="bench", password_hash=hash_password("bench-password-1"), role="engineer", tier="enterprise"
        )
        await systems_repo.create_system(s, system_id="bench-rig", name="bench rig", owner_id=user.id)
        _, plaintext = await create_api_key(s, owner=user, name="bench", system_ids=["bench-rig"])
        await s.commit()
    await db.dispose()
    return "bench-rig", plaintext


def run_local(args) -> dict:
    import ray
    from ray import serve

    home = Path(tempfile.mkdtemp(prefix="hdx_bench_"))
    db_url = asyncio.run(_setup_local_db(args.postgres_admin_url))
    env = {"HDX_HOME": str(home), "HDX_DEV_MODE": "true", "HDX_DATABASE_URL": db_url, "OMP_NUM_THREADS": "1"}
    os.environ.update(env)
    try:
        from tests.fixtures.serve_app import train_test_bundles  # small real bundles, as the tests use

        train_test_bundles(str(home / "models"))
        system, key = asyncio.run(_seed(db_url))
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
        port = 18_000 + os.getpid() % 1000
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        from deployments.builder import app_from_serve_config

        serve.run(
            app_from_serve_config(assistant=False, profile_versions={"uci-1hz": "test-v1"}),
            name="hdx-bench",
            route_prefix="/",
        )
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        return asyncio.run(
            run_load(
                url,
                {"X-API-Key": key},
                system,
                batch=args.batch,
                concurrency=args.concurrency,
                duration_s=args.duration,
                diagnose=args.diagnose,
            )
        )
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        asyncio.run(_drop_local_db(args.postgres_admin_url, db_url))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url")
    p.add_argument("--api-key")
    p.add_argument("--system")
    p.add_argument("--local", action="store_true", help="start Ray, Serve and a fresh PostgreSQL database")
    p.add_argument("--postgres-admin-url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--diagnose", action="store_true")
    args = p.parse_args()
    if args.local:
        result = run_local(args)
    else:
        if not (args.url and args.api_key and args.system):
            p.error("--url, --api-key and --system are needed unless --local")
        result = asyncio.run(
            run_load(
                args.url,
                {"X-API-Key": args.api_key},
                args.system,
                batch=args.batch,
                concurrency=args.concurrency,
                duration_s=args.duration,
                diagnose=args.diagnose,
            )
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
