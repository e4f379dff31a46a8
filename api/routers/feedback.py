"""/api/v1/systems/{id}/predictions/{prediction_id}/feedback: operators correct a diagnosis.

The feedback is committed first (acknowledged = stored), then the stored raw cycle
and the confirmed levels go to the models that learn from feedback (the Adaptive
model). If that step fails the feedback stays stored with the error in ``learned``
and the answer is 202.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status

from api.deps import PrincipalDep, SessionDep, diagnosis_target, system_write_access
from api.errors import error_responses
from api.request_metrics import get_metrics
from api.schemas.history import FeedbackIn, FeedbackOut
from api.schemas.inputs import IdPath
from api.services.diagnosis_client import get_diagnosis
from api.services.prediction_history import load_prediction
from diagnosis.failures import describe
from storage.repositories import feedback as feedback_repo
from storage.tables import System

router = APIRouter(prefix="/api/v1/systems", tags=["feedback"])
log = logging.getLogger("hdx.feedback")


@router.post(
    "/{system_id}/predictions/{prediction_id}/feedback",
    response_model=FeedbackOut,
    status_code=status.HTTP_201_CREATED,
    responses={
        202: {"description": "stored, but the Adaptive model could not learn from it now"},
        **error_responses(403, 404, 413, 422),
    },
)
async def give_feedback(
    prediction_id: IdPath,
    body: FeedbackIn,
    request: Request,
    response: Response,
    principal: PrincipalDep,
    system: Annotated[System, Depends(system_write_access)],
    session: SessionDep,
) -> FeedbackOut:
    record = await load_prediction(session, system.id, prediction_id)
    feedback = await feedback_repo.add(
        session,
        prediction_id=record.id,
        system_id=system.id,
        user_id=principal.user_id,
        components=body.components,
        note=body.note,
    )
    await session.commit()
    labels = {name: [level] for name, level in body.components.items()}
    try:
        learned = await get_diagnosis(request).learn(record.sensor_data, labels, diagnosis_target(system).profile)
    except Exception as exc:  # the model is down or refused: the feedback is kept for a later retraining
        log.warning("adaptive model did not learn from feedback %s: %s", feedback.id, exc)
        learned = {"error": describe(exc)}
        response.status_code = status.HTTP_202_ACCEPTED
    await feedback_repo.set_learned(session, feedback, learned)
    await session.commit()
    get_metrics().feedback.inc(tags={"learned": "false" if "error" in learned else "true"})
    return FeedbackOut(
        id=feedback.id,
        prediction_id=record.id,
        system_id=system.id,
        components=feedback.components,
        note=feedback.note,
        learned=learned,
        created_at=feedback.created_at,
    )
