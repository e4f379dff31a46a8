"""The ingress side of the diagnosis DAG: the prediction cache in front of the ensemble.

A cached answer is served by the ingress replica itself, with no hop to the
ensemble; a miss goes to ``DiagnosisEnsemble.diagnose`` and every complete
answer (all models answered) is stored. The key covers the cycle's channel
values, the system's profile and components, the profile's model versions in
service and the learned-state revisions of the families that learn
(``storage.cache.cache_key``), so an answer of one model version or learned
state is never served under another.

The versions in service are learned per profile from every ensemble answer and
re-read in the background every ``model_version_refresh_s`` (and on every
``/models`` or ``/ready`` call). After a rollout completes, a cached answer of the old models
can be served for at most that long: the same as a request that reached a
not-yet-updated replica during the rollout. The same holds for learned state:
a ``learn`` reply moves this ingress to the new revision at once (the feedback's
own cycle, asked again here, is never answered from before the update); other
ingress replicas move within the refresh interval, as the model replicas
themselves do within their sync interval. A revision is known per model
version and only moves forward (a rollback is a new revision too).

A failing cache (Redis down) is a miss; it never fails a prediction.

Answers are ``diagnosis.report`` types: a ``Diagnosis`` per cycle (cached as its
JSON, without the request's timing, and read back with ``cache_hit=True``), or a
``CycleRejected`` for a cycle that cannot be diagnosed. Feedback for the models
that learn goes through ``learn``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence

from fastapi import Request
from pydantic import ValidationError

from configs.settings import Settings
from diagnosis.profiles import DiagnosisTarget
from diagnosis.registry import FAMILIES
from diagnosis.report import CycleRejected, Diagnosis
from hydraulics.validation import SensorDataError, cycle_arrays
from storage.cache import cache_key, make_cache

log = logging.getLogger("hdx.diagnosis")
_UNCACHED_FIELDS = {"total_processing_time_ms"}  # the request's, not the diagnosis's


class DiagnosisClient:
    def __init__(self, ensemble, settings: Settings):
        self.ensemble = ensemble  # a DeploymentHandle (or anything with .diagnose/.models_info/.learn.remote)
        self.settings = settings
        self.cache = make_cache(settings)
        self.versions: dict[str, dict[str, str]] = {}  # profile → family → version in service
        self._revisions: dict[tuple[str, str], str] = {}  # (family, version) → newest state revision seen
        self._refresh_task: asyncio.Task | None = None

    # --- versions in service ---------------------------------------------------------
    async def models_info(self) -> dict[str, dict]:
        """Each model deployment's answering replica and what it holds (or why it did not answer)."""
        info = await self.ensemble.models_info.remote()
        for name, i in info.items():
            for held in i.get("models", []):
                self._saw_revision(name, held.get("version"), held.get("state_revision"))
        return info

    async def served_profiles(self) -> dict[str, str]:
        """The version each profile is served at (what the cache keys use)."""
        served = await self.ensemble.served_profiles.remote()
        for profile, version in served.items():
            known = self.versions.get(profile, {})
            if set(known.values()) != {version}:
                self.versions[profile] = {f: version for f in FAMILIES}
        return served

    def _saw_revision(self, family: str, version: str | None, revision: str | None) -> None:
        key = (family, version)
        if version and revision and revision > self._revisions.get(key, ""):  # r<8 digits>: sortable
            self._revisions[key] = revision

    def _known_revisions(self, versions: Mapping[str, str]) -> dict[str, str]:
        """The newest learned state of each family's version in service (the cache key's part)."""
        return {f: self._revisions[(f, v)] for f, v in versions.items() if (f, v) in self._revisions}

    async def _refresh_versions(self) -> None:
        while True:
            await asyncio.sleep(self.settings.model_version_refresh_s)
            try:
                await self.served_profiles()
                await self.models_info()
            except Exception as exc:  # the ensemble is down or restarting: keep the versions we know
                log.warning("model version refresh failed: %s", exc)

    async def _known_versions(self, profile: str) -> dict[str, str]:
        """The profile's versions in service as last seen; empty (no cache lookup) until one
        answer or refresh has said."""
        if self._refresh_task is None:
            self._refresh_task = asyncio.get_running_loop().create_task(self._refresh_versions())
        return self.versions.get(profile, {})

    # --- diagnosis ------------------------------------------------------------------------
    async def diagnose(
        self, cycles: Sequence[Mapping], use_cache: bool = True, target: DiagnosisTarget | None = None
    ) -> list[Diagnosis | CycleRejected]:
        """One answer per cycle, in order, cache hits included, with the target's profile
        over its components (default: the default profile, every component).

        Raises ``diagnosis.failures.NoModelAvailable`` when no model answers.
        """
        start = time.perf_counter()
        target = target or DiagnosisTarget()
        profile = target.profile or self.settings.default_profile
        scope = f"{profile}|{','.join(target.components) if target.components is not None else '*'}"
        results: list[Diagnosis | CycleRejected | None] = [None] * len(cycles)
        arrays: dict[int, dict] = {}
        versions = await self._known_versions(profile) if use_cache else {}
        revisions = self._known_revisions(versions)
        for i, raw in enumerate(cycles if use_cache else ()):
            try:
                arrays[i] = cycle_arrays(raw)
            except ValueError:
                continue  # invalid: the ensemble's feature step says why
            if versions:  # known from an earlier answer or refresh: else nothing can be cached yet
                hit = await self.cache.get(cache_key(arrays[i], scope, versions, revisions))
                if hit is not None:
                    results[i] = _cached_diagnosis(hit, time.perf_counter() - start)
        todo = [i for i, r in enumerate(results) if r is None]
        if todo:
            answers = await self.ensemble.diagnose.remote([cycles[i] for i in todo], profile, target.components)
            for i, answer in zip(todo, answers):
                results[i] = answer
                if not isinstance(answer, Diagnosis):
                    continue
                if not answer.models_failed:
                    self.versions[profile] = dict(answer.model_versions)
                for name, revision in answer.state_revisions.items():
                    self._saw_revision(name, answer.model_versions.get(name), revision)
                # Only complete answers are cached (a degraded one must not outlive the outage),
                # under the versions and learned states that actually answered.
                if i in arrays and not answer.models_failed:
                    key = cache_key(arrays[i], scope, answer.model_versions, answer.state_revisions)
                    await self.cache.set(
                        key, answer.model_dump(mode="json", exclude=_UNCACHED_FIELDS), self.settings.cache_ttl_s
                    )
        return results

    async def diagnose_one(
        self, cycle: Mapping, use_cache: bool = True, target: DiagnosisTarget | None = None
    ) -> Diagnosis:
        """The diagnosis of one cycle; ``SensorDataError`` when it cannot be diagnosed."""
        [answer] = await self.diagnose([cycle], use_cache, target)
        if isinstance(answer, CycleRejected):
            raise SensorDataError(answer.channel, answer.problem)
        return answer

    async def learn(self, cycle: Mapping, labels: dict[str, list], profile: str | None = None) -> dict:
        """Operator-confirmed levels for one cycle → the models that learn from feedback, for
        the system's profile; what they did. Raises what the ensemble raised
        (``SensorDataError`` for a bad cycle or a component the profile lacks)."""
        learned = await self.ensemble.learn.remote(cycle, labels, profile)
        for reply in learned.get("models", [learned]):  # one learner's reply, or several under "models"
            self._saw_revision(reply.get("ml_model", ""), reply.get("version"), reply.get("state_revision"))
        return learned

    async def cache_healthy(self) -> bool:
        return await self.cache.ping()


def _cached_diagnosis(stored: dict, elapsed_s: float) -> Diagnosis | None:
    """A cache hit as a ``Diagnosis``; None (a miss) for an entry that no longer reads as one."""
    try:
        return Diagnosis.model_validate(
            {**stored, "cache_hit": True, "total_processing_time_ms": round(elapsed_s * 1000, 3)}
        )
    except ValidationError as exc:  # written by another version of the service
        log.warning("cached diagnosis unreadable, treated as a miss: %s", exc)
        return None


def get_diagnosis(request: Request) -> DiagnosisClient:
    """The app's client, made on first use from ``app.state.ensemble``."""
    state = request.app.state
    if getattr(state, "diagnosis", None) is None:
        state.diagnosis = DiagnosisClient(state.ensemble, state.settings)
    return state.diagnosis
