"""What every model family is: one classifier per target (the four components
and the stable flag), answering with probabilities over that target's levels in
the fixed order of ``hydraulics.components.target_classes``, so the ensemble can
add them up without knowing which library made them.

The families themselves are in ``diagnosis.families`` and ``diagnosis.adaptive``;
``diagnosis.registry`` names them.

Estimators are saved in formats that load without running code: the libraries'
own model files where they have one (CatBoost, XGBoost), otherwise ``skops``, whose
loader builds only scikit-learn types plus the few a family names in
``trusted_types``. Pickle (joblib) is never used: whoever can write the model store
would run code in every replica that loads a bundle.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from hydraulics.components import TARGETS, target_classes
from hydraulics.features import FeatureSet, feature_set_from


def encode_labels(target: str, values: np.ndarray) -> np.ndarray:
    """Level values (e.g. 130 bar) → column indices of ``target_classes(target)``."""
    classes = target_classes(target)
    index = {v: i for i, v in enumerate(classes)}
    try:
        return np.array([index[int(v)] for v in values], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"{target}: unknown level {exc.args[0]!r}; expected one of {list(classes)}") from None


class FamilyModel:
    """One classifier per target; subclasses say how to build, save and load one."""

    family: ClassVar[str]
    file_suffix: ClassVar[str] = ".skops"
    # Types beyond scikit-learn's own estimators that skops may build when loading this family.
    trusted_types: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        seed: int = 0,
        threads: int = 1,
        params: dict | None = None,
        feature_set: str | Mapping | FeatureSet = "rig_1hz",
        targets: Sequence[str] = TARGETS,
    ):
        self.seed = seed
        self.threads = threads
        self.params = dict(params or {})
        self.feature_set: FeatureSet = feature_set_from(feature_set)
        unknown = [t for t in targets if t not in TARGETS]
        if unknown:
            raise ValueError(f"unknown targets {unknown}; expected a subset of {list(TARGETS)}")
        self.targets = tuple(t for t in TARGETS if t in targets)  # a profile's components and the stable flag
        self.estimators: dict[str, object] = {}
        self.columns = {t: self.feature_set.target_columns(t) for t in self.targets}

    # --- subclass hooks ---------------------------------------------------------
    def _new_estimator(self, target: str, n_classes: int):
        raise NotImplementedError

    def _save_estimator(self, estimator, path: Path) -> None:
        import skops.io  # imported when used: importing it loads every scikit-learn module (seconds)

        skops.io.dump(estimator, path)

    def _load_estimator(self, path: Path):
        import skops.io

        return skops.io.load(path, trusted=list(self.trusted_types))

    def _fit_estimator(self, estimator, X: np.ndarray, y: np.ndarray) -> None:
        estimator.fit(X, y)

    def _predict_proba(self, estimator, X: np.ndarray) -> np.ndarray:
        return estimator.predict_proba(X)

    def _pin_estimator_threads(self, estimator, threads: int) -> None:
        if hasattr(estimator, "n_jobs"):
            estimator.n_jobs = threads

    # --- shared behaviour ------------------------------------------------------------
    def pin_threads(self, threads: int) -> None:
        """Predict with ``threads`` threads. A model loaded from disk otherwise uses every
        core, which oversubscribes the CPUs of an actor pool or a replica."""
        self.threads = threads
        for est in self.estimators.values():
            self._pin_estimator_threads(est, threads)

    def fit(self, X: np.ndarray, labels: pd.DataFrame) -> FamilyModel:
        for target in self.targets:
            classes = target_classes(target)
            y = encode_labels(target, labels[target].to_numpy())
            est = self._new_estimator(target, len(classes))
            self._fit_estimator(est, X[:, self.columns[target]], y)
            self.estimators[target] = est
        return self

    def predict_proba(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """``{target: (n, n_levels)}``, columns in ``target_classes(target)`` order."""
        return {
            target: self._all_levels(target, est, self._predict_proba(est, X[:, self.columns[target]]))
            for target, est in self.estimators.items()
        }

    @staticmethod
    def _all_levels(target: str, estimator, proba: np.ndarray) -> np.ndarray:
        """An estimator's columns (the levels it saw in training) → every level of the target."""
        proba = np.asarray(proba, dtype=np.float64)
        seen = np.asarray(getattr(estimator, "classes_", np.arange(proba.shape[1]))).astype(int)
        full = np.zeros((proba.shape[0], len(target_classes(target))))
        full[:, seen] = proba  # a level never seen in training keeps probability 0
        return full

    def save(self, directory: Path) -> list[str]:
        directory.mkdir(parents=True, exist_ok=True)
        files = []
        for target, est in self.estimators.items():
            name = f"{target}{self.file_suffix}"
            self._save_estimator(est, directory / name)
            files.append(name)
        (directory / "family.json").write_text(
            json.dumps(
                {
                    "family": self.family,
                    "params": self.params,
                    "feature_set": self.feature_set.spec(),
                    "targets": list(self.targets),
                }
            )
        )
        return files

    @classmethod
    def load(cls, directory: Path) -> FamilyModel:
        meta = json.loads((directory / "family.json").read_text())
        model = cls(params=meta.get("params"), feature_set=meta["feature_set"], targets=meta.get("targets", TARGETS))
        for target in model.targets:
            path = directory / f"{target}{cls.file_suffix}"
            if path.exists():
                model.estimators[target] = model._load_estimator(path)
        return model
