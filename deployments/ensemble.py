"""The diagnosis DAG: features once → four models in parallel → one diagnosis.

A model that fails or times out is left out and reported (``ml_predictions``
lists only those that answered, ``models_failed`` the rest); the ensemble
answers from the others with lower confidence. Only when no model answers is
it an error (``NoModelAvailable``, a 503 at the ingress).

Cached answers are keyed by the cycle's values and the model versions in
service. Versions are learned from every model reply and refreshed in the
background, so after a rollout the first request already misses the old entries.
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
from deployments.errors import describe
from diagnosis.ensemble import combine
from hydraulics.features import extract_cycles, get_feature_set
from hydraulics.validation import cycle_arrays
from storage.cache import cache_key, make_cache

log = logging.getLogger("ray.serve")
VERSION_REFRESH_S = 1.0


class NoModelAvailable(RuntimeError):
    pass


@serve.deployment(name="DiagnosisEnsemble", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class DiagnosisEnsemble:
    def __init__(self, catboost: DeploymentHandle, xgboost: DeploymentHandle,
                 random_forest: DeploymentHandle, adaptive: DeploymentHandle):
        self.settings = get_settings()
        self.models = {"catboost": catboost, "xgboost": xgboost, "random_forest": random_forest, "adaptive": adaptive}
        self.feature_set = get_feature_set(self.settings.feature_set)
        self.cache = make_cache(self.settings)
        self.versions: dict[str, str] = {}
        self._refresh_task: asyncio.Task | None = None

    # --- versions ----------------------------------------------------------------------
    async def models_info(self) -> dict[str, dict]:
        """Each model's loaded bundle, or the error that kept it from answering."""
        async def one(name: str, handle: DeploymentHandle):
            try:
                return name, await asyncio.wait_for(handle.info.remote(), self.settings.model_call_timeout_s)
            except Exception as exc:  # reported, not raised: /ready names the failing part
                return name, {"ml_model": name, "error": describe(exc)}

        info = dict(await asyncio.gather(*(one(n, h) for n, h in self.models.items())))
        self.versions.update({n: i["version"] for n, i in info.items() if "version" in i})
        return info

    async def _refresh_versions(self) -> None:
        while True:
            try:
                await self.models_info()
            except Exception:
                log.exception("model version refresh failed")
            await asyncio.sleep(VERSION_REFRESH_S)

    async def _known_versions(self) -> dict[str, str]:
        if self._refresh_task is None:
            self._refresh_task = asyncio.get_running_loop().create_task(self._refresh_versions())
        if len(self.versions) < len(self.models):
            await self.models_info()
        return dict(self.versions)

    # --- diagnosis ---------------------------------------------------------------------
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
                self.versions[name] = reply["version"]
        return answered, failed

    async def diagnose(self, cycles: Sequence[Mapping], use_cache: bool = True) -> list[dict]:
        """One result per cycle: ``{"ok": True, ...diagnosis}`` or ``{"ok": False, "error": {...}}``.

        Raises ``NoModelAvailable`` when no model answers for valid cycles.
        """
        start = time.perf_counter()
        results: list[dict | None] = [None] * len(cycles)
        versions = await self._known_versions() if use_cache else {}
        arrays: dict[int, dict] = {}
        todo: list[int] = []
        for i, raw in enumerate(cycles):
            if use_cache:
                try:
                    arrays[i] = cycle_arrays(raw)
                except ValueError:
                    todo.append(i)  # invalid: the feature step below reports why
                    continue
                hit = await self.cache.get(cache_key(arrays[i], self.feature_set.name, versions))
                if hit is not None:
                    hit.update(cache_hit=True, total_processing_time_ms=(time.perf_counter() - start) * 1000)
                    results[i] = {"ok": True, **hit}
                    continue
            todo.append(i)
        if todo:
            await self._diagnose_uncached([cycles[i] for i in todo], todo, results, arrays, start)
        return results

    async def _diagnose_uncached(self, cycles, positions, results, arrays, start) -> None:
        t_feat = time.perf_counter()
        X, errors = await asyncio.to_thread(extract_cycles, cycles, self.feature_set)
        features_ms = (time.perf_counter() - t_feat) * 1000
        valid = [k for k in range(len(cycles)) if k not in errors]
        for k, err in errors.items():
            results[positions[k]] = {"ok": False, "error": err.to_dict()}
        if not valid:
            return
        answered, failed = await self._call_models(X)
        if not answered:
            raise NoModelAvailable(f"no model deployment answered: {failed}")
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
            answer = {
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
            results[positions[k]] = {"ok": True, **answer}
            # Only complete answers are cached (a degraded one must not outlive the outage),
            # under the versions that actually answered.
            if positions[k] in arrays and not failed:
                key = cache_key(arrays[positions[k]], self.feature_set.name, answer["model_versions"])
                await self.cache.set(key, answer, self.settings.cache_ttl_s)

    async def cache_healthy(self) -> bool:
        return await self.cache.ping()

    async def learn(self, cycle: Mapping, labels: dict[str, list]) -> dict:
        """Operator-confirmed labels for one cycle → the Adaptive model."""
        X, errors = await asyncio.to_thread(extract_cycles, [cycle], self.feature_set)
        if errors:
            raise ValueError(errors[0].to_dict()["message"])
        return await self.models["adaptive"].learn.remote(X, labels)
