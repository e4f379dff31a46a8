"""/api/v1/diagnostics: one cycle or a batch of cycles → diagnosis.

Every served diagnosis (cache hits included) is stored in the prediction history
after the answer is computed; its id is returned in ``X-Prediction-ID`` (batch:
``X-Prediction-IDs``, comma-separated in item order, empty for failed items) so a
client can send feedback on it. A history that cannot store them is a 503: no
diagnosis goes out that feedback could not refer to. A read-only member's
diagnoses are answered but not stored (no id header): the history is what the
assistant grounds its answers on and what feedback trains on, so only those who
may change the system write it. An ensemble that cannot answer is a 503 and a
cycle that cannot be diagnosed a 422 (``api.errors``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from api.deps import PrincipalDep, SessionDep, authorize_system
from api.errors import InvalidInput, error_responses
from api.schemas.diagnostics import (
    BatchItem,
    BatchPredictRequest,
    BatchPredictResponse,
    PredictRequest,
    PredictResponse,
)
from api.services.diagnosis_client import get_diagnosis
from api.services.prediction_history import store_predictions
from diagnosis.report import Diagnosis

router = APIRouter(
    prefix="/api/v1/diagnostics", tags=["diagnostics"], responses=error_responses(403, 404, 413, 422, 503)
)

# Where a stored diagnosis goes next: read it back, send feedback on it (OpenAPI links, for clients
# and for the schema fuzzer's workflows, tests/test_fuzz_api.py).
_PREDICTION = "#/paths/~1api~1v1~1systems~1{system_id}~1predictions~1{prediction_id}"
_STORED = {"system_id": "$request.body#/system_id", "prediction_id": "$response.header.X-Prediction-ID"}
PREDICT_ANSWER = {
    "headers": {
        "X-Prediction-ID": {
            "description": "the stored diagnosis's id, for feedback (absent for read-only members: not stored)",
            "schema": {"type": "integer"},
        }
    },
    "links": {
        "GetPrediction": {"operationRef": f"{_PREDICTION}/get", "parameters": _STORED},
        "GiveFeedback": {"operationRef": f"{_PREDICTION}~1feedback/post", "parameters": _STORED},
    },
}
BATCH_ANSWER = {
    "headers": {
        "X-Prediction-IDs": {
            "description": "the stored diagnoses' ids in item order, comma-separated, empty for failed items",
            "schema": {"type": "string"},
        }
    }
}


@router.post("/predict", response_model=PredictResponse, responses={200: PREDICT_ANSWER})
async def predict(
    body: PredictRequest, request: Request, response: Response, principal: PrincipalDep, session: SessionDep
) -> PredictResponse:
    """Diagnose one cycle of one system."""
    request.state.system_id = body.system_id
    may_write, target = await authorize_system(request, session, principal, body.system_id)
    await session.commit()  # end the read transaction: no connection held while the models work
    diagnosis = await get_diagnosis(request).diagnose_one(body.sensor_data, body.use_cache, target)
    served = [(diagnosis, body.sensor_data)]
    ids = await store_predictions(request, body.system_id, served, source="predict", store=may_write)
    if ids:
        response.headers["X-Prediction-ID"] = str(ids[0])
    return PredictResponse.of(diagnosis, body.system_id, request.state.trace_id)


@router.post("/predict/batch", response_model=BatchPredictResponse, responses={200: BATCH_ANSWER})
async def predict_batch(
    body: BatchPredictRequest, request: Request, response: Response, principal: PrincipalDep, session: SessionDep
) -> BatchPredictResponse:
    """Diagnose several cycles of one system; each item succeeds or fails on its own."""
    limit = request.app.state.settings.max_batch_items
    if len(body.items) > limit:
        raise InvalidInput(
            ["body", "items"], f"at most {limit} items per batch, got {len(body.items)}", type="too_long"
        )
    request.state.system_id = body.system_id
    may_write, target = await authorize_system(request, session, principal, body.system_id)
    await session.commit()
    results = await get_diagnosis(request).diagnose(body.items, body.use_cache, target)
    trace_id = request.state.trace_id
    served = [(r, raw) for r, raw in zip(results, body.items) if isinstance(r, Diagnosis)]
    ids = await store_predictions(request, body.system_id, served, source="batch", store=may_write)
    if ids is not None:
        it = iter(ids)
        response.headers["X-Prediction-IDs"] = ",".join(
            str(next(it)) if isinstance(r, Diagnosis) else "" for r in results
        )
    items = [
        BatchItem(index=i, ok=True, result=PredictResponse.of(r, body.system_id, trace_id))
        if isinstance(r, Diagnosis)
        else BatchItem(index=i, ok=False, error=r)
        for i, r in enumerate(results)
    ]
    succeeded = len(served)
    return BatchPredictResponse(
        system_id=body.system_id, items=items, succeeded=succeeded, failed=len(items) - succeeded, trace_id=trace_id
    )
