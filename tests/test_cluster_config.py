"""cluster.yaml passes Ray's own cluster-launcher checks and has the node groups HDX needs."""

import copy

import click
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from configs.settings import PROJECT_ROOT

CLUSTER_YAML = PROJECT_ROOT / "cluster.yaml"


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_ray_accepts_the_config(raw):
    # What `ray up` does before it touches a cloud: fill defaults, then validate against ray-schema.json.
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    assert prepared["head_node_type"] == "head"


def test_head_runs_no_work_and_gpu_group_exists(raw):
    types = raw["available_node_types"]
    assert types[raw["head_node_type"]]["resources"] == {"CPU": 0}
    workers = {name: t for name, t in types.items() if name != raw["head_node_type"]}
    assert any("gpu" in name for name in workers), f"no GPU worker group in {list(workers)}"
    assert any(t["max_workers"] > 0 and "cpu" in name for name, t in workers.items())
    gpu = next(t for name, t in workers.items() if "gpu" in name)
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p")), "the GPU group must use a GPU instance type"


def test_setup_installs_torch_first_then_the_project(raw):
    commands = raw["setup_commands"]
    assert commands[0].strip() == "pip install torch==2.13.0"
    assert any("pip install -e ." in c for c in commands[1:])


def test_head_enables_dashboard_and_metrics(raw):
    head = " ".join(raw["head_start_ray_commands"])
    assert "--include-dashboard=true" in head and "--metrics-export-port=" in head
    assert "--metrics-export-port=" in " ".join(raw["worker_start_ray_commands"])


def test_ray_refuses_these_node_groups_on_the_local_provider(raw):
    # Why cluster.yaml names a cloud provider: if a future Ray accepts node types on-prem,
    # this fails and cluster.yaml can default to `provider: local`.
    local = copy.deepcopy(raw)
    local["provider"] = {"type": "local", "head_ip": "10.0.0.1", "worker_ips": ["10.0.0.2"]}
    with pytest.raises(click.ClickException, match="available_node_types is not supported"):
        prepare_config(local)


def test_validator_catches_a_broken_config(raw):
    broken = copy.deepcopy(raw)
    broken["available_node_types"]["head"]["resources"] = {"CPU": "none"}
    with pytest.raises(Exception, match="'none' is not of type 'integer'"):
        validate_config(prepare_config(broken))


# --------------------------------------------------------------------------- KubeRay manifests

K8S_DIR = PROJECT_ROOT / "configs" / "k8s"


def _manifest(name):
    return yaml.safe_load((K8S_DIR / name).read_text())


def test_committed_manifests_are_what_the_generator_makes():
    from configs.k8s.generate import render

    for name, text in render().items():
        assert (K8S_DIR / name).read_text() == text, f"{name} is stale: run `hdx k8s-manifests`"


def test_rayservice_embeds_serve_config_yaml():
    from ray.serve.schema import ServeDeploySchema

    service = _manifest("rayservice.yaml")
    assert service["kind"] == "RayService"
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    original = yaml.safe_load((PROJECT_ROOT / "serve_config.yaml").read_text())
    # The one intended difference: pods bind all interfaces so the Kubernetes Service reaches the proxy.
    assert embedded["http_options"].pop("host") == "0.0.0.0"
    original["http_options"].pop("host", None)
    assert embedded == original

    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert set(groups) == {"cpu", "gpu"} and gpu_limits["nvidia.com/gpu"] == "1"
    # Ray's environment of configs/ray_env.py (throughput mode with HAProxy, intervals) on every node.
    from configs.ray_env import RAY_ENV

    pods = [cluster["headGroupSpec"], *groups.values()]
    for pod in pods:
        env = {e["name"]: e["value"] for e in pod["template"]["spec"]["containers"][0]["env"]}
        assert {name: env.get(name) for name in RAY_ENV} == RAY_ENV
        assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"


def test_ray_env_is_what_the_quick_start_and_cluster_yaml_start_ray_with():
    """One list of Ray's start-up variables: `hdx ray-env` prints it (the quick start evals
    it before `serve run`, cluster.yaml before every `ray start`), and a variable already
    set in the environment wins over the list."""
    import shlex

    from typer.testing import CliRunner

    from cli.main import app
    from configs.ray_env import RAY_ENV, apply_ray_env

    result = CliRunner().invoke(app, ["ray-env"], env={"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "2"})
    assert result.exit_code == 0, result.output
    exported = dict(shlex.split(line)[1].split("=", 1) for line in result.output.splitlines())
    assert exported == {**RAY_ENV, "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "2"}
    env = {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    assert apply_ray_env(env)["RAY_SERVE_ENABLE_HA_PROXY"] == "0" and env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert 'eval "$(.venv/bin/hdx ray-env)"' in (PROJECT_ROOT / "scripts" / "quickstart.sh").read_text()
    starts = yaml.safe_load((PROJECT_ROOT / "cluster.yaml").read_text())
    for command in (starts["head_start_ray_commands"][-1], starts["worker_start_ray_commands"][-1]):
        assert command.index('eval "$(hdx ray-env)"') < command.index("ray start"), command


def test_serve_config_fits_two_cpus_with_room_for_a_rollout():
    """One replica of every deployment, plus a spare of the largest, fits the quick start's
    2 CPUs: a code rollout starts each replacement before it stops the old replica
    (serve_config.yaml: max_surge_percent), and one that cannot be placed would wait forever."""
    config = yaml.safe_load((PROJECT_ROOT / "serve_config.yaml").read_text())
    cpus = {d["name"]: d["ray_actor_options"]["num_cpus"] for d in config["applications"][0]["deployments"]}
    assert round(sum(cpus.values()) + max(cpus.values()), 6) <= 2.0, cpus


def test_rayjob_runs_batch_prediction():
    job = _manifest("rayjob-batch-predict.yaml")
    assert job["kind"] == "RayJob" and job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["entrypoint"].startswith("python -m pipelines.batch_predict --source ")
    assert job["spec"]["rayClusterSpec"]["enableInTreeAutoscaling"] is True


def test_k8s_manifests_command_writes_and_checks(tmp_path):
    import typer
    from typer.testing import CliRunner

    from cli.jobs import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    assert runner.invoke(app, ["k8s-manifests", "--check"]).exit_code == 0
    result = runner.invoke(app, ["k8s-manifests", "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rayservice.yaml").read_text() == (K8S_DIR / "rayservice.yaml").read_text()
    (tmp_path / "rayjob-batch-predict.yaml").write_text("edited by hand\n")
    stale = runner.invoke(app, ["k8s-manifests", "--check", "--out-dir", str(tmp_path)])
    assert stale.exit_code == 1 and "rayjob-batch-predict.yaml" in stale.output


def test_serve_config_has_one_entry_per_deployment_the_builder_makes():
    """serve_config.yaml is the one source of deployment options: every deployment the
    builder makes has its entry (a new model family in diagnosis/registry.py needs one),
    and the file names no deployment that does not exist."""
    from diagnosis.registry import FAMILIES

    config = yaml.safe_load((PROJECT_ROOT / "serve_config.yaml").read_text())
    entries = {d["name"]: d for d in config["applications"][0]["deployments"]}
    models = {spec.deployment for spec in FAMILIES.values()}
    assert set(entries) == {"Ingress", "DiagnosisEnsemble", "RagPipeline", "Embedder", "Retriever", "LLM"} | models
    for name in (*models, "Embedder"):  # model versions are chosen per profile by the ensemble
        assert set(entries[name]["user_config"]) == {"max_batch_size"}, name
    assert set(entries["DiagnosisEnsemble"]["user_config"]) == {"max_batch_size", "profiles", "profile_refresh_s"}


def test_every_deployment_but_the_llm_surges_on_a_rollout():
    config = yaml.safe_load((PROJECT_ROOT / "serve_config.yaml").read_text())
    surge = {d["name"]: d.get("max_surge_percent", 0) for d in config["applications"][0]["deployments"]}
    assert surge.pop("LLM") == 0 and set(surge.values()) == {100}, surge
