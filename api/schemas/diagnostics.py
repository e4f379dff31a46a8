"""Request and response models of the diagnostics endpoints."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

SensorData = dict[str, list[float]]


class PredictRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {
        "system_id": "rig-01",
        "sensor_data": {"TS1": [45.1, 45.2], "TS2": [50.3, 50.4], "...": []},
        "use_cache": True,
    }})

    system_id: str = Field(min_length=1, max_length=64)
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
    system_id: str = Field(min_length=1, max_length=64)
    items: list[SensorData] = Field(min_length=1, description="one sensor_data object per cycle")
    use_cache: bool = True


class ComponentState(BaseModel):
    level: int
    meaning: str
    severity: str
    probabilities: dict[str, float]
    nominal_probability: float


class Prediction(BaseModel):
    is_anomaly: bool
    anomaly_score: float
    severity: str
    confidence: float
    affected_components: list[str]
    anomaly_type: str
    components: dict[str, ComponentState]
    steady_state: dict | None = None


class ModelPrediction(BaseModel):
    ml_model: str
    version: str
    prediction_score: float
    confidence: float
    processing_time_ms: float
    round_trip_ms: float | None = None
    features_used: int


class PredictResponse(BaseModel):
    system_id: str
    prediction: Prediction
    ml_predictions: list[ModelPrediction]
    models_failed: dict[str, str] = {}
    ensemble_score: float
    ensemble_coverage: float
    total_processing_time_ms: float
    features_extracted: int
    model_versions: dict[str, str]
    cache_hit: bool
    trace_id: str


class ItemError(BaseModel):
    channel: str | None
    problem: str
    message: str


class BatchItem(BaseModel):
    index: int
    ok: bool
    result: PredictResponse | None = None
    error: ItemError | None = None


class BatchPredictResponse(BaseModel):
    system_id: str
    items: list[BatchItem]
    succeeded: int
    failed: int
    trace_id: str
