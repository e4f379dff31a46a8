"""The application builder: ``serve run serve_config.yaml`` imports ``build_app``.

    Ingress ──> DiagnosisEnsemble ──> CatBoostModel, XGBoostModel, RandomForestModel, AdaptiveModel
            └─> RagPipeline ──> Embedder, Retriever, LLM

Serve passes the ``args`` of the config file; per-deployment options
(autoscaling, ``user_config`` with model versions, resources) live in
``serve_config.yaml`` so ops change them without touching code.
"""

from __future__ import annotations

from pydantic import BaseModel
from ray.serve import Application

from deployments.ensemble import DiagnosisEnsemble
from deployments.ingress import Ingress
from deployments.models import MODEL_DEPLOYMENTS


class AppArgs(BaseModel):
    assistant: bool = True  # the maintenance assistant (embedding, retrieval, LLM)
    # Model bundle versions by family; serve_config.yaml's user_config overrides these.
    model_versions: dict[str, str] = {}


def build_app(args: dict | None = None) -> Application:
    opts = AppArgs(**(args or {}))
    models = {
        name: deployment.options(user_config={"version": opts.model_versions.get(name, "latest")}).bind()
        for name, deployment in MODEL_DEPLOYMENTS.items()
    }
    ensemble = DiagnosisEnsemble.bind(**models)
    rag = None
    if opts.assistant:
        from deployments.assistant import build_assistant

        rag = build_assistant()
    return Ingress.bind(ensemble, rag)
