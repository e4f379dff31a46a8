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
    """Each model deployment's loaded bundle: version, feature set, training data and metrics."""
    info = await get_diagnosis(request).models_info()
    settings = request.app.state.settings
    return {
        "feature_set": settings.feature_set,
        "ensemble_weights": ensemble_weights(settings.ensemble_weights),
        "models": list(info.values()),
    }
