"""Response models of stored readings, prediction history and feedback."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.schemas.inputs import JsonInt, text
from hydraulics.components import COMPONENTS

Note = text(2000)


class ReadingOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    system_id: str
    idempotency_key: str
    started_at: datetime
    received_at: datetime
    sensor_data: dict[str, list[float]]


class ReadingPage(BaseModel):
    items: list[ReadingOut]
    limit: int
    offset: int


class PredictionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    system_id: str
    created_at: datetime
    trace_id: str
    source: str
    cache_hit: bool
    severity: str
    is_anomaly: bool
    anomaly_score: float
    model_versions: dict[str, str]
    result: dict


class PredictionPage(BaseModel):
    items: list[PredictionOut]
    limit: int
    offset: int


class FeedbackIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {"components": {"cooler": 100, "valve": 90}, "note": "valve replaced last week, still lagging"}
        },
    )

    components: dict[str, JsonInt] = Field(min_length=1, description="confirmed condition levels, any subset")
    note: Note | None = None

    @field_validator("components")
    @classmethod
    def _known_levels(cls, value: dict[str, int]) -> dict[str, int]:
        for name, level in value.items():
            if name not in COMPONENTS:
                raise ValueError(f"unknown component {name!r}; expected one of {sorted(COMPONENTS)}")
            COMPONENTS[name].level(level)  # ValueError naming the valid levels
        return value


class FeedbackOut(BaseModel):
    id: int
    prediction_id: int
    system_id: str
    components: dict[str, int]
    note: str | None
    learned: dict
    created_at: datetime
