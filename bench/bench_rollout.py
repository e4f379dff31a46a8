"""A code rollout under load: what clients see while every replica is replaced.

    bash scripts/quickstart.sh                     # the app on :8000, in another terminal
    RAY_AUTH_MODE=token HDX_BENCH_PASSWORD=<admin password> \\
        python -m bench.bench_rollout --config serve_config.yaml
    ... --no-surge                                 # the same with Serve's default rollout

Deploys a copy of ``--config`` with one more variable in the app's ``runtime_env``:
Serve takes that as a new code version (as it would a new image) and replaces every
replica. While it does, ``--clients`` clients post uncached diagnoses, one after
another with ``--pause-s`` between them. The run ends ``--settle-s`` after
``serve status`` shows the app RUNNING with no replica starting or stopping.
``--no-surge`` sets ``max_surge_percent: 0`` on every deployment of the copy: Serve
then stops each old replica before starting its replacement.

Prints answers by status, degraded answers (a model missing) and latency
p50/p99/max over the whole run. Nothing asserts: the figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import yaml

from bench.bench_serve import simulated_bodies

SERVE = str(Path(sys.executable).with_name("serve"))  # the CLI beside this Python


def rollout_config(config_path: str, mark: str, surge: bool) -> str:
    """A copy of the config that Serve sees as new code; returns its path."""
    config = yaml.safe_load(Path(config_path).read_text())
    for app in config["applications"]:
        app.setdefault("runtime_env", {}).setdefault("env_vars", {})["HDX_ROLLOUT_MARK"] = mark
        if not surge:
            for deployment in app.get("deployments", []):
                deployment["max_surge_percent"] = 0
    fd, path = tempfile.mkstemp(prefix="hdx-rollout-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return path


def settled(app: str) -> bool:
    """``serve status``: the app RUNNING and no replica of it starting, stopping or updating."""
    out = subprocess.run([SERVE, "status"], capture_output=True, text=True, check=True).stdout
    status = yaml.safe_load(out)["applications"][app]
    busy = {"STARTING", "STOPPING", "UPDATING", "RECOVERING", "PENDING_MIGRATION"}
    return status["status"] == "RUNNING" and not any(
        busy & set(d.get("replica_states") or {}) for d in status["deployments"].values()
    )


async def client(
    base: str,
    headers: dict,
    bodies: list[dict],
    pause_s: float,
    stop: asyncio.Event,
    tally: collections.Counter,
    latencies: list[float],
    failures: list[str],
) -> None:
    async with aiohttp.ClientSession(base_url=base, headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as http:
        i = 0
        while not stop.is_set():
            start = time.perf_counter()
            async with http.post("/api/v1/diagnostics/predict", json=bodies[i % len(bodies)]) as r:
                body = await r.json(content_type=None)
            latencies.append(time.perf_counter() - start)
            if r.status == 200 and body["models_failed"]:
                tally["200, a model missing"] += 1
                failures.append(str(body["models_failed"])[:300])
            else:
                tally[str(r.status)] += 1
                if r.status != 200:
                    failures.append(str(body)[:300])
            i += 1
            await asyncio.sleep(pause_s)


def login(base: str, username: str) -> dict:
    token = httpx.post(
        f"{base}/api/v1/auth/token",
        timeout=30,
        json={"username": username, "password": os.environ["HDX_BENCH_PASSWORD"]},
    )
    token.raise_for_status()
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


async def main(args: argparse.Namespace) -> None:
    headers = login(args.base, args.username)
    bodies = simulated_bodies(args.system_id, 50)
    config = rollout_config(args.config, mark=str(time.time_ns()), surge=not args.no_surge)
    stop, tally, latencies, failures = asyncio.Event(), collections.Counter(), [], []
    clients = [
        asyncio.create_task(
            client(args.base, headers, bodies[k :: args.clients], args.pause_s, stop, tally, latencies, failures)
        )
        for k in range(args.clients)
    ]
    await asyncio.sleep(args.settle_s)
    started = time.perf_counter()
    await asyncio.to_thread(subprocess.run, [SERVE, "deploy", config], check=True, capture_output=True)
    await asyncio.sleep(5)  # the controller starts the rollout on its next loop
    while not await asyncio.to_thread(settled, args.app):
        await asyncio.sleep(2)
    rollout_s = time.perf_counter() - started
    await asyncio.sleep(args.settle_s)
    stop.set()
    await asyncio.gather(*clients)
    os.unlink(config)
    lat = np.array(latencies) * 1000
    print(f"rollout ({'no surge' if args.no_surge else 'surge'}): {rollout_s:.0f} s until settled")
    print(f"answers: {sum(tally.values())} {dict(tally)}")
    print(f"latency ms: p50 {np.percentile(lat, 50):.0f}  p99 {np.percentile(lat, 99):.0f}  max {lat.max():.0f}")
    for failure in failures[:5]:
        print("  ", failure)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="serve_config.yaml", help="the config the app runs now")
    parser.add_argument("--base", default="http://127.0.0.1:8000")
    parser.add_argument("--app", default="hdx")
    parser.add_argument("--username", default="admin")
    parser.add_argument("--system-id", default="rig-01")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--pause-s", type=float, default=0.1)
    parser.add_argument("--settle-s", type=float, default=5.0)
    parser.add_argument("--no-surge", action="store_true", help="Serve's default: stop old replicas first")
    asyncio.run(main(parser.parse_args()))
