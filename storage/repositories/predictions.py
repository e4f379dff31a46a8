"""Prediction history: every served diagnosis, with its raw cycle."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from diagnosis.report import Diagnosis
from storage.tables import PredictionRecord

# The diagnosis fields worth keeping; timing fields belong to the request, not the history.
_RESULT_FIELDS = {
    "prediction",
    "ml_predictions",
    "models_failed",
    "ensemble_score",
    "ensemble_coverage",
    "features_extracted",
    "model_versions",
    "cache_hit",
}


def row(
    system_id: str,
    diagnosis: Diagnosis,
    sensor_data: Mapping[str, Any],
    *,
    trace_id: str,
    source: str,
    user_id: int | None,
) -> dict[str, Any]:
    """The row for one served diagnosis and the raw cycle it was made from."""
    return {
        "system_id": system_id,
        "trace_id": trace_id,
        "source": source,
        "cache_hit": diagnosis.cache_hit,
        "severity": diagnosis.prediction.severity,
        "is_anomaly": diagnosis.prediction.is_anomaly,
        "anomaly_score": diagnosis.prediction.anomaly_score,
        "model_versions": dict(diagnosis.model_versions),
        "result": diagnosis.model_dump(mode="json", include=_RESULT_FIELDS),
        "sensor_data": dict(sensor_data),
        "user_id": user_id,
    }


async def add_many(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert rows built by ``row`` in one statement; return their ids in row order. The caller commits."""
    if not rows:
        return []
    stmt = insert(PredictionRecord).returning(PredictionRecord.id, sort_by_parameter_order=True)
    return list((await session.scalars(stmt, list(rows))).all())


async def get(session: AsyncSession, system_id: str, prediction_id: int) -> PredictionRecord | None:
    record = await session.get(PredictionRecord, prediction_id)
    return record if record is not None and record.system_id == system_id else None


async def page(
    session: AsyncSession,
    system_id: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    severity: Sequence[str] = (),
    limit: int = 50,
    offset: int = 0,
) -> Sequence[PredictionRecord]:
    """Newest first, ``start <= created_at < end``, any of ``severity`` when given."""
    query = select(PredictionRecord).where(PredictionRecord.system_id == system_id)
    if start is not None:
        query = query.where(PredictionRecord.created_at >= start)
    if end is not None:
        query = query.where(PredictionRecord.created_at < end)
    if severity:
        query = query.where(PredictionRecord.severity.in_(list(severity)))
    query = query.order_by(PredictionRecord.created_at.desc(), PredictionRecord.id.desc())
    return (await session.scalars(query.limit(limit).offset(offset))).all()


async def latest_prediction(session: AsyncSession, system_id: str) -> dict[str, Any] | None:
    """The newest stored ``prediction`` dict of a system (the assistant's context), with
    ``diagnosed_at`` (ISO 8601) added: when it was made."""
    query = (
        select(PredictionRecord.result, PredictionRecord.created_at)
        .where(PredictionRecord.system_id == system_id)
        .order_by(PredictionRecord.created_at.desc(), PredictionRecord.id.desc())
        .limit(1)
    )
    row = (await session.execute(query)).first()
    if row is None or not row.result or row.result.get("prediction") is None:
        return None
    return {**row.result["prediction"], "diagnosed_at": row.created_at.isoformat()}
