"""/api/v1/systems/{id}/predictions and /readings: what was measured and diagnosed.

``store_predictions`` is the one place a served diagnosis is written to the
history; the predict and ingestion routes call it after the answer is computed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import AwareDatetime

from api.deps import SessionDep, system_access
from api.request_metrics import get_metrics
from api.schemas.history import PredictionOut, PredictionPage, ReadingOut, ReadingPage
from storage.tables import System
from storage.repositories import predictions as predictions_repo
from storage.repositories import readings as readings_repo

router = APIRouter(prefix="/api/v1/systems", tags=["history"])
log = logging.getLogger("hdx.history")
SEVERITIES = ("normal", "warning", "critical")


async def store_predictions(request: Request, system_id: str, served: Sequence[tuple[Mapping, Mapping]],
                            source: str) -> list[int] | None:
    """Store (answer, raw sensor_data) pairs of served diagnoses; return their ids.

    Also counts them in the metrics. A database error is logged and answered with
    None: the client still gets its diagnosis, only the history misses it.
    """
    metrics = get_metrics()
    for answer, _ in served:
        metrics.diagnosis(answer)
    if not served:
        return []
    principal = getattr(request.state, "principal", None)
    rows = [predictions_repo.row(system_id, answer, raw, trace_id=request.state.trace_id, source=source,
                                 user_id=principal.user_id if principal else None) for answer, raw in served]
    try:
        return await request.app.state.history.add(rows)
    except Exception:
        log.exception("could not store %d predictions of system %s", len(rows), system_id)
        return None


def _time_range(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and end <= start:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            detail=[{"loc": ["query", "end"], "type": "value_error", "msg": "end must be after start"}])


SystemRead = Annotated[System, Depends(system_access)]
Start = Annotated[AwareDatetime | None, Query(description="inclusive, with a timezone")]
End = Annotated[AwareDatetime | None, Query(description="exclusive, with a timezone")]


@router.get("/{system_id}/predictions", response_model=PredictionPage)
async def list_predictions(system: SystemRead, session: SessionDep, start: Start = None, end: End = None,
                           severity: Annotated[list[str] | None, Query(description="repeat for several")] = None,
                           limit: Annotated[int, Query(ge=1, le=500)] = 50,
                           offset: Annotated[int, Query(ge=0)] = 0) -> PredictionPage:
    """Served diagnoses of the system, newest first."""
    _time_range(start, end)
    for value in severity or ():
        if value not in SEVERITIES:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=[{
                "loc": ["query", "severity"], "type": "enum",
                "msg": f"unknown severity {value!r}; expected one of {list(SEVERITIES)}"}])
    rows = await predictions_repo.page(session, system.id, start=start, end=end, severity=severity or (),
                                       limit=limit, offset=offset)
    return PredictionPage(items=[PredictionOut.model_validate(r) for r in rows], limit=limit, offset=offset)


@router.get("/{system_id}/predictions/{prediction_id}", response_model=PredictionOut)
async def get_prediction(prediction_id: int, system: SystemRead, session: SessionDep) -> PredictionOut:
    record = await predictions_repo.get(session, system.id, prediction_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            detail=f"prediction {prediction_id} of system {system.id!r} not found")
    return PredictionOut.model_validate(record)


@router.get("/{system_id}/readings/latest", response_model=ReadingOut)
async def latest_reading(system: SystemRead, session: SessionDep) -> ReadingOut:
    reading = await readings_repo.latest(session, system.id)
    if reading is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"system {system.id!r} has no readings yet")
    return ReadingOut.model_validate(reading)


@router.get("/{system_id}/readings", response_model=ReadingPage)
async def list_readings(system: SystemRead, session: SessionDep, start: Start = None, end: End = None,
                        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                        offset: Annotated[int, Query(ge=0)] = 0) -> ReadingPage:
    """Ingested cycles with ``start <= started_at < end``, oldest first."""
    _time_range(start, end)
    rows = await readings_repo.in_range(session, system.id, start=start, end=end, limit=limit, offset=offset)
    return ReadingPage(items=[ReadingOut.model_validate(r) for r in rows], limit=limit, offset=offset)
