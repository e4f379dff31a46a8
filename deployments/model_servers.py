"""One Serve deployment per model family, all of one class: ``ModelServer``.

``deployments.builder`` binds it once per family of ``diagnosis.registry.FAMILIES``
under the family's deployment name (``CatBoostModel``, …), so each family
autoscales on its own. Every replica serves every equipment profile through
Ray Serve model multiplexing: the ensemble calls it with
``multiplexed_model_id = "<profile>@<version>"`` (``diagnosis.profiles.model_id``),
the replica loads that bundle from the injected ``store`` on first use
(``diagnosis.store.ModelStore`` or a test's stand-in) and keeps the
``max_models`` most recently used; Serve routes a model id to the replicas that
already hold it. Which version of a profile is served is the ensemble's
``user_config`` (``profiles``): a rollout of one profile asks for a new model id
and leaves the others' bundles where they are.

``user_config`` (``serve_config.yaml``) sets ``max_batch_size``: concurrent
requests *for the same model id* are stacked into one matrix and scored in one
call (``diagnosis.batching.GreedyBatcher``, one per model id: a request that
finds its model idle is scored at once, those arriving meanwhile form the next
batch); requests for different profiles never wait for each other.

A family that learns from feedback (the Adaptive family) also takes ``learn``
(for the profile of the model id it is called with): the replica learns on the
newest saved state and commits the next state revision, learning again on a
newer one when another replica committed first (``diagnosis.learning``), so no
confirmed label is lost whatever the replica count; the store keeps the newest
``keep_revisions``. Every replica picks up the newest revision of each bundle it
holds within ``sync_interval_s``. Answers name the revision they were made with
(the cache key's).

Every replica reports what it holds to the cluster's ``ReplicaDirectory``
(``deployments.replica_directory``) after each load, on a 30 s heartbeat and when
it shuts down, so ``GET /models`` and ``/ready`` list every replica, not only the
one that answers a call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections import OrderedDict

import numpy as np
import pandas as pd
import ray
from ray import serve

from deployments.replica_directory import REPORT_INTERVAL_S, forget_handle, replica_directory, this_replica
from diagnosis.batching import GreedyBatcher
from diagnosis.failures import ModelCannotLearn
from diagnosis.learning import learn_and_save
from diagnosis.profiles import model_id, parse_model_id
from diagnosis.registry import family_spec
from diagnosis.report import FamilyAnswer
from diagnosis.scoring import answer_blocks, bundle_info
from diagnosis.store import ModelBundle, ModelStore, revision_number

log = logging.getLogger("ray.serve")

INLINE_ROWS = 16  # about a millisecond of scoring: cheaper inline than a thread hop
DEFAULT_MAX_BATCH = 64


class HeldBundle:
    """One model id's bundle as a replica holds it; learning swaps ``bundle`` in place."""

    def __init__(self, model_id: str, bundle: ModelBundle):
        self.model_id = model_id
        self.bundle = bundle
        self.loaded_at = time.time()


@serve.deployment
class ModelServer:
    def __init__(
        self,
        family: str,
        store: ModelStore,
        sync_interval_s: float = 5.0,
        keep_revisions: int = 10,
        max_models: int = 4,
    ):
        self.family = family
        self.learns = family_spec(family).learns_from_feedback
        self._store = store
        self._sync_interval_s = sync_interval_s
        self._keep_revisions = keep_revisions
        self.max_models = max_models
        self._lock = asyncio.Lock()
        self._sync_task: asyncio.Task | None = None
        self.max_batch_size = DEFAULT_MAX_BATCH
        self._batchers: dict[str, GreedyBatcher] = {}
        # What the multiplexing LRU holds, without holding it: an evicted bundle drops out.
        self._held: weakref.WeakValueDictionary[str, HeldBundle] = weakref.WeakValueDictionary()
        self._report_task: asyncio.Task | None = None
        self._reports: set[asyncio.Task] = set()  # one-off reports after a load, referenced until done
        self._closing = False

        async def load(model_id: str) -> HeldBundle:
            return await self._load(model_id)

        if _in_replica():
            # Made per replica so the LRU size comes from the settings (Serve finds a
            # multiplexed function stored on the instance).
            self.get_bundle = serve.multiplexed(max_num_models_per_replica=max_models)(load)
        else:  # constructed outside Serve (tests call the class directly): the same LRU, in process
            self.get_bundle = _InProcessLRU(load, max_models)

    async def reconfigure(self, user_config: dict | None) -> None:
        """``max_batch_size``, and ``preload`` ({profile: version}): bundles loaded now, before
        this replica takes requests, so a replacement replica does not make them wait."""
        self._start_reporting()
        config = user_config or {}
        self.max_batch_size = int(config.get("max_batch_size", DEFAULT_MAX_BATCH))
        for batcher in self._batchers.values():
            batcher.max_batch_size = self.max_batch_size
        for profile, version in (config.get("preload") or {}).items():
            try:
                resolved = await asyncio.to_thread(self._store.for_profile(profile).resolve_profile_version, version)
                await self.get_bundle(model_id(profile, resolved))
            except Exception:  # loaded on first use instead
                log.exception("%s could not preload profile %s version %s", self.family, profile, version)

    async def _load(self, model_id: str) -> HeldBundle:
        profile, version = parse_model_id(model_id)
        bundle = await asyncio.to_thread(self._store.for_profile(profile).load, self.family, version)
        held = HeldBundle(model_id, bundle)
        self._held[model_id] = held
        log.info("%s loaded %s (bundle %s)", self.family, model_id, bundle.version)
        if self.learns and self._sync_task is None:
            self._sync_task = asyncio.get_running_loop().create_task(self._sync_loop())
        if self._start_reporting():
            # Serve's LRU has evicted its oldest bundle before this load: the report is what it holds.
            task = asyncio.get_running_loop().create_task(self._report())
            self._reports.add(task)
            task.add_done_callback(self._reports.discard)
        return held

    # --- what this replica holds, for GET /models and /ready ------------------------
    def _start_reporting(self) -> bool:
        """Start the heartbeat (in a Serve replica, in its event loop); whether it runs."""
        if self._report_task is None and not self._closing and _in_replica():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not called from the replica's loop: the next async call starts it
                return False
            self._report_task = loop.create_task(self._report_loop())
        return self._report_task is not None

    async def _report_loop(self) -> None:
        while not self._closing:
            await self._report()
            await asyncio.sleep(REPORT_INTERVAL_S)

    async def _report(self) -> None:
        if self._closing:
            return
        try:
            info = await self.info()
            info |= {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
            directory = await asyncio.to_thread(replica_directory)
            await asyncio.wait_for(directory.report.remote(*this_replica(), info), 10.0)
        except Exception as exc:  # a report only: serving goes on, the next heartbeat tries again
            forget_handle()
            log.warning("%s could not report to the replica directory: %s", self.family, exc)

    def __del__(self) -> None:
        # Serve calls this when it stops the replica: no more reports, and leave the directory.
        self._closing = True
        task = getattr(self, "_report_task", None)
        if task is not None:
            task.cancel()
            try:
                ray.get(replica_directory().forget.remote(*this_replica()), timeout=2.0)
            except Exception:  # shutting down anyway: the entry goes stale and drops out
                pass

    def _batcher(self, model_id: str) -> GreedyBatcher:
        batcher = self._batchers.get(model_id)
        if batcher is None:
            for gone in [m for m in self._batchers if m not in self._held and m != model_id]:
                del self._batchers[gone]  # the bundle was evicted

            async def process(blocks: list[np.ndarray]) -> list[FamilyAnswer]:
                return await self._predict_blocks(model_id, blocks)

            batcher = self._batchers[model_id] = GreedyBatcher(process, self.max_batch_size)
        return batcher

    async def predict(self, features: np.ndarray, model_id: str | None = None) -> FamilyAnswer:
        """One request's ``(n, n_features)`` matrix → its probabilities, scored with the
        requests for the same model id (the call's multiplexed id) that arrived meanwhile."""
        model_id = model_id or serve.get_multiplexed_model_id()
        await self.get_bundle(model_id)
        return await self._batcher(model_id).submit(features)

    async def _predict_blocks(self, model_id: str, feature_blocks: list[np.ndarray]) -> list[FamilyAnswer]:
        bundle = (await self.get_bundle(model_id)).bundle
        if sum(len(b) for b in feature_blocks) <= INLINE_ROWS:
            return answer_blocks(bundle, feature_blocks)
        # A large batch: keep the event loop free (health checks, reconfigure).
        return await asyncio.to_thread(answer_blocks, bundle, feature_blocks)

    async def warm(self, model_id: str | None = None) -> dict:
        """Load the model id this call carries (the ensemble's rollout loads a new version
        before it sends traffic to it); what was loaded."""
        held = await self.get_bundle(model_id or serve.get_multiplexed_model_id())
        return {"model_id": held.model_id, "version": held.bundle.version}

    async def info(self) -> dict:
        """What this replica holds: one entry per loaded model id."""
        return {
            "ml_model": self.family,
            "replica": serve.get_replica_context().replica_id.unique_id if _in_replica() else None,
            "max_models": self.max_models,
            "models": [
                {**bundle_info(h.bundle), "model_id": h.model_id, "loaded_at": h.loaded_at}
                for h in list(self._held.values())
            ],
        }

    async def learn(self, features: np.ndarray, labels: dict[str, list], model_id: str | None = None) -> dict:
        """Apply operator-confirmed labels to the model id's bundle and persist the new state."""
        if not self.learns:
            raise ModelCannotLearn(f"the {self.family} model does not learn from feedback")
        held = await self.get_bundle(model_id or serve.get_multiplexed_model_id())
        async with self._lock:  # one update at a time here; other replicas are handled by the commit
            bundle, made = await asyncio.to_thread(
                learn_and_save,
                self._store.for_profile(parse_model_id(held.model_id)[0]),
                held.bundle,
                features,
                pd.DataFrame(labels),
                self._keep_revisions,
            )
            if _newer(bundle, held.bundle):
                held.bundle = bundle
        return {
            "ml_model": self.family,
            "targets_updated": made,
            "state_revision": bundle.state_revision,
            "version": bundle.version,
        }

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self._sync_interval_s)
            for held in list(self._held.values()):
                try:
                    await self._sync(held)
                except Exception:  # keep serving the state we have; try again next round
                    log.exception("%s state sync of %s failed", self.family, held.model_id)

    async def _sync(self, held: HeldBundle) -> None:
        bundle = held.bundle
        store = self._store.for_profile(parse_model_id(held.model_id)[0])
        latest = await asyncio.to_thread(store.latest_state, bundle.family, bundle.version)
        if latest and latest != bundle.state_revision:
            fresh = await asyncio.to_thread(store.load, bundle.family, bundle.version)
            async with self._lock:  # a learn call here may have moved past it meanwhile
                if _newer(fresh, held.bundle):
                    held.bundle = fresh
            log.info("%s %s state revision %s loaded", self.family, held.model_id, fresh.state_revision)


def _in_replica() -> bool:
    try:
        return serve.get_replica_context() is not None
    except Exception:  # Serve raises outside a replica
        return False


class _InProcessLRU:
    """``serve.multiplexed``'s contract outside Serve: load on first use, keep ``size``."""

    def __init__(self, load, size: int):
        self._load, self._size = load, size
        self._models: OrderedDict[str, HeldBundle] = OrderedDict()
        self._lock = asyncio.Lock()

    async def __call__(self, model_id: str) -> HeldBundle:
        async with self._lock:
            if model_id not in self._models:
                self._models[model_id] = await self._load(model_id)
                while len(self._models) > self._size:
                    self._models.popitem(last=False)
            self._models.move_to_end(model_id)
            return self._models[model_id]


def _newer(candidate: ModelBundle, current: ModelBundle) -> bool:
    return revision_number(candidate.state_revision) > revision_number(current.state_revision)
