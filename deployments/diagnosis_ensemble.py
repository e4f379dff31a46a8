"""The diagnosis DAG: a profile's features once → every model family in parallel → one diagnosis.

Every request names the equipment profile of its system (``diagnosis.profiles``;
the ingress reads it from the registry) and the components its topology has.
The ensemble resolves the profile's version (pinned in ``user_config.profiles``,
otherwise the store's newest complete version, re-read every
``profile_refresh_s``), loads that version's reference (alignment and novelty)
into a small LRU, aligns and featurises the cycles, and calls each model
deployment with ``multiplexed_model_id = "<profile>@<version>"``: Serve routes
it to a model replica that holds that bundle, which loads it on first use.

A rollout of one profile is a ``user_config`` change: ``reconfigure`` loads the
new version's reference and asks every model deployment to load the new model
id (``warm``) before requests use it, so requests are never the ones that wait
for a bundle to load; requests in flight finish on the old id, and the other
profiles are untouched.

A model that fails or times out is left out and reported (``ml_predictions``
lists only those that answered, ``models_failed`` the rest); the ensemble
answers from the others with lower confidence. Only when no model answers is it
an error (``NoModelAvailable``, a 503 at the ingress). A cycle that cannot be
diagnosed is answered with a ``CycleRejected`` naming the channel at fault (and,
for missing channels, the trained profiles the sent ones would fit).

Concurrent requests for the same model id share one call per model family
(``diagnosis.batching.GreedyBatcher``, one per model id): a request that finds
its batcher idle goes at once; those that arrive while a batch is with the
models form the next one. Requests of different profiles never wait for each
other. The vote (``diagnosis.profiles.diagnose_prepared``: ``diagnosis.voting``'s,
whose columns the batch job writes) runs per request, over the components that
request's system has, a cycle unlike the training data withheld.

The prediction cache sits in front of this deployment, in the ingress
(``api.services.diagnosis_client``): a cached answer never costs a hop to here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.replica_directory import held_by_family
from diagnosis.batching import GreedyBatcher, group_slices
from diagnosis.failures import NoModelAvailable, describe
from diagnosis.profiles import (
    Profile,
    ProfileError,
    ProfileReference,
    diagnose_prepared,
    model_id,
    parse_model_id,
    prepare_cycles,
)
from diagnosis.registry import FAMILIES
from diagnosis.report import CycleRejected, Diagnosis, FamilyAnswer
from diagnosis.store import LATEST, BundleError, ModelStore
from hydraulics.validation import SensorDataError

log = logging.getLogger("ray.serve")
INLINE_FEATURE_CYCLES = 4  # under a millisecond: cheaper than a thread hop
DEFAULT_MAX_BATCH = 32
DEFAULT_PROFILE_REFRESH_S = 30.0
REFERENCES_KEPT = 8


class UnknownProfile(SensorDataError):
    """A request for a profile the store cannot serve (not trained, or damaged)."""

    def __init__(self, problem: str):
        super().__init__(None, problem)


@serve.deployment
class DiagnosisEnsemble:
    def __init__(
        self,
        models: dict[str, DeploymentHandle],
        store: ModelStore,
        default_profile: str,
        weights: dict[str, float],
        anomaly_threshold: float,
        model_call_timeout_s: float,
    ):
        self.models = models
        self.learners = {name: h for name, h in models.items() if FAMILIES[name].learns_from_feedback}
        self._store = store
        self.default_profile = default_profile
        self.weights = weights
        self.threshold = anomaly_threshold
        self.timeout_s = model_call_timeout_s
        self.max_batch_size = DEFAULT_MAX_BATCH
        self.pinned: dict[str, str] = {}  # profile → version, from user_config
        self.profile_refresh_s = DEFAULT_PROFILE_REFRESH_S
        self._resolved: dict[str, tuple[str, float]] = {}  # profile → (version, when resolved)
        self._references: OrderedDict[str, ProfileReference] = OrderedDict()  # model id → reference
        self._trained: tuple[float, list[Profile]] = (0.0, [])
        self._batchers: dict[str, GreedyBatcher] = {}
        self._warming: set[asyncio.Task] = set()

    async def reconfigure(self, user_config: dict | None) -> None:
        config = user_config or {}
        self.max_batch_size = int(config.get("max_batch_size", DEFAULT_MAX_BATCH))
        for batcher in self._batchers.values():
            batcher.max_batch_size = self.max_batch_size
        self.profile_refresh_s = float(config.get("profile_refresh_s", DEFAULT_PROFILE_REFRESH_S))
        pinned = {str(p): str(v) for p, v in (config.get("profiles") or {}).items()}
        for profile, version in pinned.items():
            if self.pinned.get(profile) == version and profile in self._resolved:
                continue
            try:  # load beside the old version, then switch: requests never wait for the load
                resolved = await asyncio.to_thread(self._resolve, profile, version)
                await self._reference(model_id(profile, resolved))
                if profile in self._resolved:  # a rollout: the models load the new id first
                    await self._warm(model_id(profile, resolved))
                else:  # starting up: the model replicas may be starting too; load in the background
                    self._warming.add(asyncio.get_running_loop().create_task(self._warm(model_id(profile, resolved))))
            except Exception as exc:  # a bad pin fails that profile's requests, not the deployment
                log.error("profile %s version %s cannot be served: %s", profile, version, describe(exc))
                self._resolved.pop(profile, None)
                continue
            self._resolved[profile] = (resolved, time.monotonic())
            log.info("profile %s serving version %s", profile, resolved)
        for profile in set(self.pinned) - set(pinned):
            self._resolved.pop(profile, None)  # unpinned: back to the newest version
        self.pinned = pinned

    def _resolve(self, profile: str, version: str) -> str:
        store = self._store.for_profile(profile)
        return store.resolve_profile_version(version)

    async def _warm(self, mid: str) -> None:
        async def one(handle: DeploymentHandle):
            try:
                await asyncio.wait_for(handle.options(multiplexed_model_id=mid).warm.remote(), 60)
            except Exception as exc:  # the first request loads it then
                log.warning("warming %s failed: %s", mid, describe(exc))

        await asyncio.gather(*(one(h) for h in self.models.values()))
        self._warming = {t for t in self._warming if not t.done()}

    async def _version(self, profile: str) -> str:
        known = self._resolved.get(profile)
        fresh = known is not None and (profile in self.pinned or time.monotonic() - known[1] < self.profile_refresh_s)
        if fresh:
            return known[0]
        try:
            version = await asyncio.to_thread(self._resolve, profile, self.pinned.get(profile, LATEST))
        except (BundleError, ProfileError) as exc:
            if known is not None:  # the store is unreachable: keep serving what we served
                return known[0]
            raise UnknownProfile(f"profile {profile!r} cannot be served: {exc}") from None
        self._resolved[profile] = (version, time.monotonic())
        return version

    async def _reference(self, mid: str) -> ProfileReference:
        reference = self._references.get(mid)
        if reference is None:
            profile, version = parse_model_id(mid)
            try:
                reference = await asyncio.to_thread(self._store.for_profile(profile).load_reference, version)
            except (BundleError, ProfileError, OSError) as exc:
                raise UnknownProfile(f"profile {profile!r} version {version}: {exc}") from None
            self._references[mid] = reference
            while len(self._references) > REFERENCES_KEPT:
                self._references.popitem(last=False)
        self._references.move_to_end(mid)
        return reference

    async def _trained_profiles(self) -> list[Profile]:
        """What a rejected cycle's channels would fit; read from the store now and then."""
        when, profiles = self._trained
        if time.monotonic() - when > self.profile_refresh_s:
            try:
                profiles = await asyncio.to_thread(self._store.trained_profiles)
            except Exception as exc:  # a hint only: never fail a request for it
                log.warning("listing trained profiles failed: %s", describe(exc))
            self._trained = (time.monotonic(), profiles)
        return profiles

    async def served_profiles(self) -> dict[str, str]:
        """The version each profile is served at now (those asked for since start, and pins)."""
        for profile in list(self.pinned):
            await self._version(profile)
        return {p: v for p, (v, _) in self._resolved.items()}

    async def models_info(self) -> dict[str, dict]:
        """Each model deployment's answering replica and the bundles it holds, or the error
        that kept it from answering; ``replicas``: what every live replica of it reported
        holding (``deployments.replica_directory``; outside Serve, the answering one)."""

        async def one(name: str, handle: DeploymentHandle):
            try:
                return name, await asyncio.wait_for(handle.info.remote(), self.timeout_s)
            except Exception as exc:  # reported, not raised: /ready names the failing part
                return name, {"ml_model": name, "error": describe(exc)}

        answers, held = await asyncio.gather(
            asyncio.gather(*(one(n, h) for n, h in self.models.items())), held_by_family()
        )
        info = dict(answers)
        for name, entry in info.items():
            reported = held.get(name) if held is not None else None
            if reported is None and "error" not in entry:
                reported = [{k: v for k, v in entry.items() if k != "ml_model"}]
            entry["replicas"] = [
                {"replica": r.get("replica"), "node_id": r.get("node_id"), "pid": r.get("pid"),
                 "models": [m["model_id"] for m in r.get("models", [])], "reported_at": r.get("reported_at")}
                for r in reported or []
            ]  # fmt: skip
        return info

    async def diagnose(
        self,
        cycles: Sequence[Mapping],
        profile: str | None = None,
        components: Sequence[str] | None = None,
    ) -> list[Diagnosis | CycleRejected]:
        """One answer per cycle, in order, with ``profile``'s models (default: the default
        profile) over ``components`` (the system's topology; None: all the profile has).
        Raises ``NoModelAvailable`` when no model answers."""
        start = time.perf_counter()
        profile = profile or self.default_profile
        try:
            mid = model_id(profile, await self._version(profile))
            reference = await self._reference(mid)
        except UnknownProfile as exc:
            return [CycleRejected.from_error(exc) for _ in cycles]
        wanted = list(reference.profile.components)
        if components is not None:
            wanted = [c for c in wanted if c in set(components)]
            if not wanted:
                exc = SensorDataError(
                    None,
                    f"the system's topology has none of the components profile {profile} diagnoses "
                    f"({', '.join(reference.profile.components)})",
                )
                return [CycleRejected.from_error(exc) for _ in cycles]
        trained = await self._trained_profiles()
        if len(cycles) <= INLINE_FEATURE_CYCLES:
            prepared = prepare_cycles(reference, cycles, trained)
        else:
            prepared = await asyncio.to_thread(prepare_cycles, reference, cycles, trained)  # keep the loop free
        features_ms = (time.perf_counter() - start) * 1000
        out: list[Diagnosis | CycleRejected] = [
            CycleRejected.from_error(prepared.errors[i]) for i in range(len(cycles)) if i in prepared.errors
        ]
        if prepared.rows is None:
            return out
        X = prepared.rows.features
        answered, failed = await self._batcher(mid).submit(X)
        if not answered:
            raise NoModelAvailable(f"no model deployment answered: {failed}")
        results = diagnose_prepared(prepared, profile, answered, self.weights, self.threshold, failed, wanted)
        for diagnosis in results.values():
            diagnosis.feature_extraction_ms = round(features_ms, 3)
            diagnosis.total_processing_time_ms = round((time.perf_counter() - start) * 1000, 3)
        rejected = iter(out)
        return [results[i] if i in results else next(rejected) for i in range(len(cycles))]

    def _batcher(self, mid: str) -> GreedyBatcher:
        batcher = self._batchers.get(mid)
        if batcher is None:
            active = {model_id(p, v) for p, (v, _) in self._resolved.items()}
            for gone in [m for m in self._batchers if m not in active and m != mid]:
                if not self._batchers[gone]._queue:
                    del self._batchers[gone]  # a version rolled out of service

            async def process(blocks: list[np.ndarray]):
                return await self._score_together(mid, blocks)

            batcher = self._batchers[mid] = GreedyBatcher(process, self.max_batch_size)
        return batcher

    async def _score_together(
        self, mid: str, blocks: list[np.ndarray]
    ) -> list[tuple[dict[str, FamilyAnswer], dict[str, str]]]:
        """Concurrent requests' feature rows for one model id: one call per model family for all."""
        answered, failed = await self._call_models(mid, np.vstack(blocks))
        parts = group_slices(len(b) for b in blocks)
        return [({name: a.sliced(part) for name, a in answered.items()}, failed) for part in parts]

    async def _call_models(self, mid: str, X: np.ndarray) -> tuple[dict[str, FamilyAnswer], dict[str, str]]:
        async def one(name: str, handle: DeploymentHandle):
            start = time.perf_counter()
            try:
                call = handle.options(multiplexed_model_id=mid).predict.remote(X)
                answer = await asyncio.wait_for(call, self.timeout_s)
                answer.round_trip_ms = (time.perf_counter() - start) * 1000
                return name, answer, None
            except Exception as exc:
                return name, None, describe(exc)

        answered, failed = {}, {}
        for name, answer, error in await asyncio.gather(*(one(n, h) for n, h in self.models.items())):
            if answer is None:
                failed[name] = error
                log.warning("model %s did not answer for %s: %s", name, mid, error)
            else:
                answered[name] = answer
        return answered, failed

    async def learn(self, cycle: Mapping, labels: dict[str, list], profile: str | None = None) -> dict:
        """Operator-confirmed labels for one cycle → every family that learns from feedback,
        for ``profile``'s version in service (what it did; under ``models`` when several
        learn). Raises ``hydraulics.validation.SensorDataError`` for a cycle that cannot be
        diagnosed or a label for a component the profile does not diagnose."""
        profile = profile or self.default_profile
        mid = model_id(profile, await self._version(profile))
        reference = await self._reference(mid)
        stray = [t for t in labels if t not in reference.profile.targets]
        if stray:
            raise SensorDataError(
                None, f"profile {profile} does not diagnose {stray}; it diagnoses {list(reference.profile.components)}"
            )
        prepared = prepare_cycles(reference, [cycle])
        if prepared.errors:
            raise prepared.errors[0]
        X = prepared.rows.features
        calls = [h.options(multiplexed_model_id=mid).learn.remote(X, labels) for h in self.learners.values()]
        results = await asyncio.gather(*calls)
        return results[0] if len(results) == 1 else {"models": list(results)}
