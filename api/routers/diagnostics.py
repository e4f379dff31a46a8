"""/api/v1/diagnostics: one cycle or a batch of cycles → diagnosis.

Every served diagnosis (cache hits included) is stored in the prediction history
after the answer is computed; its id is returned in ``X-Prediction-ID`` (batch:
``X-Prediction-IDs``, comma-separated in item order, empty for failed items) so a
client can send feedback on it.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response, status
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from api.deps import PrincipalDep, SessionDep, authorize_system
from api.services.diagnosis_client import get_diagnosis
from api.routers.history import store_predictions
from api.schemas.diagnostics import (
    BatchItem,
    BatchPredictRequest,
    BatchPredictResponse,
    PredictRequest,
    PredictResponse,
)
from deployments.diagnosis_ensemble import NoModelAvailable
from diagnosis.errors import describe

router = APIRouter(prefix="/api/v1/diagnostics", tags=["diagnostics"])

UNAVAILABLE_RETRY_S = "5"
# No model answered, the ensemble's queue is full, or its replica is gone: try again later.
UNAVAILABLE = (NoModelAvailable, BackPressureError, DeploymentUnavailableError, RayActorError)


async def run_ensemble(request: Request, cycles: list[dict], use_cache: bool) -> list[dict]:
    try:
        return await get_diagnosis(request).diagnose(cycles, use_cache)
    except UNAVAILABLE as exc:  # the reason in one line, not the remote traceback
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=describe(exc, limit=1000),
                            headers={"Retry-After": UNAVAILABLE_RETRY_S}) from exc


@router.post("/predict", response_model=PredictResponse)
async def predict(body: PredictRequest, request: Request, response: Response, principal: PrincipalDep,
                  session: SessionDep) -> dict:
    """Diagnose one cycle of one system."""
    request.state.system_id = body.system_id
    await authorize_system(request, session, principal, body.system_id)
    await session.commit()  # end the read transaction: no connection held while the models work
    [result] = await run_ensemble(request, [body.sensor_data], body.use_cache)
    if not result["ok"]:
        err = result["error"]
        loc = ["body", "sensor_data"] + ([err["channel"]] if err["channel"] else [])
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            detail=[{"loc": loc, "msg": err["message"], "type": "sensor_data"}])
    request.state.prediction = result
    ids = await store_predictions(request, body.system_id, [(result, body.sensor_data)], source="predict")
    if ids:
        response.headers["X-Prediction-ID"] = str(ids[0])
    return {"system_id": body.system_id, "trace_id": request.state.trace_id, **result}


@router.post("/predict/batch", response_model=BatchPredictResponse)
async def predict_batch(body: BatchPredictRequest, request: Request, response: Response, principal: PrincipalDep,
                        session: SessionDep) -> dict:
    """Diagnose several cycles of one system; each item succeeds or fails on its own."""
    limit = request.app.state.settings.max_batch_items
    if len(body.items) > limit:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            detail=[{"loc": ["body", "items"], "type": "too_long",
                                     "msg": f"at most {limit} items per batch, got {len(body.items)}"}])
    request.state.system_id = body.system_id
    await authorize_system(request, session, principal, body.system_id)
    await session.commit()
    results = await run_ensemble(request, body.items, body.use_cache)
    trace_id = request.state.trace_id
    served = [(r, raw) for r, raw in zip(results, body.items) if r["ok"]]
    ids = await store_predictions(request, body.system_id, served, source="batch")
    if ids is not None:
        it = iter(ids)
        response.headers["X-Prediction-IDs"] = ",".join(str(next(it)) if r["ok"] else "" for r in results)
    items = []
    for i, r in enumerate(results):
        if r["ok"]:
            items.append(BatchItem(index=i, ok=True, result={"system_id": body.system_id, "trace_id": trace_id, **r}))
        else:
            items.append(BatchItem(index=i, ok=False, error=r["error"]))
    ok = sum(1 for it in items if it.ok)
    return {"system_id": body.system_id, "items": items, "succeeded": ok, "failed": len(items) - ok,
            "trace_id": trace_id}
