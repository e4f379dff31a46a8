"""Learning from operator feedback without losing an update, whatever the replica count.

Every model replica of a learning family (the Adaptive family) may receive
feedback. Each learns on a copy of the newest *saved* state and commits it as the
next revision (``ModelStore.save_state``, parent recorded). When another replica
committed that revision first, the update is applied again on the newer state and
committed after it: the revisions form one line, and each confirmed label is in
every later revision. Learning on a copy also leaves the model that serving
threads are reading untouched.

After a commit, revisions beyond the newest ``keep`` are deleted. A rollback is a
new revision holding an older one's state, so replicas pick it up like any other.
"""

from __future__ import annotations

import copy
import dataclasses
import logging

import pandas as pd

from diagnosis.store import ModelBundle, ModelStore, StateConflict

log = logging.getLogger("hdx.learning")
MAX_ATTEMPTS = 50  # each conflict means another update was committed, so the line always moves on


def learn_and_save(
    store: ModelStore,
    bundle: ModelBundle,
    features,
    labels: pd.DataFrame,
    keep_revisions: int,
    max_attempts: int = MAX_ATTEMPTS,
) -> tuple[ModelBundle, int]:
    """Apply ``labels`` on the newest saved state of ``bundle``'s version and commit it.

    Returns the bundle to serve from now on (the new revision, or the newest one
    when nothing was learned) and the number of targets updated. Raises what
    ``update`` raises for bad labels, and ``StateConflict`` after ``max_attempts``
    lost races."""
    base = bundle
    for _ in range(max_attempts):
        if store.latest_state(base.family, base.version) != base.state_revision:
            base = store.load(base.family, base.version)
        candidate = dataclasses.replace(base, model=copy.deepcopy(base.model))
        made = candidate.model.update(features, labels)
        if not made:
            return base, 0
        try:
            store.save_state(candidate)
        except StateConflict as exc:
            log.info("%s; learning again on the newer state", exc)
            base = store.load(base.family, base.version)
            continue
        store.prune_states(candidate.family, candidate.version, keep_revisions)
        return candidate, made
    raise StateConflict(f"{bundle.family} {bundle.version}: gave up after {max_attempts} concurrent commits")


def rollback_state(store: ModelStore, family: str, version: str, revision: str, keep_revisions: int) -> str:
    """Commit the state of ``revision`` (``diagnosis.store.BASE_STATE``: the trained model,
    before any feedback) as the newest revision; returns the new revision's name."""
    target = store.load(family, version, revision=revision)
    version = target.version
    for _ in range(MAX_ATTEMPTS):
        target.state_revision = store.latest_state(family, version)
        try:
            new = store.save_state(target, rolled_back_from=revision)
        except StateConflict:
            continue  # someone learned meanwhile: the rollback goes after their revision
        store.prune_states(family, version, keep_revisions)
        return new
    raise StateConflict(f"{family} {version}: gave up rolling back after {MAX_ATTEMPTS} concurrent commits")
