"""/api/v1/systems/{id}/predictions and /readings: what was measured and diagnosed.

Read-only; served diagnoses are written by ``api.services.prediction_history``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from api.deps import SessionDep, system_access
from api.errors import InvalidInput, NotFound, error_responses
from api.schemas.history import PredictionOut, PredictionPage, ReadingOut, ReadingPage
from api.schemas.inputs import IdPath, Offset, UtcDatetime
from api.services.prediction_history import load_prediction
from storage.repositories import predictions as predictions_repo
from storage.repositories import readings as readings_repo
from storage.tables import System

router = APIRouter(prefix="/api/v1/systems", tags=["history"], responses=error_responses(403, 404, 422))
SEVERITIES = ("normal", "warning", "critical")


def _time_range(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and end <= start:
        raise InvalidInput(["query", "end"], "end must be after start")


SystemRead = Annotated[System, Depends(system_access)]
Start = Annotated[UtcDatetime | None, Query(description="inclusive, with a timezone")]
End = Annotated[UtcDatetime | None, Query(description="exclusive, with a timezone")]


@router.get("/{system_id}/predictions", response_model=PredictionPage)
async def list_predictions(
    system: SystemRead,
    session: SessionDep,
    start: Start = None,
    end: End = None,
    severity: Annotated[list[str] | None, Query(max_length=len(SEVERITIES), description="repeat for several")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> PredictionPage:
    """Served diagnoses of the system, newest first."""
    _time_range(start, end)
    for value in severity or ():
        if value not in SEVERITIES:
            raise InvalidInput(
                ["query", "severity"], f"unknown severity {value!r}; expected one of {list(SEVERITIES)}", type="enum"
            )
    rows = await predictions_repo.page(
        session, system.id, start=start, end=end, severity=severity or (), limit=limit, offset=offset
    )
    return PredictionPage(items=[PredictionOut.model_validate(r) for r in rows], limit=limit, offset=offset)


@router.get("/{system_id}/predictions/{prediction_id}", response_model=PredictionOut)
async def get_prediction(prediction_id: IdPath, system: SystemRead, session: SessionDep) -> PredictionOut:
    return PredictionOut.model_validate(await load_prediction(session, system.id, prediction_id))


@router.get("/{system_id}/readings/latest", response_model=ReadingOut)
async def latest_reading(system: SystemRead, session: SessionDep) -> ReadingOut:
    reading = await readings_repo.latest(session, system.id)
    if reading is None:
        raise NotFound(f"system {system.id!r} has no readings yet")
    return ReadingOut.model_validate(reading)


@router.get("/{system_id}/readings", response_model=ReadingPage)
async def list_readings(
    system: SystemRead,
    session: SessionDep,
    start: Start = None,
    end: End = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> ReadingPage:
    """Ingested cycles with ``start <= started_at < end``, oldest first."""
    _time_range(start, end)
    rows = await readings_repo.in_range(session, system.id, start=start, end=end, limit=limit, offset=offset)
    return ReadingPage(items=[ReadingOut.model_validate(r) for r in rows], limit=limit, offset=offset)
