"""The four model families. Each holds one classifier per target (the four
components and the stable flag) and answers with probabilities over that
target's levels in the fixed order of ``hydraulics.components.target_classes``,
so the ensemble can add them up without knowing which library made them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import joblib
import numpy as np
import pandas as pd

from hydraulics.components import TARGETS, target_classes
from hydraulics.features import get_feature_set

FAMILY_NAMES: tuple[str, ...] = ("catboost", "xgboost", "random_forest", "adaptive")


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
    file_suffix: ClassVar[str] = ".joblib"

    def __init__(self, seed: int = 0, threads: int = 1, params: dict | None = None, feature_set: str = "rig_1hz"):
        self.seed = seed
        self.threads = threads
        self.params = dict(params or {})
        self.feature_set = feature_set
        self.estimators: dict[str, object] = {}
        fs = get_feature_set(feature_set)
        self.columns = {t: fs.target_columns(t) for t in TARGETS}

    # --- subclass hooks ---------------------------------------------------------
    def _new_estimator(self, target: str, n_classes: int):
        raise NotImplementedError

    def _save_estimator(self, estimator, path: Path) -> None:
        joblib.dump(estimator, path)

    def _load_estimator(self, path: Path):
        return joblib.load(path)

    def _fit_estimator(self, estimator, X: np.ndarray, y: np.ndarray) -> None:
        estimator.fit(X, y)

    def _predict_proba(self, estimator, X: np.ndarray) -> np.ndarray:
        return estimator.predict_proba(X)

    # --- shared behaviour ------------------------------------------------------------
    def fit(self, X: np.ndarray, labels: pd.DataFrame) -> "FamilyModel":
        for target in TARGETS:
            classes = target_classes(target)
            y = encode_labels(target, labels[target].to_numpy())
            est = self._new_estimator(target, len(classes))
            self._fit_estimator(est, X[:, self.columns[target]], y)
            self.estimators[target] = est
        return self

    def predict_proba(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """``{target: (n, n_levels)}``, columns in ``target_classes(target)`` order."""
        return {target: self._all_levels(target, est, self._predict_proba(est, X[:, self.columns[target]]))
                for target, est in self.estimators.items()}

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
        (directory / "family.json").write_text(json.dumps({"family": self.family, "params": self.params, "feature_set": self.feature_set}))
        return files

    @classmethod
    def load(cls, directory: Path) -> "FamilyModel":
        meta = json.loads((directory / "family.json").read_text())
        model = cls(params=meta.get("params"), feature_set=meta["feature_set"])
        for target in TARGETS:
            path = directory / f"{target}{cls.file_suffix}"
            if path.exists():
                model.estimators[target] = model._load_estimator(path)
        return model


class CatBoostFamily(FamilyModel):
    family = "catboost"
    file_suffix = ".cbm"

    def _new_estimator(self, target, n_classes):
        from catboost import CatBoostClassifier

        p = {"iterations": 300, "depth": 5, "learning_rate": 0.1, **self.params}
        return CatBoostClassifier(loss_function="MultiClass", random_seed=self.seed, thread_count=self.threads,
                                  verbose=False, allow_writing_files=False, **p)

    def _save_estimator(self, estimator, path):
        estimator.save_model(str(path))

    def _load_estimator(self, path):
        from catboost import CatBoostClassifier

        est = CatBoostClassifier()
        est.load_model(str(path))
        return est


class XGBoostFamily(FamilyModel):
    family = "xgboost"
    file_suffix = ".ubj"

    def _new_estimator(self, target, n_classes):
        from xgboost import XGBClassifier

        p = {"n_estimators": 400, "max_depth": 4, "learning_rate": 0.05, "subsample": 0.8,
             "colsample_bytree": 0.5, **self.params}
        return XGBClassifier(objective="multi:softprob", num_class=n_classes, tree_method="hist",
                             n_jobs=self.threads, random_state=self.seed, **p)

    def _save_estimator(self, estimator, path):
        estimator.save_model(str(path))

    def _load_estimator(self, path):
        from xgboost import XGBClassifier

        est = XGBClassifier()
        est.load_model(str(path))
        return est

    def _predict_proba(self, estimator, X):
        """The booster's own softmax output: what ``predict_proba`` returns for
        ``multi:softprob``, without the scikit-learn wrapper's per-call
        configuration context (most of the time of a one-row call)."""
        return estimator.get_booster().inplace_predict(X)


PACKED_MAX_ROWS = 16  # measured crossover: packed 0.35 vs 5.1 ms at 1 row, slower from about 20 rows


class RandomForestFamily(FamilyModel):
    family = "random_forest"

    def _new_estimator(self, target, n_classes):
        from sklearn.ensemble import RandomForestClassifier

        p = {"n_estimators": 300, "min_samples_leaf": 1, "max_features": "sqrt", **self.params}
        return RandomForestClassifier(n_jobs=self.threads, random_state=self.seed, **p)

    def _predict_proba(self, estimator, X):
        """The forest's own average of its trees' class frequencies, without the
        per-tree dispatch of ``predict_proba`` (about 30 µs a tree, 50 ms a
        request for five 300-tree forests; this loop is ~15× faster and equal to
        ``predict_proba``, which tests check)."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        total = sum(tree.tree_.predict(X).reshape(len(X), -1) for tree in estimator.estimators_)
        proba = total / len(estimator.estimators_)
        return proba / proba.sum(axis=1, keepdims=True)

    def predict_proba(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Requests of a few rows descend all trees of all targets together
        (``diagnosis.forest``, about 15× faster for one row); larger blocks are
        faster tree by tree."""
        if len(X) > PACKED_MAX_ROWS or len(self.estimators) != len(TARGETS) or not np.isfinite(X).all():
            return super().predict_proba(X)
        packed = self.__dict__.get("_packed")
        if packed is None:
            from diagnosis.forest import PackedForest

            packed = self._packed = PackedForest(self.estimators, self.columns)
        return {t: self._all_levels(t, self.estimators[t], p) for t, p in packed.predict_proba(X).items()}


def family_class(name: str) -> type[FamilyModel]:
    from diagnosis.adaptive import AdaptiveFamily  # imported here: it depends on this module

    classes = {c.family: c for c in (CatBoostFamily, XGBoostFamily, RandomForestFamily, AdaptiveFamily)}
    try:
        return classes[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {list(FAMILY_NAMES)}") from None
