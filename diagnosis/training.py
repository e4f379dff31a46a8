"""Fitting and scoring one model family; the orchestration across families
(Ray tasks, data loading) lives in ``pipelines/train.py``."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score

from diagnosis.family_base import FamilyModel, encode_labels
from diagnosis.registry import family_class
from hydraulics.components import TARGETS


def fit_family(
    family: str,
    X: np.ndarray,
    labels: pd.DataFrame,
    seed: int = 0,
    threads: int = 1,
    params: dict | None = None,
    feature_set="rig_1hz",
    targets: Sequence[str] = TARGETS,
) -> tuple[FamilyModel, float]:
    model = family_class(family)(seed=seed, threads=threads, params=params, feature_set=feature_set, targets=targets)
    start = time.perf_counter()
    model.fit(X, labels)
    return model, time.perf_counter() - start


def score(probas: dict[str, np.ndarray], labels: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Accuracy and macro-F1 per target, from probabilities in ``target_classes`` order."""
    out = {}
    for target in TARGETS:
        if target not in probas:
            continue
        y_true = encode_labels(target, labels[target].to_numpy())
        y_pred = probas[target].argmax(axis=1)
        out[target] = {
            "accuracy": round(float(accuracy_score(y_true, y_pred)), 4),
            "macro_f1": round(float(f1_score(y_true, y_pred, average="macro")), 4),
        }
    return out
