"""The application builder: ``serve run serve_config.yaml`` imports ``build_app``.

    Ingress ──> DiagnosisEnsemble ──> one ModelServer per family of diagnosis.registry
            └─> RagPipeline ──> Embedder, Retriever, LLM

``build_app`` validates its ``args`` (``AppArgs``), reads the settings once and
hands every deployment plain values through ``.bind()``; no replica reads
settings itself. Deployment options (replicas, autoscaling, resources,
``user_config`` with model versions and batching) have one source,
``serve_config.yaml``: Serve applies them over these deployments on ``serve run`` /
``serve deploy``, and ``app_from_serve_config`` applies the same file for
``serve.run`` from Python (tests, benchmarks). The code's own defaults matter only
where the file is silent.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict
from ray.serve import Application

from configs.settings import PROJECT_ROOT, Settings, get_settings
from deployments.assistant import build_assistant
from deployments.diagnosis_ensemble import DiagnosisEnsemble
from deployments.ingress import Ingress
from deployments.model_servers import ModelServer
from diagnosis.registry import FAMILIES, ensemble_weights
from diagnosis.store import ModelStore

SERVE_CONFIG = PROJECT_ROOT / "serve_config.yaml"
log = logging.getLogger(__name__)


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    assistant: bool = True  # the maintenance assistant (embedding, retrieval, LLM)
    # Versions by equipment profile (the DiagnosisEnsemble's user_config.profiles), e.g.
    # {"uci-1hz": "20261203-101500-ab12cd"}; a profile not named serves its newest version.
    profile_versions: dict[str, str] = {}
    # Options by deployment name, as in serve_config.yaml (app_from_serve_config fills it).
    deployment_options: dict[str, dict[str, Any]] = {}


def build_app(args: dict | None = None) -> Application:
    """What ``serve run`` calls (Serve's builders take exactly one argument)."""
    return build_configured_app(args)


def build_configured_app(args: dict | None = None, settings: Settings | None = None, model_store=None) -> Application:
    """``build_app`` with the settings (default: read from the environment) and the model
    store (default ``ModelStore(settings.model_store_uri)``) injected, for tests and
    benchmarks that hand the model servers a failing or fixture store."""
    opts = AppArgs(**(args or {}))
    s = settings or get_settings()
    s.effective_jwt_secret()  # refuse to build an app that would refuse to start
    options = opts.deployment_options if s.redis_url else _single_ingress(opts.deployment_options)
    configured = _configure(options)
    store = model_store or ModelStore(s.model_store_uri)
    models = {
        # The pinned versions are loaded before a replica reports ready (as a replica of one
        # bundle used to), so a replacement replica never makes the first requests wait.
        family: configured(ModelServer, spec.deployment, user_config={"preload": dict(opts.profile_versions)}).bind(
            family=family,
            store=store,
            sync_interval_s=s.adaptive_sync_interval_s,
            keep_revisions=s.adaptive_keep_revisions,
            max_models=s.max_models_per_replica,
        )
        for family, spec in FAMILIES.items()
    }
    ensemble = configured(
        DiagnosisEnsemble, "DiagnosisEnsemble", user_config={"profiles": dict(opts.profile_versions)}
    ).bind(
        models=models,
        store=store,
        default_profile=s.default_profile,
        weights=ensemble_weights(s.ensemble_weights),
        anomaly_threshold=s.anomaly_threshold,
        model_call_timeout_s=s.model_call_timeout_s,
    )
    rag = build_assistant(s, options=configured) if opts.assistant else None
    return configured(Ingress, "Ingress").bind(ensemble, rag, s)


def _single_ingress(options_by_name: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The Ingress capped to one replica: without Redis, login throttling and rate limits
    are counted in each replica's memory, so a second replica would multiply them.
    (``serve run`` applies the file's options over these; ``storage.kv.make_kv`` makes a
    second replica refuse to start there.)"""
    ingress = dict(options_by_name.get("Ingress", {}))
    # A rollout then stops the old replica before it starts the new one (a surge replica
    # would be a second one, which refuses to start).
    ingress["max_surge_percent"] = 0
    if "autoscaling_config" in ingress:
        autoscaling = {**ingress["autoscaling_config"], "min_replicas": 1, "max_replicas": 1}
        if "initial_replicas" in autoscaling:
            autoscaling["initial_replicas"] = 1
        ingress["autoscaling_config"] = autoscaling
    else:
        ingress["num_replicas"] = 1
    log.warning(
        "HDX_REDIS_URL is empty: the Ingress runs one replica, since login throttling and rate limits "
        "would be counted per replica; set HDX_REDIS_URL to run several"
    )
    return {**options_by_name, "Ingress": ingress}


def _configure(options_by_name: dict[str, dict[str, Any]]):
    """``configured(deployment, name, **defaults)``: the deployment under ``name`` with the
    code's defaults, overridden by the options given for that name."""

    def configured(deployment, name: str, **defaults):
        given = options_by_name.get(name, {})
        options = {**defaults, **given}
        if "user_config" in defaults and "user_config" in given:  # the file's keys win, the code's stay
            options["user_config"] = {**defaults["user_config"], **given["user_config"]}
        options.pop("name", None)
        return deployment.options(name=name, **options)

    return configured


def serve_config_application(path: Path = SERVE_CONFIG, name: str = "hdx") -> dict:
    """One application's entry of a Serve config file."""
    config = yaml.safe_load(Path(path).read_text())
    for app in config["applications"]:
        if app["name"] == name:
            return app
    raise KeyError(f"{path}: no application named {name!r}")


def serve_config_for(settings: Settings, path: Path = SERVE_CONFIG) -> dict:
    """The Serve config file as this environment should run it: as written with Redis;
    without it the Ingress capped to one replica (``serve run`` applies the file's options
    over the code's, so the cap must be in the file it runs)."""
    config = yaml.safe_load(Path(path).read_text())
    if not settings.redis_url:
        for app in config["applications"]:
            if "deployments" in app:
                options = _single_ingress({d["name"]: d for d in app["deployments"]})
                app["deployments"] = list(options.values())
    return config


def _file_options(path: Path) -> dict[str, dict[str, Any]]:
    return {d["name"]: dict(d) for d in serve_config_application(path).get("deployments", [])}


def app_from_serve_config(
    path: Path = SERVE_CONFIG, settings: Settings | None = None, model_store=None, **args
) -> Application:
    """The application as ``serve run <path>`` builds it, for ``serve.run`` from Python:
    the file's args (overridden by ``args``) and its deployment options. The ensemble's
    ``user_config`` keeps the file's batching and takes its ``profiles`` from
    ``profile_versions`` when given."""
    merged = {**serve_config_application(path).get("args", {}), **args}
    options = _file_options(path)
    if merged.get("profile_versions"):
        entry = options.setdefault("DiagnosisEnsemble", {})
        config = entry.get("user_config", {})
        entry["user_config"] = {**config, "profiles": {**config.get("profiles", {}), **merged["profile_versions"]}}
    return build_configured_app({**merged, "deployment_options": options}, settings, model_store)


def assistant_from_serve_config(
    settings: Settings, index_version: str = "latest", path: Path = SERVE_CONFIG
) -> Application:
    """The assistant alone (RagPipeline and what it calls) with the file's deployment options;
    ``index_version`` pins the Retriever."""
    options = _file_options(path)
    retriever = options.setdefault("Retriever", {})
    retriever["user_config"] = {**retriever.get("user_config", {}), "index_version": index_version}
    return build_assistant(settings, index_version, options=_configure(options))
