"""Scoring a block of requests with one loaded bundle: the work of a model replica's batch."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from diagnosis.batching import group_slices
from diagnosis.report import FamilyAnswer
from diagnosis.store import ModelBundle


def answer_blocks(bundle: ModelBundle, feature_blocks: Sequence[np.ndarray]) -> list[FamilyAnswer]:
    """Every request's ``(n, n_features)`` block stacked, one ``predict_proba``, one answer per block."""
    X = np.vstack(feature_blocks)
    start = time.perf_counter()
    probas = bundle.model.predict_proba(X)
    elapsed_ms = (time.perf_counter() - start) * 1000
    return [
        FamilyAnswer(
            family=bundle.family,
            version=bundle.version,
            probas={t: p[part] for t, p in probas.items()},
            processing_time_ms=elapsed_ms,
            batch_rows=len(X),
            state_revision=bundle.state_revision,
        )
        for part in group_slices(len(b) for b in feature_blocks)
    ]


def bundle_info(bundle: ModelBundle) -> dict:
    """What ``/api/v1/models`` shows of a loaded bundle."""
    m = bundle.manifest
    return {
        "ml_model": bundle.family,
        "version": bundle.version,
        "state_revision": bundle.state_revision,
        "feature_set": m["feature_set"]["name"],
        "features": len(m["feature_set"]["feature_names"]),
        "trained_on": m.get("training", {}),
        "metrics": m.get("metrics", {}),
        "created_at": m.get("created_at"),
    }
