"""The README's cluster path on three Ray nodes in network namespaces of this machine.

Run as root from the repository root, after ``hdx bootstrap`` (or the quick start) has
put model bundles and a retrieval index into the stores (4–6 minutes on 2 cores):

    .venv/bin/python -m bench.bench_cluster                 # the quick start's config: one Ingress
    .venv/bin/python -m bench.bench_cluster --victim other  # kill the worker without the Ingress
    .venv/bin/python -m bench.bench_cluster --redis         # a private Redis: two Ingress replicas
    .venv/bin/python -m bench.bench_cluster --keep-temp     # leave the nodes' logs in /tmp/hdxc-*

In order:

1. Network: a bridge ``hdxc-br`` (10.213.0.1/24) in this namespace and three network
   namespaces, ``hdxc-head`` (10.213.0.2), ``hdxc-w1`` (.3) and ``hdxc-w2`` (.4), each
   joined to the bridge by a veth pair, ``lo`` up in each.
2. Credentials: ``hdx bootstrap`` in a temporary ``HDX_HOME`` (its own SQLite database;
   the model and index stores of this checkout), then ``hdx keys create`` for the client.
3. Nodes, each started in its namespace as the README says, ``eval "$(hdx ray-env)"``
   first: the head with ``ray start --head --num-cpus=0`` (GCS on 6390, dashboard on
   8266), the workers with ``ray start --address=10.213.0.2:6390`` and 4 logical CPUs
   each (the app's replicas take 2.7 in all; the batch job's two actors 1 each and its
   file listing 1 more, which must fit beside the replicas on one worker).
4. Serve: ``hdx serve-config`` writes the config the quick start serves (one Ingress
   replica: no Redis); the copy for the cluster binds ``http_options.host`` to 0.0.0.0
   and runs two replicas at least of the ensemble and of each model deployment. With
   ``--redis`` a redis-server runs in the head's namespace (port 6391, memory only),
   every node gets ``HDX_REDIS_URL``, and the Ingress runs two replicas too. Then
   ``serve deploy <copy> --address http://10.213.0.2:8266`` and ``serve status``, and the
   replicas of each deployment counted per node.
5. Batch job: ``ray job submit --working-dir . -- python -m pipelines.batch_predict
   ... --workers 2`` on simulated cycles; its actors counted per node (state API), and
   the working-directory package the head unpacked measured.
6. Node kill: a client posts uncached predictions to the head's HAProxy at ``--rate``
   requests/s, retrying once after a connection error or a 5xx (the documented client
   retry, docs/reliability.md); after ``--before-s`` every process of one worker (by
   default the one that holds the Ingress replica) gets SIGKILL. The run waits until the
   GCS marks the node dead and Serve runs every deployment on the other worker again,
   then keeps the load for ``--after-s``. Answers are counted per phase and status.

Prints what it ran, the placement, the counts and the timings, then the checks; exits 1
when a check fails. Nothing is timed against a limit: the timings depend on the machine.

Other Ray users of this machine are left alone: the nodes listen in their own network
namespaces, each node has its own ``--temp-dir`` (so ``/tmp/ray/ray_current_cluster`` is
never written), HAProxy's files are moved off ``/tmp/haproxy-serve`` with the
``RAY_SERVE_HAPROXY_*`` path variables (Ray 2.60 takes them from the Serve controller's
process, on the head, for every node's HAProxy, and adds a folder per node id; each node
gets its own values anyway), token authentication uses a token file of this run,
and the nodes are stopped by killing the processes in their namespaces (never ``ray
stop``, which stops every Ray on the machine). Namespaces, bridge, processes and the temp
dir are removed at the end, also when a step fails or the run is interrupted.
"""

from __future__ import annotations

import argparse
import atexit
import copy
import json
import math
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import yaml

from bench.bench_serve import simulated_bodies
from bench.ready import wait_ready
from configs.settings import PROJECT_ROOT, get_settings
from diagnosis.registry import FAMILIES

BIN = Path(sys.executable).parent
PREFIX = "hdxc"
BRIDGE = f"{PREFIX}-br"
SUBNET = "10.213.0"
BRIDGE_IP = f"{SUBNET}.1"
HEAD_IP = f"{SUBNET}.2"
GCS_PORT = 6390  # not 6379: the shared Redis of this machine
DASHBOARD_PORT = 8266  # not 8265: another engineer's head may use it
HTTP_PORT = 8000  # serve_config.yaml's http_options.port, on every node
METRICS_PORT = 8080
DASHBOARD = f"http://{HEAD_IP}:{DASHBOARD_PORT}"
APP = "hdx"
PREDICT = "/api/v1/diagnostics/predict"
DEMO_SYSTEM = "rig-01"  # created by `hdx bootstrap`
# What `ray job submit --working-dir .` leaves out (the README's list; .gitignore is honoured too).
JOB_EXCLUDES = [".venv", "var", ".git", "**/__pycache__", ".pytest_cache", "*.egg-info", "docs", "bench"]
# Ray 2.60 puts HAProxy's files under /tmp/haproxy-serve/<node id>/ unless these say otherwise
# (ray/serve/_private/constants.py; haproxy.py adds the node id to each path). Every node's
# HAProxy ends up with the head's values (seen in every run), so the head's matter.
HAPROXY_FILES = {
    "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "haproxy.cfg",
    "RAY_SERVE_HAPROXY_SOCKET_PATH": "admin.sock",
    "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": "server-state",
    "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": "metrics.sock",
}
SHARED_HAPROXY_DIR = Path("/tmp/haproxy-serve")
SHARED_RAY_ADDRESS_FILE = Path("/tmp/ray/ray_current_cluster")
# Deployments that get replicas on both workers (with --redis the Ingress too; without Redis
# it stays at one); the assistant's deployments keep theirs.
SPREAD = ["DiagnosisEnsemble", *(spec.deployment for spec in FAMILIES.values())]
REDIS_PORT = 6391  # a private redis-server in the head's namespace (--redis); not the shared 6379


@dataclass(frozen=True)
class Node:
    name: str  # head, w1, w2
    ip: str
    cpus: int

    @property
    def netns(self) -> str:
        return f"{PREFIX}-{self.name}"

    @property
    def veth_bridge(self) -> str:
        """The veth end on the bridge, in this namespace (interface names: 15 characters at most)."""
        return f"{self.netns}-b"

    @property
    def veth_node(self) -> str:
        return f"{self.netns}-n"


def cluster_nodes(worker_cpus: int) -> list[Node]:
    return [Node("head", HEAD_IP, 0), Node("w1", f"{SUBNET}.3", worker_cpus), Node("w2", f"{SUBNET}.4", worker_cpus)]


# --- pure helpers (tests/test_bench_cluster.py) ------------------------------------------


def run_env(base: Mapping[str, str], root: Path, model_store: str, index_store: str) -> dict[str, str]:
    """The environment of every process of this run: the caller's, less its ``HDX_*`` and
    ``RAY_*`` variables, plus the quick start's development settings, this run's home and
    the given stores, and token authentication with this run's token file."""
    env = {k: v for k, v in base.items() if not k.startswith(("HDX_", "RAY_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{base.get('PATH', '')}",
        HDX_DEV_MODE="true",
        HDX_HOME=str(root / "home"),
        HDX_MODEL_STORE_URI=model_store,
        HDX_INDEX_STORE_URI=index_store,
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(root / "auth_token"),
    )
    return env


HAPROXY_MAX_SOCKET_PATH = 97  # HAProxy 2.8 refuses longer ones ("socket path ... too long")
NODE_ID_CHARS = 56  # Ray puts each file in a folder named by the node id


def haproxy_dir(root: Path, node: Node) -> Path:
    """The node's HAProxy folder; ``ValueError`` when its socket paths would be too long."""
    folder = root / f"hp-{node.name}"
    longest = len(str(folder)) + 1 + NODE_ID_CHARS + 1 + max(len(f) for f in HAPROXY_FILES.values())
    if longest > HAPROXY_MAX_SOCKET_PATH:
        raise ValueError(f"HAProxy socket paths under {folder}: {longest} bytes, max {HAPROXY_MAX_SOCKET_PATH}")
    return folder


def node_env(env: Mapping[str, str], root: Path, node: Node) -> dict[str, str]:
    """``env`` with HAProxy's config, sockets and server state in a folder of this node (of the
    head, in effect: see ``HAPROXY_FILES``), never under /tmp/haproxy-serve."""
    folder = haproxy_dir(root, node)
    return {
        **env,
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(folder),
        **{var: str(folder / name) for var, name in HAPROXY_FILES.items()},
    }


def ray_start_args(node: Node, root: Path, object_store_bytes: int) -> list[str]:
    """``ray start`` for ``node`` (``--block``: the process lives as long as the node)."""
    common = [
        "--block",
        f"--node-ip-address={node.ip}",
        f"--num-cpus={node.cpus}",
        f"--metrics-export-port={METRICS_PORT}",
        f"--object-store-memory={object_store_bytes}",
        f"--temp-dir={root / node.name}",
    ]
    if node.name == "head":
        head = ["--head", f"--port={GCS_PORT}", "--include-dashboard=true", "--dashboard-host=0.0.0.0"]
        return ["ray", "start", *head, f"--dashboard-port={DASHBOARD_PORT}", *common]
    return ["ray", "start", f"--address={HEAD_IP}:{GCS_PORT}", *common]


def cluster_serve_config(config: dict, min_replicas: int, spread: list[str]) -> tuple[dict, list[str]]:
    """The quick start's Serve config made for this cluster, and each change as a line:
    HTTP on every interface (HAProxy on one node forwards to Ingress replicas on others)
    and at least ``min_replicas`` replicas of each deployment named in ``spread``."""
    config = copy.deepcopy(config)
    changes = []
    host = config.setdefault("http_options", {}).get("host")
    if host != "0.0.0.0":
        config["http_options"]["host"] = "0.0.0.0"
        changes.append(f"http_options.host: {host} -> 0.0.0.0")
    for app in config["applications"]:
        for deployment in app.get("deployments", []):
            if deployment["name"] not in spread:
                continue
            scaling = deployment.get("autoscaling_config")
            if scaling is None:
                old = deployment.get("num_replicas", 1)
                if old < min_replicas:
                    deployment["num_replicas"] = min_replicas
                    changes.append(f"{deployment['name']}.num_replicas: {old} -> {min_replicas}")
                continue
            old = scaling.get("min_replicas", 1)
            if old < min_replicas:
                scaling["min_replicas"] = min_replicas
                scaling["max_replicas"] = max(scaling.get("max_replicas", min_replicas), min_replicas)
                changes.append(f"{deployment['name']}.autoscaling_config.min_replicas: {old} -> {min_replicas}")
    return config, changes


def replicas_by_node(details: dict, name_by_ip: Mapping[str, str], app: str = APP) -> dict[str, Counter]:
    """RUNNING replicas of each deployment of ``app`` in Serve's details, counted by node name."""
    deployments = details.get("applications", {}).get(app, {}).get("deployments", {})
    return {
        name: Counter(
            name_by_ip.get(r.get("node_ip"), str(r.get("node_ip"))) for r in d["replicas"] if r["state"] == "RUNNING"
        )
        for name, d in deployments.items()
    }


@dataclass
class Outcome:
    """One prediction request as the client saw it."""

    phase: str  # when the answer came
    sent_s: float  # since the load started
    latency_s: float  # both tries together
    status: int | str  # the final HTTP status, or the transport error's class name
    first: int | str | None = None  # the first try's, when it was retried
    degraded: bool = False  # answered by fewer than all models


def summarize(outcomes: list[Outcome]) -> dict[str, dict]:
    """Per phase (in order of first appearance) and in total: requests, answers, retries
    with what made them, failures after the retry by status, degraded answers, latency."""
    phases: dict[str, list[Outcome]] = {}
    for o in outcomes:
        phases.setdefault(o.phase, []).append(o)
    phases["total"] = list(outcomes)
    out = {}
    for phase, items in phases.items():
        latencies = np.array([o.latency_s for o in items]) if items else np.zeros(1)
        out[phase] = {
            "requests": len(items),
            "answered": sum(o.status == 200 for o in items),
            "retried": sum(o.first is not None for o in items),
            "retried_after": dict(Counter(str(o.first) for o in items if o.first is not None)),
            "failed": dict(Counter(str(o.status) for o in items if o.status != 200)),
            "degraded": sum(o.degraded for o in items),
            "p50_ms": round(float(np.percentile(latencies, 50)) * 1000),
            "max_ms": round(float(latencies.max()) * 1000),
        }
    return out


def longest_gap_s(outcomes: list[Outcome], since_s: float) -> float:
    """The longest time after ``since_s`` with no request sent that was then answered 200."""
    answered = sorted(o.sent_s for o in outcomes if o.status == 200 and o.sent_s >= since_s)
    points = [since_s, *answered]
    return round(max(b - a for a, b in zip(points, points[1:])), 1) if answered else float("inf")


# --- running things ------------------------------------------------------------------------


class Teardown:
    """What this run set up, undone in reverse order, once: from ``finally``, ``atexit``
    or a signal. A step that fails is reported and the others still run."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []
        self._done = False

    def add(self, what: str, undo: Callable[[], object]) -> None:
        self._steps.append((what, undo))

    def __call__(self) -> None:
        if self._done:
            return
        self._done = True
        for what, undo in reversed(self._steps):
            try:
                undo()
            except Exception as exc:  # keep going: the next step may still free something
                print(f"cleanup: {what} failed: {exc}", file=sys.stderr)


def show(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def sh(cmd: list[str], env: Mapping[str, str] | None = None, timeout: float = 120, check=True, quiet=False):
    """Run ``cmd`` here (the root namespace), print it, return the finished process."""
    if not quiet:
        print(f"$ {show(cmd)}", flush=True)
    done = subprocess.run(cmd, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{show(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh(["ip", *args], check=check, quiet=True)


def netns_pids(netns: str) -> list[int]:
    done = ip("netns", "pids", netns, check=False)
    return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []


def kill_netns(netns: str, sig: int = signal.SIGKILL, timeout_s: float = 15) -> int:
    """Send ``sig`` to every process in ``netns`` until none is left; how many were signalled."""
    signalled: set[int] = set()
    deadline = time.time() + timeout_s
    while (pids := netns_pids(netns)) and time.time() < deadline:
        for pid in pids:
            try:
                os.kill(pid, sig)
                signalled.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    if netns_pids(netns):
        raise RuntimeError(f"processes still in {netns} after {timeout_s:g} s: {netns_pids(netns)}")
    return len(signalled)


def stop_netns(netns: str) -> None:
    """SIGTERM to every process in ``netns`` (Ray shuts down its node), SIGKILL to what is left."""
    try:
        kill_netns(netns, signal.SIGTERM, timeout_s=10)
    except RuntimeError:
        kill_netns(netns, signal.SIGKILL)


def refuse_leftovers() -> None:
    """Stop before touching anything when names of this script are taken (another run)."""
    taken = [n for n in ip("netns", "list").stdout.split() if n.startswith(f"{PREFIX}-")]
    taken += [line.split(":")[1].strip().split("@")[0] for line in ip("-o", "link").stdout.splitlines()]
    taken = [n for n in taken if n.startswith(f"{PREFIX}-")]
    if taken:
        raise SystemExit(
            f"{', '.join(sorted(set(taken)))} exist: another run of this script, or one killed before its "
            f"cleanup. Stop its processes (`ip netns pids <ns>`), then `ip netns del <ns>` and `ip link del {BRIDGE}`."
        )


def make_network(nodes: list[Node], teardown: Teardown) -> None:
    ip("link", "add", BRIDGE, "type", "bridge")
    teardown.add(f"delete bridge {BRIDGE}", lambda: ip("link", "del", BRIDGE))
    ip("addr", "add", f"{BRIDGE_IP}/24", "dev", BRIDGE)
    ip("link", "set", BRIDGE, "up")
    for node in nodes:
        ip("netns", "add", node.netns)
        # Undone in reverse: first every process in the namespace, then the namespace (with its veth).
        teardown.add(f"delete namespace {node.netns}", lambda n=node: ip("netns", "del", n.netns))
        teardown.add(f"stop the processes in {node.netns}", lambda n=node: stop_netns(n.netns))
        ip("link", "add", node.veth_bridge, "type", "veth", "peer", "name", node.veth_node, "netns", node.netns)
        ip("link", "set", node.veth_bridge, "master", BRIDGE, "up")
        ip("-n", node.netns, "addr", "add", f"{node.ip}/24", "dev", node.veth_node)
        ip("-n", node.netns, "link", "set", node.veth_node, "up")
        ip("-n", node.netns, "link", "set", "lo", "up")
    print(f"network: bridge {BRIDGE} {BRIDGE_IP}/24; " + ", ".join(f"{n.netns} {n.ip}" for n in nodes))


def start_node(node: Node, root: Path, env: Mapping[str, str], object_store_bytes: int) -> None:
    """``eval "$(hdx ray-env)" && ray start ...`` in the node's namespace, as the README says."""
    script = f'eval "$(hdx ray-env)" && exec {show(ray_start_args(node, root, object_store_bytes))}'
    print(f"[{node.netns}]$ {script}", flush=True)
    log = open(root / f"{node.name}.log", "w")  # the node writes it for its whole life
    subprocess.Popen(
        ["ip", "netns", "exec", node.netns, "bash", "-c", script],
        env=node_env(env, root, node),
        cwd=PROJECT_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


class GaveUp(Exception):
    """Raised by a ``wait_for`` condition that will never hold (e.g. a failed deploy)."""


def start_redis(root: Path) -> str:
    """A private, memory-only redis-server in the head's namespace (``--redis``); its URL."""
    cmd = ["redis-server", "--bind", HEAD_IP, "--port", str(REDIS_PORT), "--save", "", "--appendonly", "no"]
    print(f"[{PREFIX}-head]$ {show(cmd)}", flush=True)
    log = open(root / "redis.log", "w")  # the server writes it for its whole life
    subprocess.Popen(["ip", "netns", "exec", f"{PREFIX}-head", *cmd], stdout=log, stderr=subprocess.STDOUT)

    def listening() -> bool:
        with socket.create_connection((HEAD_IP, REDIS_PORT), timeout=1):
            return True

    wait_for("redis-server", listening, 30, 0.5)
    return f"redis://{HEAD_IP}:{REDIS_PORT}/0"


def wait_for(what: str, condition: Callable[[], object], timeout_s: float, poll_s: float = 2) -> object:
    """Poll ``condition`` until it returns something true; raise naming ``what`` after the timeout."""
    deadline = time.time() + timeout_s
    last_error = None
    while time.time() < deadline:
        try:
            if value := condition():
                return value
        except GaveUp:
            raise
        except Exception as exc:  # the cluster may not answer yet
            last_error = exc
        time.sleep(poll_s)
    raise RuntimeError(f"{what}: not after {timeout_s:g} s (last error: {last_error})")


def alive_nodes() -> dict:
    """ALIVE nodes of the cluster (``NodeState``) by IP: the state API, through the dashboard."""
    from ray.util.state import list_nodes

    return {n.node_ip: n for n in list_nodes(address=DASHBOARD, detail=True) if n.state == "ALIVE"}


def serve_details() -> dict:
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    return ServeSubmissionClient(DASHBOARD).get_serve_details()


def app_running(details: dict) -> bool:
    """The app RUNNING with every deployment HEALTHY; ``GaveUp`` when its deploy failed."""
    app = details.get("applications", {}).get(APP)
    if app and app["status"] == "DEPLOY_FAILED":
        raise GaveUp(f"{APP}: DEPLOY_FAILED: {app.get('message', '')[-2000:]}")
    return (
        bool(app) and app["status"] == "RUNNING" and all(d["status"] == "HEALTHY" for d in app["deployments"].values())
    )


def serve_status(env: Mapping[str, str]) -> dict:
    done = sh([str(BIN / "serve"), "status", "--address", DASHBOARD], env=env)
    print(done.stdout.rstrip())
    return yaml.safe_load(done.stdout)


def print_placement(title: str, placement: Mapping[str, Counter], names: list[str]) -> None:
    print(f"\n{title}")
    print(f"  {'':<20}" + "".join(f"{n:>6}" for n in names))
    for deployment, counts in placement.items():
        print(f"  {deployment:<20}" + "".join(f"{counts.get(n, 0):>6}" for n in names))


# --- the steps -----------------------------------------------------------------------------


def api_key(env: Mapping[str, str]) -> str:
    """The quick start's bootstrap in this run's home, and an API key for the demo system."""
    sh([str(BIN / "hdx"), "bootstrap"], env=env, timeout=300)
    done = sh(
        [str(BIN / "hdx"), "keys", "create", "--owner", "admin", "--name", "bench-cluster", "--systems", DEMO_SYSTEM],
        env=env,
    )
    return done.stdout.strip().splitlines()[-1]


def deploy(root: Path, env: Mapping[str, str], min_replicas: int, spread: list[str], timeout_s: float) -> float:
    """``hdx serve-config``, the cluster's copy, ``serve deploy`` and the wait for RUNNING (seconds)."""
    quickstart = root / "serve_config.yaml"
    sh([str(BIN / "hdx"), "serve-config", "--out", str(quickstart)], env=env)
    config, changes = cluster_serve_config(yaml.safe_load(quickstart.read_text()), min_replicas, spread)
    path = root / "serve_config.cluster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    print("cluster copy of the config: " + "; ".join(changes))
    started = time.perf_counter()
    sh([str(BIN / "serve"), "deploy", str(path), "--address", DASHBOARD], env=env)
    wait_for("the app RUNNING", lambda: app_running(serve_details()), timeout_s, poll_s=3)
    return time.perf_counter() - started


def batch_job(root: Path, env: Mapping[str, str], model_store: str, cycles: int, timeout_s: float) -> dict:
    """Simulated cycles as Parquet, ``ray job submit`` of batch prediction with two actors."""
    from diagnosis.profiles import builtin_profile
    from hydraulics.loaders import save_table
    from hydraulics.simulator import simulate_dataset

    source, output = root / "job" / "cycles.parquet", root / "job" / "out"
    source.parent.mkdir(parents=True)
    channels = list(builtin_profile(get_settings().default_profile).channels)
    save_table(simulate_dataset(math.ceil(cycles / 144), seed=7, channels=channels).subset(range(cycles)), str(source))
    job_id = f"hdxc-batch-{secrets.token_hex(3)}"
    submit = [
        str(BIN / "ray"), "job", "submit", "--address", DASHBOARD, "--submission-id", job_id,
        "--working-dir", ".", "--runtime-env-json", json.dumps({"excludes": JOB_EXCLUDES}), "--",
        "python", "-m", "pipelines.batch_predict", "--source", str(source), "--output", str(output),
        "--store-uri", model_store, "--batch-size", "16", "--workers", "2", "--system-id", DEMO_SYSTEM,
    ]  # fmt: skip
    started = time.perf_counter()
    done = sh(submit, env=env, timeout=timeout_s, check=False)
    wall = time.perf_counter() - started
    (root / "job.log").write_text(done.stdout + done.stderr)
    status = sh([str(BIN / "ray"), "job", "status", "--address", DASHBOARD, job_id], env=env).stdout.strip()
    print(next((line for line in status.splitlines() if job_id in line), status or "(no status)"))
    summary_file = output / "summary.json"
    return {
        "job_id": job_id,
        "submit_rc": done.returncode,
        "succeeded": "succeeded" in status.lower(),
        "wall_s": wall,
        "summary": json.loads(summary_file.read_text()) if summary_file.exists() else {},
        "log_tail": (done.stdout + done.stderr)[-2000:],
    }


def job_actors_by_node(name_by_id: Mapping[str, str]) -> Counter:
    """Where the batch job's actor pool ran: its actors (alive or dead), counted by node name."""
    from ray.util.state import list_actors

    actors = list_actors(address=DASHBOARD, detail=True, limit=10_000, raise_on_missing_output=False)
    return Counter(
        name_by_id.get(a.node_id, a.node_id)
        for a in actors
        if "EnsemblePredictor" in f"{a.class_name} {a.repr_name}"  # MapWorker(MapBatches(EnsemblePredictor))
    )


def working_dir_package(head_temp: Path) -> dict:
    """The working directory as the head unpacked it for the job: size, files, what it left out."""
    found = head_temp.glob("session_latest/runtime_resources/working_dir_files/_ray_pkg_*")
    packages = [p for p in found if p.is_dir()]  # beside each: its .zip.lock
    files = [p for pkg in packages for p in pkg.rglob("*") if p.is_file()]
    top = {p.name for pkg in packages for p in pkg.iterdir()}
    return {
        "packages": len(packages),
        "files": len(files),
        "mib": round(sum(p.stat().st_size for p in files) / 2**20, 2),
        "excluded_present": sorted(top & {".venv", "var", ".git", "docs", "bench"}),
    }


class PredictionLoad:
    """``clients`` threads posting uncached predictions at ``rate`` requests/s in all,
    each request retried once after a connection error or a 5xx (after its
    ``Retry-After``, when it has one); every request is an ``Outcome`` of the phase
    in which its answer came (a request in flight when the node dies counts as the kill's)."""

    def __init__(self, base: str, key: str, rate: float, clients: int = 2) -> None:
        self.base, self.headers = base, {"X-API-Key": key}
        self.bodies = simulated_bodies(DEMO_SYSTEM, 16)
        self.interval = clients / rate
        self.phase = "before"
        self.outcomes: list[Outcome] = []
        self.started = time.perf_counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(k,), daemon=True) for k in range(clients)]

    def now(self) -> float:
        return time.perf_counter() - self.started

    def _post(self, http: httpx.Client, body: dict) -> httpx.Response | str:
        try:
            return http.post(PREDICT, json=body, headers=self.headers)
        except httpx.TransportError as exc:
            return type(exc).__name__

    def _client(self, k: int) -> None:
        with httpx.Client(base_url=self.base, timeout=60, trust_env=False) as http:
            n = 0
            while not self._stop.is_set():
                sent = self.now()
                body = self.bodies[(2 * n + k) % len(self.bodies)]
                answer, first = self._post(http, body), None
                if isinstance(answer, str) or answer.status_code >= 500:
                    first = answer if isinstance(answer, str) else answer.status_code
                    retry_after = 0.0 if isinstance(answer, str) else float(answer.headers.get("Retry-After", 0))
                    time.sleep(min(retry_after, 10))
                    answer = self._post(http, body)
                status = answer if isinstance(answer, str) else answer.status_code
                degraded = status == 200 and bool(answer.json().get("models_failed"))
                with self._lock:
                    self.outcomes.append(Outcome(self.phase, sent, self.now() - sent, status, first, degraded))
                n += 1
                # Each client keeps its own schedule (the two half an interval apart): one held
                # by a slow answer sends the requests it owes right after.
                due = self.started + k * self.interval / 2 + n * self.interval
                self._stop.wait(max(0.0, due - time.perf_counter()))

    def __enter__(self) -> PredictionLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(90)


def kill_under_load(key: str, nodes: list[Node], victim_name: str, args) -> dict:
    """The load, a worker's processes SIGKILLed, the wait for Serve to recover, the load again."""
    name_by_ip = {n.ip: n.name for n in nodes}
    victim = next(n for n in nodes if n.name == victim_name)
    timings: dict[str, float] = {}
    with PredictionLoad(f"http://{HEAD_IP}:{HTTP_PORT}", key, args.rate) as load:
        time.sleep(args.before_s)
        load.phase = "node_killed"
        t_kill = load.now()
        killed = kill_netns(victim.netns)
        print(f"SIGKILL to {killed} processes in {victim.netns} at t={t_kill:.1f} s of the load", flush=True)

        def node_dead() -> bool:
            return victim.ip not in alive_nodes()

        def recovered() -> bool:
            details = serve_details()
            on_victim = any(c.get(victim.name) for c in replicas_by_node(details, name_by_ip).values())
            return app_running(details) and not on_victim

        for what, condition in (("node_dead", node_dead), ("serve_recovered", recovered)):
            wait_for(what, condition, args.recover_timeout_s, poll_s=1)
            timings[f"kill_to_{what}"] = after = round(load.now() - t_kill, 1)
            print(f"{what}: {after} s after the kill", flush=True)
        load.phase = "after"
        time.sleep(args.after_s)
        placement = replicas_by_node(serve_details(), name_by_ip)
    outcomes = load.outcomes
    first_ok = min((o.sent_s + o.latency_s for o in outcomes if o.sent_s >= t_kill and o.status == 200), default=None)
    timings["kill_to_first_answer"] = round(first_ok - t_kill, 1) if first_ok is not None else float("inf")
    timings["longest_gap_without_answer"] = longest_gap_s(outcomes, t_kill)
    return {
        "timings": timings,
        "figures": summarize(outcomes),
        "placement_after": placement,
        "failures": [o for o in outcomes if o.status != 200][:10],
    }


class Report:
    """The checks and timings of a run, printed at the end."""

    def __init__(self) -> None:
        self.checks: list[tuple[str, bool, str]] = []
        self.timings: dict[str, float] = {}

    def check(self, what: str, ok: bool, detail: object = "") -> None:
        self.checks.append((what, bool(ok), str(detail)))

    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.checks)

    def print(self) -> None:
        print("\ntimings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in self.timings.items()))
        print("\nchecks:")
        for what, ok, detail in self.checks:
            print(f"  [{'ok' if ok else 'FAIL'}] {what}: {detail}")


def check_isolation(report: Report, root: Path, nodes: list[Node], node_ids: list[str], before: str | None) -> None:
    """That the run left the shared Ray address file and HAProxy folder alone, and where its
    HAProxy files went instead."""
    after = SHARED_RAY_ADDRESS_FILE.read_text() if SHARED_RAY_ADDRESS_FILE.exists() else None
    report.check("/tmp/ray/ray_current_cluster untouched", after == before, f"before {before!r}, after {after!r}")
    in_shared = [i[:8] for i in node_ids if (SHARED_HAPROXY_DIR / i).exists()]
    report.check("no folder of this cluster's nodes in /tmp/haproxy-serve", not in_shared, in_shared)
    own = [p for n in nodes for p in haproxy_dir(root, n).glob("*/*")]
    files = sorted({p.name for p in own if not p.name.endswith(".log")})  # less HAProxy's per-start logs
    folders = sorted({f"{p.parent.parent.name}/{p.parent.name[:8]}" for p in own})
    report.check("HAProxy's files in the run's own folders", "haproxy.cfg" in files, f"{folders}: {files}")
    address_files = [n.name for n in nodes if (root / n.name / "ray_current_cluster").exists()]
    report.check(
        "each node's ray_current_cluster in its own --temp-dir", len(address_files) == len(nodes), address_files
    )


def start_cluster(report: Report, root: Path, env: Mapping[str, str], nodes: list[Node], args) -> dict[str, str]:
    """The head, then the workers; node names by node id."""
    started = time.perf_counter()
    start_node(nodes[0], root, env, args.object_store_mib * 2**20)
    wait_for("the head's dashboard", alive_nodes, 180)
    report.timings["head_up"] = time.perf_counter() - started
    for node in nodes[1:]:
        start_node(node, root, env, args.object_store_mib * 2**20)
    alive = wait_for("three nodes", lambda: a if len(a := alive_nodes()) == len(nodes) else None, 180)
    report.timings["cluster_up"] = time.perf_counter() - started
    name_by_ip = {n.ip: n.name for n in nodes}
    cpus = {name_by_ip[ip]: a.resources_total.get("CPU", 0) for ip, a in alive.items()}
    report.check("three nodes, the head with CPU 0", cpus == {n.name: n.cpus for n in nodes}, cpus)
    name_by_id = {a.node_id: name_by_ip[ip] for ip, a in alive.items()}
    print("nodes: " + ", ".join(f"{name} {node_id[:8]} ({cpus[name]:g} CPU)" for node_id, name in name_by_id.items()))
    return name_by_id


def serve_app(
    report: Report, root: Path, env: Mapping[str, str], nodes: list[Node], spread: list[str], args
) -> Counter:
    """Deploy, ``serve status``, placement; the nodes of the Ingress replicas."""
    report.timings["deploy_to_running"] = deploy(root, env, args.min_replicas, spread, args.deploy_timeout_s)
    status = serve_status(env)["applications"][APP]
    healthy = all(d["status"] == "HEALTHY" for d in status["deployments"].values())
    report.check(
        "serve status: app RUNNING, every deployment HEALTHY",
        status["status"] == "RUNNING" and healthy,
        status["status"],
    )
    wait_ready(f"http://{HEAD_IP}:{HTTP_PORT}", timeout_s=120)
    placement = replicas_by_node(serve_details(), {n.ip: n.name for n in nodes})
    print_placement("Serve replicas per node after the deploy", placement, [n.name for n in nodes])
    on_both = all(placement[d].get("w1") and placement[d].get("w2") for d in spread)
    report.check(f"replicas of {', '.join(spread)} on both workers", on_both, "see the table")
    on_head = sum(c.get("head", 0) for c in placement.values())
    report.check("no replica on the head (CPU 0)", on_head == 0, f"{on_head} there")
    return placement["Ingress"]


def submit_batch_job(report: Report, root: Path, env: Mapping[str, str], model_store: str, name_by_id, args) -> None:
    """The batch job, where its actors ran and what its working directory held."""
    job = batch_job(root, env, model_store, args.job_cycles, args.job_timeout_s)
    report.timings["batch_job_submit_to_done"] = job["wall_s"]
    predicted = job["summary"].get("predicted")
    detail = f"ray job submit rc {job['submit_rc']}, predicted {predicted} of {args.job_cycles}"
    report.check(
        "batch job succeeded, every cycle predicted", job["succeeded"] and predicted == args.job_cycles, detail
    )
    if not job["succeeded"]:
        print(job["log_tail"])
    actors = job_actors_by_node(name_by_id)
    print(f"batch job {job['job_id']}: actors per node {dict(actors)}; summary {job['summary']}")
    report.check("batch actors on both workers", actors.get("w1") and actors.get("w2"), dict(actors))
    package = working_dir_package(root / "head")
    print(f"working-dir package unpacked on the head: {package}")
    clean = package["packages"] == 1 and not package["excluded_present"]
    report.check("working dir uploaded without .venv, var, .git, docs, bench", clean, package)


def node_kill(report: Report, env: Mapping[str, str], key: str, nodes: list[Node], ingress: Counter, args) -> None:
    """Kill the worker ``--victim`` names under load; what the client saw, and Serve after it."""
    first = next(iter(sorted(ingress)))
    victim = first if args.victim == "ingress" else ({"w1", "w2"} - {first}).pop()
    print(f"\nIngress replicas on {dict(ingress)}; killing {victim} under {args.rate:g} predictions/s")
    kill = kill_under_load(key, nodes, victim, args)
    report.timings.update(kill["timings"])
    print_placement(
        f"Serve replicas per node after {victim} was killed", kill["placement_after"], [n.name for n in nodes]
    )
    print("\nrequests by phase (retried: sent twice, the documented retry; failed: the retry failed too):")
    for phase, figures in kill["figures"].items():
        print(f"  {phase:<12} {figures}")
    for o in kill["failures"]:
        print(f"  not 200: {o}")
    failed = kill["figures"]["total"]["failed"]
    report.check("no request failed after its one retry", not failed, failed or "none")
    status = serve_status(env)["applications"][APP]["status"]
    report.check("serve status after the kill: RUNNING", status == "RUNNING", status)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--worker-cpus",
        type=int,
        default=4,
        help="logical CPUs of each worker: the app's 2.7 (2.9 with --redis) and the batch job's 3",
    )
    parser.add_argument("--min-replicas", type=int, default=2, help="replicas of each deployment spread")
    parser.add_argument(
        "--victim",
        choices=["ingress", "other"],
        default="ingress",
        help="kill the worker with the (first) Ingress replica, or the other worker",
    )
    parser.add_argument(
        "--redis", action="store_true", help="a private Redis (HDX_REDIS_URL), so two Ingress replicas, one per worker"
    )
    parser.add_argument("--rate", type=float, default=4.0, help="predictions per second during the kill")
    parser.add_argument("--before-s", type=float, default=20.0, help="load before the kill")
    parser.add_argument("--after-s", type=float, default=20.0, help="load after Serve recovered")
    parser.add_argument("--recover-timeout-s", type=float, default=300.0)
    parser.add_argument("--deploy-timeout-s", type=float, default=900.0)
    parser.add_argument("--job-timeout-s", type=float, default=600.0)
    parser.add_argument("--job-cycles", type=int, default=288, help="simulated cycles for the batch job")
    parser.add_argument("--object-store-mib", type=int, default=1024, help="object store of each node")
    parser.add_argument("--keep-temp", action="store_true", help="leave the temp dir (logs) behind")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root: network namespaces need it")
    from diagnosis.store import ModelStore

    settings = get_settings()  # the caller's stores: models and index must be there already
    model_store, index_store = settings.model_store_uri, settings.index_store_uri
    missing = [f for f in FAMILIES if ModelStore(model_store).for_profile(settings.default_profile).problem(f)]
    if missing or not Path(index_store).exists():
        raise SystemExit(f"no model bundles for {missing} or no index at {index_store}: run `hdx bootstrap` first")
    refuse_leftovers()

    teardown = Teardown()
    atexit.register(teardown)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: sys.exit(128 + s))  # exits through the finally below
    address_file_before = SHARED_RAY_ADDRESS_FILE.read_text() if SHARED_RAY_ADDRESS_FILE.exists() else None
    # Short: HAProxy refuses socket paths over 97 bytes, and Ray adds a 56-character node id.
    root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-", dir="/tmp"))
    teardown.add(f"remove {root}", lambda: print(f"kept {root}") if args.keep_temp else sh(["rm", "-rf", str(root)]))
    nodes = cluster_nodes(args.worker_cpus)
    env = run_env(os.environ, root, model_store, index_store)
    (root / "auth_token").write_text(secrets.token_hex(32))
    (root / "home").mkdir()
    os.environ.update({k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")})  # for the state API here
    report = Report()
    started = time.perf_counter()
    try:
        make_network(nodes, teardown)
        spread = SPREAD
        if args.redis:  # the production path: shared security state, so several Ingress replicas
            env["HDX_REDIS_URL"] = start_redis(root)
            spread = [*SPREAD, "Ingress"]
        key = api_key(env)
        name_by_id = start_cluster(report, root, env, nodes, args)
        ingress = serve_app(report, root, env, nodes, spread, args)
        submit_batch_job(report, root, env, model_store, name_by_id, args)
        node_kill(report, env, key, nodes, ingress, args)
        check_isolation(report, root, nodes, list(name_by_id), address_file_before)
    except Exception as exc:
        report.check("the run finished", False, f"{type(exc).__name__}: {exc}")
        for log in sorted(root.glob("*.log")):
            print(f"--- {log} (tail)\n{log.read_text()[-1500:]}")
    finally:
        teardown()
    report.timings["total"] = time.perf_counter() - started
    report.print()
    left = [n.netns for n in nodes if n.netns in ip("netns", "list").stdout]
    left += [BRIDGE] if ip("link", "show", BRIDGE, check=False).returncode == 0 else []
    print(f"cleanup: {'left ' + ', '.join(left) if left else 'namespaces, bridge and processes removed'}", end="")
    print("" if args.keep_temp else f", {root} removed")
    return 0 if report.ok() and not left else 1


if __name__ == "__main__":
    sys.exit(main())
