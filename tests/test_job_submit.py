"""`ray job submit --working-dir .` runs batch prediction on a real, token-authenticated head.

The head runs on free ports in its own process group and temp dir, so it never
touches another Ray on this machine, and it is stopped by signalling that group
(never `ray stop`, which would kill every Ray process of every user here).
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from configs.settings import PROJECT_ROOT
from hydraulics.features import get_feature_set
from hydraulics.simulator import simulate_dataset
from tests.fixtures.serve_app import train_test_bundles

pytestmark = pytest.mark.ray

BIN = Path(sys.executable).parent
EXCLUDES = [".venv", "var", ".git", "**/__pycache__", ".pytest_cache", "*.egg-info", "docs", "bench"]
TERMINAL = ("succeeded", "failed", "stopped")  # `ray job status` prints e.g. "Job 'x' succeeded"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def head(tmp_path):
    """A local head with token auth; yields (dashboard address, env for CLI calls)."""
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
    }
    env.pop("RAY_ADDRESS", None)
    gcs, dash, client, agent, agent_grpc, rt_agent, metrics = free_ports(7)
    temp_dir = tempfile.mkdtemp(prefix="hdxjob", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        f"--port={gcs}",
        "--num-cpus=2",
        "--include-dashboard=true",
        f"--dashboard-port={dash}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={rt_agent}",
        f"--metrics-export-port={metrics}",
        f"--temp-dir={temp_dir}",
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while (
            subprocess.run(
                [str(BIN / "ray"), "job", "list", "--address", address], env=env, capture_output=True
            ).returncode
            != 0
        ):
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"head did not come up: {(tmp_path / 'head.log').read_text()[-3000:]}")
            time.sleep(2)
        yield address, env
    finally:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        shutil.rmtree(temp_dir, ignore_errors=True)


def tiny_inputs(root: Path) -> tuple[Path, Path]:
    channels = list(get_feature_set("rig_1hz").channels)
    train_test_bundles(str(root / "models"), ("uci-1hz",), versions=("v-job",), seed=51)
    cycles = simulate_dataset(1, seed=52, channels=channels).subset(range(6))
    source = root / "cycles.parquet"
    rows = [
        {"cycle_id": int(c), "system_id": "rig-job", **{ch: cycles.channels[ch][i].tolist() for ch in channels}}
        for i, c in enumerate(cycles.cycle_ids)
    ]
    pq.write_table(pa.Table.from_pylist(rows), source)
    return root / "models", source


def ray_cli(args: list[str], env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, cwd=PROJECT_ROOT, **kw)


def test_ray_job_submit_runs_batch_predict(head, tmp_path):
    address, env = head
    store, source = tiny_inputs(tmp_path)
    out = tmp_path / "out"

    wrong = ray_cli(["job", "list", "--address", address], {**env, "RAY_AUTH_TOKEN": "not-the-token"})
    assert wrong.returncode != 0, "the head accepted a wrong token"

    job_id = f"hdx-batch-{secrets.token_hex(3)}"
    submit = ray_cli(
        [
            "job",
            "submit",
            "--address",
            address,
            "--submission-id",
            job_id,
            "--no-wait",
            "--working-dir",
            ".",
            "--runtime-env-json",
            json.dumps({"excludes": EXCLUDES}),
            "--",
            "python",
            "-m",
            "pipelines.batch_predict",
            "--source",
            str(source),
            "--output",
            str(out),
            "--store-uri",
            str(store),
            "--batch-size",
            "4",
            "--workers",
            "1",
        ],
        env,
        timeout=120,
    )
    assert submit.returncode == 0, submit.stderr[-3000:]

    deadline, status = time.time() + 240, ""
    while time.time() < deadline:
        status = ray_cli(["job", "status", "--address", address, job_id], env).stdout.lower()
        if any(f"{job_id}' {s}" in status for s in TERMINAL):
            break
        time.sleep(3)
    logs = ray_cli(["job", "logs", "--address", address, job_id], env).stdout
    assert f"{job_id}' succeeded" in status, f"{status}\n{logs[-4000:]}"
    assert "rows in: 6  predicted: 6  rejected: 0" in logs
    predictions = pq.read_table(out / "predictions").to_pandas()
    assert sorted(predictions["cycle_id"]) == list(range(6))
    assert (predictions["model_version_adaptive"] == "v-job").all()
