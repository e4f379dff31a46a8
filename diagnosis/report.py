"""The diagnosis of one cycle, as a type.

``diagnosis.voting.diagnose_answers`` makes it from the model families' answers;
the ensemble deployment returns it, the ingress caches and stores it, the API
returns it (``api.schemas.diagnostics`` extends it with the request's ids), and
the batch job flattens it into Parquet columns. Nothing else builds one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel


class ComponentState(BaseModel):
    level: int
    meaning: str
    severity: str
    probabilities: dict[str, float]  # level value → probability
    nominal_probability: float


class SteadyState(BaseModel):
    stable: bool
    probability_not_stable: float


class OutOfDistribution(BaseModel):
    """How unlike the profile's training data the cycle is (``diagnosis.novelty``): 1.0 is
    the threshold; ``top_features`` are the features furthest from what training saw."""

    score: float
    flagged: bool
    top_features: list[str] = []


class Verdict(BaseModel):
    """What the ensemble concludes about a cycle (``diagnosis.voting`` says how).

    A cycle flagged ``out_of_distribution`` is one the models cannot vouch for: its
    ``severity`` is ``"unknown"``, its ``confidence`` 0 and its ``anomaly_type``
    ``"out_of_distribution"``; the components' levels and probabilities are still
    what the models said, for whoever wants to look, but they are not a diagnosis.
    """

    is_anomaly: bool
    anomaly_score: float
    severity: str
    confidence: float
    affected_components: list[str]
    anomaly_type: str
    components: dict[str, ComponentState]
    steady_state: SteadyState | None = None
    out_of_distribution: OutOfDistribution | None = None


class Alignment(BaseModel):
    """How the cycle was aligned to the profile's reference cycle before features were computed."""

    shift_s: int  # seconds the cycle was moved back (positive: it started late)
    quality: float  # correlation with the reference after the shift, -1…1


class ModelReply(BaseModel):
    """One model family's part in a diagnosis."""

    ml_model: str
    version: str
    state_revision: str | None = None  # the learned state it answered with (a family that learns)
    prediction_score: float  # 1 − P(every component nominal), by this family alone
    confidence: float  # this family's weakest component's top probability
    processing_time_ms: float
    round_trip_ms: float | None = None
    features_used: int


class Diagnosis(BaseModel):
    profile: str | None = None  # the equipment profile whose models answered
    components_diagnosed: list[str] = []
    channels_ignored: list[str] = []  # sent, but not read by the profile
    warnings: list[str] = []  # e.g. readings clipped within a channel's noise margin
    alignment: Alignment | None = None
    prediction: Verdict
    ml_predictions: list[ModelReply]
    models_failed: dict[str, str] = {}  # family → why it did not answer
    ensemble_score: float
    ensemble_coverage: float  # share of the ensemble weight that answered
    features_extracted: int
    model_versions: dict[str, str]
    # The learned state of each learning family that answered, when it has learned:
    # part of the cache key, so an answer made before an update is not served after it.
    state_revisions: dict[str, str] = {}
    cache_hit: bool = False
    feature_extraction_ms: float | None = None
    total_processing_time_ms: float = 0.0


class CycleRejected(BaseModel):
    """A cycle that cannot be diagnosed, and why (from ``hydraulics.validation.SensorDataError``)."""

    channel: str | None
    problem: str
    message: str
    missing_channels: list[str] = []  # channels the profile needs that were not sent
    fitting_profiles: list[str] = []  # trained profiles the sent channels would fit

    @classmethod
    def from_error(cls, error) -> CycleRejected:
        return cls(
            channel=error.channel,
            problem=error.problem,
            message=str(error),
            missing_channels=list(getattr(error, "missing", [])),
            fitting_profiles=list(getattr(error, "fitting", [])),
        )


@dataclass
class FamilyAnswer:
    """One model family's probabilities for a block of cycles, before voting."""

    family: str
    version: str
    probas: dict[str, np.ndarray]  # target → (n_cycles, n_levels)
    processing_time_ms: float = 0.0
    round_trip_ms: float | None = None
    batch_rows: int = 0
    state_revision: str | None = None
    extra: dict = field(default_factory=dict)

    def sliced(self, rows: slice) -> FamilyAnswer:
        """The same answer for some of its rows (one request's part of a batch)."""
        return FamilyAnswer(
            self.family,
            self.version,
            {t: p[rows] for t, p in self.probas.items()},
            self.processing_time_ms,
            self.round_trip_ms,
            self.batch_rows,
            self.state_revision,
            self.extra,
        )
