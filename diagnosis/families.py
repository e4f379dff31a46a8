"""The gradient-boosting and forest families: CatBoost, XGBoost and a random forest.

Each is a ``diagnosis.family_base.FamilyModel``; ``diagnosis.registry`` lists them
with the Adaptive family.
"""

from __future__ import annotations

import functools

import numpy as np

from diagnosis.family_base import FamilyModel


class CatBoostFamily(FamilyModel):
    family = "catboost"
    file_suffix = ".cbm"

    def _new_estimator(self, target, n_classes):
        from catboost import CatBoostClassifier

        p = {"iterations": 300, "depth": 5, "learning_rate": 0.1, **self.params}
        return CatBoostClassifier(
            loss_function="MultiClass",
            random_seed=self.seed,
            thread_count=self.threads,
            verbose=False,
            allow_writing_files=False,
            **p,
        )

    def _save_estimator(self, estimator, path):
        estimator.save_model(str(path))

    def _load_estimator(self, path):
        from catboost import CatBoostClassifier

        est = CatBoostClassifier()
        est.load_model(str(path))
        return est

    def _pin_estimator_threads(self, estimator, threads):
        # A loaded CatBoost model predicts on every core unless each call says otherwise.
        estimator.predict_proba = functools.partial(type(estimator).predict_proba, estimator, thread_count=threads)


class XGBoostFamily(FamilyModel):
    family = "xgboost"
    file_suffix = ".ubj"

    def _new_estimator(self, target, n_classes):
        from xgboost import XGBClassifier

        p = {
            "n_estimators": 400,
            "max_depth": 4,
            "learning_rate": 0.05,
            "subsample": 0.8,
            "colsample_bytree": 0.5,
            **self.params,
        }
        return XGBClassifier(
            objective="multi:softprob",
            num_class=n_classes,
            tree_method="hist",
            n_jobs=self.threads,
            random_state=self.seed,
            **p,
        )

    def _save_estimator(self, estimator, path):
        estimator.save_model(str(path))

    def _load_estimator(self, path):
        from xgboost import XGBClassifier

        est = XGBClassifier()
        est.load_model(str(path))
        return est

    def _pin_estimator_threads(self, estimator, threads):
        estimator.set_params(n_jobs=threads)

    def _predict_proba(self, estimator, X):
        """The booster's own softmax output: what ``predict_proba`` returns for
        ``multi:softprob``, without the scikit-learn wrapper's per-call
        configuration context (most of the time of a one-row call)."""
        return estimator.get_booster().inplace_predict(X)


PACKED_MAX_ROWS = 16  # measured crossover: packed 0.35 vs 5.1 ms at 1 row, slower from about 20 rows


class RandomForestFamily(FamilyModel):
    family = "random_forest"
    trusted_types = ("sklearn.tree._tree.Tree",)  # the fitted trees' node arrays

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
        if len(X) > PACKED_MAX_ROWS or len(self.estimators) != len(self.targets) or not np.isfinite(X).all():
            return super().predict_proba(X)
        packed = self.__dict__.get("_packed")
        if packed is None:
            from diagnosis.forest import PackedForest

            packed = self._packed = PackedForest(self.estimators, self.columns)
        return {t: self._all_levels(t, self.estimators[t], p) for t, p in packed.predict_proba(X).items()}
