"""Request and response models of the diagnostics endpoints.

The answers are ``diagnosis.report``'s types: a ``Diagnosis`` with the request's
``system_id`` and ``trace_id``, and a ``CycleRejected`` for a batch item that
cannot be diagnosed.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.schemas.inputs import SystemId
from diagnosis.report import CycleRejected, Diagnosis

SensorData = dict[str, list[float]]


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "system_id": "rig-01",
                "sensor_data": {"TS1": [45.1, 45.2], "TS2": [50.3, 50.4], "...": []},
                "use_cache": True,
            }
        }
    )

    system_id: SystemId
    sensor_data: SensorData = Field(
        description="Channel names (TS1, VS1, …) or aliases (pressure, temperature, flow, vibration, "
        "motor_power) → the cycle's samples at the channel's native rate."
    )
    use_cache: bool = True

    @field_validator("sensor_data")
    @classmethod
    def _not_empty(cls, value: SensorData) -> SensorData:
        if not value:
            raise ValueError("sensor_data has no channels")
        return value


class BatchPredictRequest(BaseModel):
    system_id: SystemId
    items: list[SensorData] = Field(min_length=1, description="one sensor_data object per cycle")
    use_cache: bool = True


class PredictResponse(Diagnosis):
    """The diagnosis, with the ids of the request that asked for it."""

    system_id: str
    trace_id: str

    @classmethod
    def of(cls, diagnosis: Diagnosis, system_id: str, trace_id: str) -> PredictResponse:
        return cls(**dict(diagnosis), system_id=system_id, trace_id=trace_id)


class BatchItem(BaseModel):
    index: int
    ok: bool
    result: PredictResponse | None = None
    error: CycleRejected | None = None


class BatchPredictResponse(BaseModel):
    system_id: str
    items: list[BatchItem]
    succeeded: int
    failed: int
    trace_id: str
