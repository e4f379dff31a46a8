"""The diagnosis DAG: features once → every model family in parallel → one diagnosis.

A model that fails or times out is left out and reported (``ml_predictions``
lists only those that answered, ``models_failed`` the rest); the ensemble
answers from the others with lower confidence. Only when no model answers is it
an error (``NoModelAvailable``, a 503 at the ingress). A cycle that cannot be
diagnosed is answered with a ``CycleRejected`` naming the channel at fault.

Features are computed per request, before batching, so a batch holds only valid
feature rows; concurrent requests then share one call per model family
(``diagnosis.batching.GreedyBatcher``): each hop costs milliseconds of
serialisation and scheduling, paid once per batch instead of once per request. A
request that finds the replica idle goes at once; those that arrive while a batch
is with the models form the next one. The batch size limit comes from
``user_config``. The combination itself is ``diagnosis.voting.diagnose_answers``,
the same function the batch job calls.

The prediction cache sits in front of this deployment, in the ingress
(``api.services.diagnosis_client``): a cached answer never costs a hop to here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from diagnosis.batching import GreedyBatcher, group_slices
from diagnosis.failures import NoModelAvailable, describe
from diagnosis.registry import FAMILIES
from diagnosis.report import CycleRejected, Diagnosis, FamilyAnswer
from diagnosis.voting import diagnose_answers
from hydraulics.features import extract_cycles, get_feature_set

log = logging.getLogger("ray.serve")
INLINE_FEATURE_CYCLES = 4  # under a millisecond: cheaper than a thread hop
DEFAULT_MAX_BATCH = 32


@serve.deployment
class DiagnosisEnsemble:
    def __init__(
        self,
        models: dict[str, DeploymentHandle],
        feature_set: str,
        weights: dict[str, float],
        anomaly_threshold: float,
        model_call_timeout_s: float,
    ):
        self.models = models
        self.learners = {name: h for name, h in models.items() if FAMILIES[name].learns_from_feedback}
        self.feature_set = get_feature_set(feature_set)
        self.weights = weights
        self.threshold = anomaly_threshold
        self.timeout_s = model_call_timeout_s
        self._batcher = GreedyBatcher(self._score_together, DEFAULT_MAX_BATCH)

    def reconfigure(self, user_config: dict | None) -> None:
        self._batcher.max_batch_size = int((user_config or {}).get("max_batch_size", DEFAULT_MAX_BATCH))

    async def models_info(self) -> dict[str, dict]:
        """Each model's loaded bundle, or the error that kept it from answering."""

        async def one(name: str, handle: DeploymentHandle):
            try:
                return name, await asyncio.wait_for(handle.info.remote(), self.timeout_s)
            except Exception as exc:  # reported, not raised: /ready names the failing part
                return name, {"ml_model": name, "error": describe(exc)}

        return dict(await asyncio.gather(*(one(n, h) for n, h in self.models.items())))

    async def _features(self, cycles: Sequence[Mapping]):
        if len(cycles) <= INLINE_FEATURE_CYCLES:
            return extract_cycles(cycles, self.feature_set)
        return await asyncio.to_thread(extract_cycles, cycles, self.feature_set)  # keep the loop free

    async def diagnose(self, cycles: Sequence[Mapping]) -> list[Diagnosis | CycleRejected]:
        """One answer per cycle, in order. Raises ``NoModelAvailable`` when no model answers."""
        start = time.perf_counter()
        X, errors = await self._features(cycles)
        features_ms = (time.perf_counter() - start) * 1000
        diagnoses = iter(await self._batcher.submit(X) if len(X) else ())
        out = []
        for i in range(len(cycles)):
            if i in errors:
                out.append(CycleRejected.from_error(errors[i]))
                continue
            diagnosis = next(diagnoses)
            diagnosis.feature_extraction_ms = round(features_ms, 3)
            diagnosis.total_processing_time_ms = round((time.perf_counter() - start) * 1000, 3)
            out.append(diagnosis)
        return out

    async def _score_together(self, blocks: list[np.ndarray]) -> list[list[Diagnosis]]:
        """Concurrent requests' feature rows: one call per model family for all of them."""
        answered, failed = await self._call_models(np.vstack(blocks))
        if not answered:
            raise NoModelAvailable(f"no model deployment answered: {failed}")
        flat = diagnose_answers(answered, self.weights, self.threshold, blocks[0].shape[1], failed)
        return [flat[part] for part in group_slices(len(b) for b in blocks)]

    async def _call_models(self, X: np.ndarray) -> tuple[dict[str, FamilyAnswer], dict[str, str]]:
        async def one(name: str, handle: DeploymentHandle):
            start = time.perf_counter()
            try:
                answer = await asyncio.wait_for(handle.predict.remote(X), self.timeout_s)
                answer.round_trip_ms = (time.perf_counter() - start) * 1000
                return name, answer, None
            except Exception as exc:
                return name, None, describe(exc)

        answered, failed = {}, {}
        for name, answer, error in await asyncio.gather(*(one(n, h) for n, h in self.models.items())):
            if answer is None:
                failed[name] = error
                log.warning("model %s did not answer: %s", name, error)
            else:
                answered[name] = answer
        return answered, failed

    async def learn(self, cycle: Mapping, labels: dict[str, list]) -> dict:
        """Operator-confirmed labels for one cycle → every family that learns from feedback
        (what it did; under ``models`` when several learn). Raises
        ``hydraulics.validation.SensorDataError`` for a cycle that cannot be diagnosed."""
        X, errors = await self._features([cycle])
        if errors:
            raise errors[0]
        results = await asyncio.gather(*(h.learn.remote(X, labels) for h in self.learners.values()))
        return results[0] if len(results) == 1 else {"models": list(results)}
