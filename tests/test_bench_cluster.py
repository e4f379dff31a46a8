"""The pure helpers of bench/bench_cluster.py (the run itself needs root and ten minutes)."""

from collections import Counter
from pathlib import Path

import pytest

from bench.bench_cluster import (
    HAPROXY_FILES,
    SPREAD,
    Outcome,
    cluster_nodes,
    cluster_serve_config,
    haproxy_dir,
    longest_gap_s,
    node_env,
    ray_start_args,
    replicas_by_node,
    run_env,
    summarize,
)
from configs.settings import Settings
from deployments.builder import serve_config_for

ROOT = Path("/tmp/hdxc-abcdefgh")


def test_the_cluster_copy_binds_every_interface_and_doubles_the_spread_deployments():
    quickstart = serve_config_for(Settings(redis_url=""))  # what `hdx serve-config` writes without Redis
    config, changes = cluster_serve_config(quickstart, 2, SPREAD)

    assert config["http_options"]["host"] == "0.0.0.0"
    deployments = {d["name"]: d for d in config["applications"][0]["deployments"]}
    for name in SPREAD:
        assert deployments[name]["autoscaling_config"]["min_replicas"] == 2
    assert deployments["Ingress"]["autoscaling_config"]["max_replicas"] == 1  # no Redis: one Ingress
    assert len(changes) == 1 + len(SPREAD)
    assert quickstart["http_options"]["host"] == "127.0.0.1"  # the input is left as it was
    assert cluster_serve_config(config, 2, SPREAD)[1] == []  # nothing left to change


def test_with_redis_the_ingress_is_spread_too():
    config, _ = cluster_serve_config(serve_config_for(Settings(redis_url="redis://x")), 2, [*SPREAD, "Ingress"])
    ingress = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Ingress")
    assert ingress["autoscaling_config"]["min_replicas"] == 2 and ingress["max_surge_percent"] == 100


def test_a_deployment_without_autoscaling_gets_num_replicas():
    config = {"applications": [{"deployments": [{"name": SPREAD[0], "num_replicas": 1}]}]}
    changed, _ = cluster_serve_config(config, 3, SPREAD)
    assert changed["applications"][0]["deployments"][0]["num_replicas"] == 3


def test_every_node_has_its_own_haproxy_files_and_the_run_its_own_token():
    env = run_env({"PATH": "/usr/bin", "HDX_REDIS_URL": "redis://x", "RAY_ADDRESS": "auto"}, ROOT, "/m", "/i")
    assert "HDX_REDIS_URL" not in env and "RAY_ADDRESS" not in env
    assert env["RAY_AUTH_TOKEN_PATH"] == str(ROOT / "auth_token") and env["HDX_DEV_MODE"] == "true"
    paths = [node_env(env, ROOT, n) for n in cluster_nodes(3)]
    for var in HAPROXY_FILES:
        values = [p[var] for p in paths]
        assert len(set(values)) == 3 and all(v.startswith(str(ROOT)) for v in values)


def test_haproxy_socket_paths_that_haproxy_would_refuse_are_refused_here():
    with pytest.raises(ValueError, match="max 97"):
        haproxy_dir(Path("/tmp/hdx-netns-abcdefgh"), cluster_nodes(3)[0])


def test_ray_start_lines():
    head, w1, _ = cluster_nodes(2)
    assert ray_start_args(head, ROOT, 1)[:3] == ["ray", "start", "--head"]
    assert "--num-cpus=0" in ray_start_args(head, ROOT, 1)
    worker = ray_start_args(w1, ROOT, 1)
    assert "--address=10.213.0.2:6390" in worker and f"--temp-dir={ROOT / 'w1'}" in worker
    assert not any(a.startswith(("--head", "--port", "--dashboard")) for a in worker)


def test_replicas_are_counted_per_node():
    details = {
        "applications": {
            "hdx": {
                "deployments": {
                    "CatBoostModel": {
                        "replicas": [
                            {"node_ip": "10.213.0.3", "state": "RUNNING"},
                            {"node_ip": "10.213.0.4", "state": "RUNNING"},
                            {"node_ip": "10.213.0.4", "state": "STARTING"},
                        ]
                    }
                }
            }
        }
    }
    names = {"10.213.0.3": "w1", "10.213.0.4": "w2"}
    assert replicas_by_node(details, names) == {"CatBoostModel": Counter(w1=1, w2=1)}


def test_outcomes_are_summarized_per_phase():
    outcomes = [
        Outcome("before", 0.0, 0.1, 200),
        Outcome("node_killed", 1.0, 0.3, 200, first=500, degraded=True),
        Outcome("node_killed", 1.5, 2.0, 500, first="ReadError"),
        Outcome("after", 5.0, 0.1, 200),
    ]
    figures = summarize(outcomes)
    assert list(figures) == ["before", "node_killed", "after", "total"]
    killed = figures["node_killed"]
    assert killed["requests"] == 2 and killed["answered"] == 1 and killed["retried"] == 2
    assert killed["retried_after"] == {"500": 1, "ReadError": 1} and killed["failed"] == {"500": 1}
    assert killed["degraded"] == 1 and killed["max_ms"] == 2000
    assert figures["total"]["requests"] == 4
    assert longest_gap_s(outcomes, since_s=1.0) == 4.0  # answered requests sent at 1.0 and 5.0
