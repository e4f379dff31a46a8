"""/api/v1/models: the model versions in service and how they scored."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.deps import PrincipalDep
from api.errors import error_responses
from api.services.diagnosis_client import get_diagnosis
from diagnosis.registry import ensemble_weights

router = APIRouter(prefix="/api/v1", tags=["models"])


@router.get("/models", responses=error_responses(503))
async def list_models(request: Request, principal: PrincipalDep) -> dict:
    """The version each equipment profile is served at, and for each model deployment the
    replica that answered with the bundles (model ids ``<profile>@<version>``) it holds now,
    their feature sets, training data and metrics."""
    client = get_diagnosis(request)
    profiles = await client.served_profiles()
    info = await client.models_info()
    settings = request.app.state.settings
    return {
        "default_profile": settings.default_profile,
        "profiles": profiles,
        "ensemble_weights": ensemble_weights(settings.ensemble_weights),
        "models": list(info.values()),
    }
