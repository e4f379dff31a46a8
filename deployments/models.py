"""One Serve deployment per model family.

Each replica holds one versioned bundle from the model store. The version
comes from ``user_config`` (``{"version": "latest" | "<version>"}``): on a
change Serve calls ``reconfigure``, which loads the new bundle *beside* the
old one and swaps the reference only when it is ready, so requests in flight
finish on the old model and none is dropped.

Prediction is batched with ``@serve.batch``: concurrent requests are stacked
into one matrix and scored in one call; a large batch is scored in a worker
thread so it never starves the replica's request handling.

The bundle loader is injected (``loader=``) so tests can hand a replica a
fixture bundle or a failing one; the default reads the configured store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
from ray import serve

from configs.settings import get_settings
from deployments.batching import group_slices
from deployments.rollout import SURGE_PERCENT
from diagnosis.store import ModelBundle, ModelStore

log = logging.getLogger("ray.serve")

INLINE_ROWS = 16
BundleLoader = Callable[[str, str], ModelBundle]  # (family, version) → bundle


def store_loader(family: str, version: str) -> ModelBundle:
    return ModelStore(get_settings().model_store_uri).load(family, version)


class ModelReplica:
    """Behaviour shared by the four model deployments; ``family`` names the bundle."""

    family: str = ""

    def __init__(self, loader: BundleLoader | None = None):
        self._loader = loader or store_loader
        self._lock = asyncio.Lock()
        self.bundle: ModelBundle | None = None
        self.loaded_at = 0.0
        self.requested_version = "latest"

    async def reconfigure(self, user_config: dict) -> None:
        version = str((user_config or {}).get("version", "latest"))
        async with self._lock:
            bundle = await asyncio.to_thread(self._loader, self.family, version)
            self.bundle, self.loaded_at, self.requested_version = bundle, time.time(), version
        log.info("%s serving bundle %s", self.family, bundle.version)

    async def _ensure_loaded(self) -> ModelBundle:
        if self.bundle is None:  # deployed without user_config: serve the latest bundle
            await self.reconfigure({})
        return self.bundle

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def predict(self, feature_blocks: list[np.ndarray]) -> list[dict]:
        """Each item is one request's ``(n, n_features)`` matrix; each answer its probabilities."""
        return await self.score(feature_blocks)

    async def score(self, feature_blocks: list[np.ndarray]) -> list[dict]:
        """The work of one batch: all blocks stacked, one model call, split back."""
        bundle = await self._ensure_loaded()
        X = np.vstack(feature_blocks)
        start = time.perf_counter()
        if len(X) <= INLINE_ROWS:  # about a millisecond: cheaper than a thread hop
            probas = bundle.model.predict_proba(X)
        else:  # a large batch: keep the event loop free (health checks, reconfigure)
            probas = await asyncio.to_thread(bundle.model.predict_proba, X)
        elapsed_ms = (time.perf_counter() - start) * 1000
        return [{
            "family": self.family,
            "version": bundle.version,
            "probas": {t: p[part] for t, p in probas.items()},
            "processing_time_ms": elapsed_ms,
            "batch_rows": len(X),
        } for part in group_slices(len(b) for b in feature_blocks)]

    async def info(self) -> dict:
        bundle = await self._ensure_loaded()
        m = bundle.manifest
        return {
            "ml_model": self.family,
            "version": bundle.version,
            "requested_version": self.requested_version,
            "state_revision": bundle.state_revision,
            "feature_set": m["feature_set"]["name"],
            "features": len(m["feature_set"]["feature_names"]),
            "trained_on": m.get("training", {}),
            "metrics": m.get("metrics", {}),
            "created_at": m.get("created_at"),
            "loaded_at": self.loaded_at,
        }


@serve.deployment(name="CatBoostModel", ray_actor_options={"num_cpus": 0.25}, max_surge_percent=SURGE_PERCENT)
class CatBoostModel(ModelReplica):
    family = "catboost"


@serve.deployment(name="XGBoostModel", ray_actor_options={"num_cpus": 0.25}, max_surge_percent=SURGE_PERCENT)
class XGBoostModel(ModelReplica):
    family = "xgboost"


@serve.deployment(name="RandomForestModel", ray_actor_options={"num_cpus": 0.25}, max_surge_percent=SURGE_PERCENT)
class RandomForestModel(ModelReplica):
    family = "random_forest"


@serve.deployment(name="AdaptiveModel", ray_actor_options={"num_cpus": 0.25}, max_surge_percent=SURGE_PERCENT)
class AdaptiveModel(ModelReplica):
    """Also learns from operator feedback. One replica applies an update and
    saves a new state revision to the store; every replica (that one included)
    picks up the newest revision within ``adaptive_sync_interval_s``, and a
    restarted replica loads it at start, so nothing learned is lost."""

    family = "adaptive"

    def __init__(self, loader: BundleLoader | None = None, sync_interval_s: float | None = None):
        super().__init__(loader)
        self._sync_interval_s = sync_interval_s or get_settings().adaptive_sync_interval_s
        self._sync_task: asyncio.Task | None = None

    async def reconfigure(self, user_config: dict) -> None:
        await super().reconfigure(user_config)
        if self._sync_task is None:
            self._sync_task = asyncio.get_running_loop().create_task(self._sync_loop())

    async def learn(self, features: np.ndarray, labels: dict[str, list]) -> dict:
        """Apply operator-confirmed labels and persist the new state."""
        bundle = await self._ensure_loaded()
        async with self._lock:
            made = await asyncio.to_thread(bundle.model.update, features, pd.DataFrame(labels))
            revision = await asyncio.to_thread(ModelStore(get_settings().model_store_uri).save_state, bundle) \
                if made else bundle.state_revision
        return {"targets_updated": made, "state_revision": revision, "version": bundle.version}

    async def _sync_loop(self) -> None:
        store = ModelStore(get_settings().model_store_uri)
        while True:
            await asyncio.sleep(self._sync_interval_s)
            try:
                bundle = self.bundle
                latest = await asyncio.to_thread(store.latest_state, bundle.family, bundle.version)
                if latest and latest != bundle.state_revision:
                    fresh = await asyncio.to_thread(store.load, bundle.family, bundle.version)
                    async with self._lock:
                        if self.bundle.version == fresh.version:
                            self.bundle = fresh
                    log.info("adaptive state revision %s loaded", fresh.state_revision)
            except Exception:  # keep serving the state we have; try again next round
                log.exception("adaptive state sync failed")


MODEL_DEPLOYMENTS = {
    "catboost": CatBoostModel,
    "xgboost": XGBoostModel,
    "random_forest": RandomForestModel,
    "adaptive": AdaptiveModel,
}
