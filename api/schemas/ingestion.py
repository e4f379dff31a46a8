"""Request and response models of /api/v1/ingestion."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.diagnostics import SensorData, example_cycle
from api.schemas.inputs import JsonBool, SystemId, UtcDatetime, token
from diagnosis.report import CycleRejected, Verdict

IdempotencyKey = token(128)


class CycleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    idempotency_key: IdempotencyKey = Field(
        description="unique per system; a retried cycle with a stored key is not stored again",
    )
    started_at: UtcDatetime = Field(description="cycle start, with a timezone (e.g. 2026-03-01T12:00:00Z)")
    sensor_data: SensorData


def _example(schema: dict) -> None:
    cycle = {"idempotency_key": "rig-01/2026-03-01T12:00:00Z", "started_at": "2026-03-01T12:00:00Z"}
    schema["example"] = {"system_id": "rig-01", "cycles": [{**cycle, "sensor_data": example_cycle()}], "diagnose": True}


class IngestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_example)
    system_id: SystemId
    cycles: list[CycleIn] = Field(min_length=1)
    diagnose: JsonBool = False


class IngestItem(BaseModel):
    index: int
    idempotency_key: str
    status: Literal["stored", "duplicate", "rejected"]
    error: CycleRejected | None = None
    prediction_id: int | None = None
    diagnosis: Verdict | None = None


class IngestResponse(BaseModel):
    system_id: str
    stored: int
    duplicates: int
    rejected: int
    items: list[IngestItem]
    diagnosis_error: str | None = None
    trace_id: str
    received_at: datetime
