"""Request and response models of the diagnostics endpoints.

The answers are ``diagnosis.report``'s types: a ``Diagnosis`` with the request's
``system_id`` and ``trace_id``, and a ``CycleRejected`` for a batch item that
cannot be diagnosed.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.schemas.inputs import JsonBool, Sample, SystemId
from diagnosis.report import CycleRejected, Diagnosis
from hydraulics.channels import UCI_1HZ_CHANNELS

SensorData = dict[str, list[Sample]]


@lru_cache(maxsize=1)
def example_cycle() -> dict[str, list[float]]:
    """One simulated cycle of a healthy rig on the eight 1 Hz channels (the default feature set): the
    documents' example, so that /docs can send it as it is and get a real diagnosis."""
    from hydraulics.simulator import simulate_cycle

    cycle = simulate_cycle(cooler=100, valve=100, pump=0, accumulator=130, rng=0)
    return {channel: [round(float(x), 3) for x in cycle[channel]] for channel in UCI_1HZ_CHANNELS}


def _predict_example(schema: dict) -> None:
    schema["example"] = {"system_id": "rig-01", "sensor_data": example_cycle(), "use_cache": True}


def _batch_example(schema: dict) -> None:
    schema["example"] = {"system_id": "rig-01", "items": [example_cycle()], "use_cache": True}


class PredictRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra=_predict_example)

    system_id: SystemId
    sensor_data: SensorData = Field(
        description="Channel names (TS1, VS1, …) or aliases (pressure, temperature, flow, vibration, "
        "motor_power) → the cycle's samples at the channel's native rate."
    )
    use_cache: JsonBool = True

    @field_validator("sensor_data")
    @classmethod
    def _not_empty(cls, value: SensorData) -> SensorData:
        if not value:
            raise ValueError("sensor_data has no channels")
        return value


class BatchPredictRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra=_batch_example)

    system_id: SystemId
    items: list[SensorData] = Field(min_length=1, description="one sensor_data object per cycle")
    use_cache: JsonBool = True


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
