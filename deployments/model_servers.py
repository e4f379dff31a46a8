"""One Serve deployment per model family, all of one class: ``ModelServer``.

``deployments.builder`` binds it once per family of ``diagnosis.registry.FAMILIES``
under the family's deployment name (``CatBoostModel``, …), so each family
autoscales on its own. A replica holds one versioned bundle, loaded by the
injected ``store`` (``diagnosis.store.ModelStore`` or a test's stand-in).

``user_config`` (``serve_config.yaml``) sets, per deployment and at run time:

* ``version``: ``latest`` or a bundle version. On a change Serve calls
  ``reconfigure``, which loads the new bundle *beside* the old one and swaps the
  reference only when it is ready: requests in flight finish on the old model.
* ``max_batch_size``: concurrent requests are stacked into one matrix and scored
  in one call (``diagnosis.batching.GreedyBatcher``: a request that finds the
  replica idle is scored at once, those arriving meanwhile form the next batch).

A family that learns from feedback (the Adaptive family) also takes ``learn``:
the replica that gets it learns on the newest saved state and commits the next
state revision, learning again on a newer one when another replica committed
first (``diagnosis.learning``), so no confirmed label is lost whatever the
replica count; the store keeps the newest ``keep_revisions``. Every replica picks
up the newest revision within ``sync_interval_s``, and a restarted replica loads
it at start. Answers name the revision they were made with (the cache key's).
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pandas as pd
from ray import serve

from diagnosis.batching import GreedyBatcher
from diagnosis.failures import ModelCannotLearn
from diagnosis.learning import learn_and_save
from diagnosis.registry import family_spec
from diagnosis.report import FamilyAnswer
from diagnosis.scoring import answer_blocks, bundle_info
from diagnosis.store import ModelBundle, ModelStore, revision_number

log = logging.getLogger("ray.serve")

INLINE_ROWS = 16  # about a millisecond of scoring: cheaper inline than a thread hop
DEFAULT_MAX_BATCH = 64


@serve.deployment
class ModelServer:
    def __init__(self, family: str, store: ModelStore, sync_interval_s: float = 5.0, keep_revisions: int = 10):
        self.family = family
        self.learns = family_spec(family).learns_from_feedback
        self._store = store
        self._sync_interval_s = sync_interval_s
        self._keep_revisions = keep_revisions
        self._lock = asyncio.Lock()
        self._first_load = asyncio.Lock()  # concurrent first calls load the bundle once
        self._sync_task: asyncio.Task | None = None
        self.bundle: ModelBundle | None = None
        self.loaded_at = 0.0
        self.requested_version = "latest"
        self._batcher = GreedyBatcher(self._predict_blocks, DEFAULT_MAX_BATCH)

    async def reconfigure(self, user_config: dict | None) -> None:
        config = user_config or {}
        self._batcher.max_batch_size = int(config.get("max_batch_size", DEFAULT_MAX_BATCH))
        version = str(config.get("version", "latest"))
        async with self._lock:
            bundle = await asyncio.to_thread(self._store.load, self.family, version)
            self.bundle, self.loaded_at, self.requested_version = bundle, time.time(), version
        log.info("%s serving bundle %s", self.family, bundle.version)
        if self.learns and self._sync_task is None:
            self._sync_task = asyncio.get_running_loop().create_task(self._sync_loop())

    async def _ensure_loaded(self) -> ModelBundle:
        if self.bundle is None:  # deployed without user_config: serve the latest bundle
            async with self._first_load:
                if self.bundle is None:
                    await self.reconfigure({})
        return self.bundle

    async def predict(self, features: np.ndarray) -> FamilyAnswer:
        """One request's ``(n, n_features)`` matrix → its probabilities, scored with the
        requests that arrived meanwhile."""
        return await self._batcher.submit(features)

    async def _predict_blocks(self, feature_blocks: list[np.ndarray]) -> list[FamilyAnswer]:
        bundle = await self._ensure_loaded()
        if sum(len(b) for b in feature_blocks) <= INLINE_ROWS:
            return answer_blocks(bundle, feature_blocks)
        # A large batch: keep the event loop free (health checks, reconfigure).
        return await asyncio.to_thread(answer_blocks, bundle, feature_blocks)

    async def info(self) -> dict:
        bundle = await self._ensure_loaded()
        return {**bundle_info(bundle), "requested_version": self.requested_version, "loaded_at": self.loaded_at}

    async def learn(self, features: np.ndarray, labels: dict[str, list]) -> dict:
        """Apply operator-confirmed labels and persist the new state."""
        if not self.learns:
            raise ModelCannotLearn(f"the {self.family} model does not learn from feedback")
        await self._ensure_loaded()
        async with self._lock:  # one update at a time here; other replicas are handled by the commit
            bundle, made = await asyncio.to_thread(
                learn_and_save, self._store, self.bundle, features, pd.DataFrame(labels), self._keep_revisions
            )
            if bundle.version == self.bundle.version and _newer(bundle, self.bundle):
                self.bundle = bundle
        return {
            "ml_model": self.family,
            "targets_updated": made,
            "state_revision": bundle.state_revision,
            "version": bundle.version,
        }

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self._sync_interval_s)
            try:
                bundle = self.bundle
                latest = await asyncio.to_thread(self._store.latest_state, bundle.family, bundle.version)
                if latest and latest != bundle.state_revision:
                    fresh = await asyncio.to_thread(self._store.load, bundle.family, bundle.version)
                    async with self._lock:  # a learn call here may have moved past it meanwhile
                        if self.bundle.version == fresh.version and _newer(fresh, self.bundle):
                            self.bundle = fresh
                    log.info("%s state revision %s loaded", self.family, fresh.state_revision)
            except Exception:  # keep serving the state we have; try again next round
                log.exception("%s state sync failed", self.family)


def _newer(candidate: ModelBundle, current: ModelBundle) -> bool:
    return revision_number(candidate.state_revision) > revision_number(current.state_revision)
