"""The diagnosis DAG: features once → four models in parallel → one diagnosis.

A model that fails or times out is left out and reported (``ml_predictions``
lists only those that answered, ``models_failed`` the rest); the ensemble
answers from the others with lower confidence. Only when no model answers is
it an error (``NoModelAvailable``, a 503 at the ingress).

The prediction cache sits in front of this deployment, in the ingress
(``api.diagnosis``): a cached answer never costs a hop to here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from configs.settings import get_settings
from deployments.batching import group_slices
from deployments.errors import describe
from deployments.rollout import SURGE_PERCENT
from diagnosis.ensemble import combine
from hydraulics.features import extract_cycles, get_feature_set

log = logging.getLogger("ray.serve")
INLINE_FEATURE_CYCLES = 4


class NoModelAvailable(RuntimeError):
    pass


def answered_or_raise(results: list[dict]) -> list[dict]:
    """One request's results, or ``NoModelAvailable`` if its valid cycles found no model."""
    unanswered = next((r["unanswered"] for r in results if "unanswered" in r), None)
    if unanswered is not None:
        raise unanswered
    return results


@serve.deployment(name="DiagnosisEnsemble", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64,
                  max_surge_percent=SURGE_PERCENT)
class DiagnosisEnsemble:
    def __init__(self, catboost: DeploymentHandle, xgboost: DeploymentHandle,
                 random_forest: DeploymentHandle, adaptive: DeploymentHandle):
        self.settings = get_settings()
        self.models = {"catboost": catboost, "xgboost": xgboost, "random_forest": random_forest, "adaptive": adaptive}
        self.feature_set = get_feature_set(self.settings.feature_set)
        self._diagnose_together.set_batch_wait_timeout_s(self.settings.ensemble_batch_wait_s)

    async def models_info(self) -> dict[str, dict]:
        """Each model's loaded bundle, or the error that kept it from answering."""
        async def one(name: str, handle: DeploymentHandle):
            try:
                return name, await asyncio.wait_for(handle.info.remote(), self.settings.model_call_timeout_s)
            except Exception as exc:  # reported, not raised: /ready names the failing part
                return name, {"ml_model": name, "error": describe(exc)}

        return dict(await asyncio.gather(*(one(n, h) for n, h in self.models.items())))

    async def _call_models(self, X: np.ndarray) -> tuple[dict[str, dict], dict[str, str]]:
        async def one(name: str, handle: DeploymentHandle):
            start = time.perf_counter()
            try:
                reply = await asyncio.wait_for(handle.predict.remote(X), self.settings.model_call_timeout_s)
                reply["round_trip_ms"] = (time.perf_counter() - start) * 1000
                return name, reply, None
            except Exception as exc:
                return name, None, describe(exc)

        answered, failed = {}, {}
        for name, reply, error in await asyncio.gather(*(one(n, h) for n, h in self.models.items())):
            if reply is None:
                failed[name] = error
                log.warning("model %s did not answer: %s", name, error)
            else:
                answered[name] = reply
        return answered, failed

    async def diagnose(self, cycles: Sequence[Mapping]) -> list[dict]:
        """One result per cycle: ``{"ok": True, ...diagnosis}`` or ``{"ok": False, "error": {...}}``.

        Raises ``NoModelAvailable`` when no model answers for valid cycles.
        """
        return answered_or_raise(await self._diagnose_together(list(cycles)))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)  # the wait: settings.ensemble_batch_wait_s
    async def _diagnose_together(self, requests: list[list[Mapping]]) -> list[list[dict]]:
        """Concurrent requests share one feature step and one call per model: each
        model hop costs milliseconds of serialisation and scheduling, paid here once
        per batch instead of once per request. Waiting ``ensemble_batch_wait_s`` for
        companions costs a lone request that long; under load it doubled the
        uncached throughput on the 2-core benchmark machine (docs/benchmarks.md)."""
        flat = await self._diagnose([c for cycles in requests for c in cycles])
        return [flat[part] for part in group_slices(len(cycles) for cycles in requests)]

    async def _diagnose(self, cycles: Sequence[Mapping]) -> list[dict]:
        """Features once, the four models in parallel, one diagnosis per cycle."""
        start = time.perf_counter()
        results: list[dict | None] = [None] * len(cycles)
        if len(cycles) <= INLINE_FEATURE_CYCLES:  # under a millisecond: cheaper than a thread hop
            X, errors = extract_cycles(cycles, self.feature_set)
        else:  # a batch: keep the event loop free for other requests
            X, errors = await asyncio.to_thread(extract_cycles, cycles, self.feature_set)
        features_ms = (time.perf_counter() - start) * 1000
        for k, err in errors.items():
            results[k] = {"ok": False, "error": err.to_dict()}
        valid = [k for k in range(len(cycles)) if k not in errors]
        if not valid:
            return results
        answered, failed = await self._call_models(X)
        if not answered:  # the requests with valid cycles get this raised (a 503 at the ingress)
            unanswered = NoModelAvailable(f"no model deployment answered: {failed}")
            for k in valid:
                results[k] = {"ok": False, "unanswered": unanswered}
            return results
        weights = self.settings.ensemble_weights
        diagnoses = combine({n: r["probas"] for n, r in answered.items()}, weights, self.settings.anomaly_threshold)
        total_w = sum(weights.values())
        for row, (k, diag) in enumerate(zip(valid, diagnoses)):
            ml = []
            for name, reply in answered.items():
                comp = {c: reply["probas"][c][row] for c in ("cooler", "valve", "pump", "accumulator")}
                nominal = float(np.prod([p[0] for p in comp.values()]))
                ml.append({
                    "ml_model": name,
                    "version": reply["version"],
                    "prediction_score": round(1.0 - nominal, 6),
                    "confidence": round(float(min(p.max() for p in comp.values())), 6),
                    "processing_time_ms": round(reply["processing_time_ms"], 3),
                    "round_trip_ms": round(reply["round_trip_ms"], 3),
                    "features_used": X.shape[1],
                })
            results[k] = {
                "ok": True,
                "prediction": diag,
                "ml_predictions": ml,
                "models_failed": failed,
                "ensemble_score": round(sum(weights[m["ml_model"]] * m["prediction_score"] for m in ml)
                                        / sum(weights[m["ml_model"]] for m in ml), 6),
                "ensemble_coverage": round(sum(weights[n] for n in answered) / total_w, 4),
                "features_extracted": X.shape[1],
                "feature_extraction_ms": round(features_ms, 3),
                "model_versions": {n: r["version"] for n, r in answered.items()},
                "cache_hit": False,
                "total_processing_time_ms": round((time.perf_counter() - start) * 1000, 3),
            }
        return results

    async def learn(self, cycle: Mapping, labels: dict[str, list]) -> dict:
        """Operator-confirmed labels for one cycle → the Adaptive model."""
        X, errors = await asyncio.to_thread(extract_cycles, [cycle], self.feature_set)
        if errors:
            raise ValueError(errors[0].to_dict()["message"])
        return await self.models["adaptive"].learn.remote(X, labels)
