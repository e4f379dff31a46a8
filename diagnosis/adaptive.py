"""The Adaptive model: starts from the same training data as the other three
families and keeps learning after deployment from operator-confirmed labels.

Each target is a small neural network (scikit-learn's ``MLPClassifier``) on
standardised features, because it supports true incremental updates
(``partial_fit``) without retraining from scratch. A feedback update trains on
the confirmed cycles, repeated ``feedback_weight`` times, mixed with a replay
sample of earlier examples so one correction does not wipe out what the model
knew (catastrophic forgetting). Confirmed cycles join the replay memory, so
later updates keep honouring them.

The whole state (scaler, networks, memory, update count) is saved with
``save``/``load``; a restart from the saved state loses nothing learned. Nothing
of it is pickled: the networks and the scaler are ``skops`` files, the replay
memory a ``.npz`` of plain arrays (read with ``allow_pickle=False``), the update
count, parameters and random-generator state JSON.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from diagnosis.family_base import FamilyModel, encode_labels
from hydraulics.components import TARGETS, target_classes

STATE_FILE = "adaptive_state.json"
MEMORY_FILE = "adaptive_memory.npz"
SCALER_FILE = "scaler.skops"


class AdaptiveFamily(FamilyModel):
    family = "adaptive"
    # partial_fit continues from the saved Adam moments, so the optimiser is part of the state.
    trusted_types = ("sklearn.neural_network._stochastic_optimizers.AdamOptimizer",)

    def __init__(self, seed=0, threads=1, params=None, feature_set="rig_1hz", targets=TARGETS):
        super().__init__(seed, threads, params, feature_set, targets)
        p = {
            "hidden": 96,
            "alpha": 1e-3,
            "epochs": 400,
            "memory_size": 3000,
            "feedback_weight": 16,
            "feedback_epochs": 20,
            **self.params,
        }
        self.params = p
        self.scaler: StandardScaler | None = None
        self.memory_X: np.ndarray | None = None
        self.memory_y: dict[str, np.ndarray] = {}
        self.n_updates = 0
        self._rng = np.random.default_rng(seed)

    def _new_estimator(self, target, n_classes):
        return MLPClassifier(
            hidden_layer_sizes=(self.params["hidden"],),
            alpha=self.params["alpha"],
            max_iter=self.params["epochs"],
            random_state=self.seed,
            early_stopping=False,
        )

    def fit(self, X: np.ndarray, labels: pd.DataFrame) -> AdaptiveFamily:
        self.scaler = StandardScaler().fit(X)
        Z = self.scaler.transform(X)
        super().fit(Z, labels)
        keep = self._rng.permutation(len(X))[: self.params["memory_size"]]
        self.memory_X = Z[keep]
        self.memory_y = {t: encode_labels(t, labels[t].to_numpy())[keep] for t in self.targets}
        return self

    def predict_proba(self, X: np.ndarray) -> dict[str, np.ndarray]:
        return super().predict_proba(self.scaler.transform(X))

    def pin_threads(self, threads: int) -> None:
        """The networks multiply through numpy's BLAS, whose thread pool is per process:
        this limits it for the whole process (one model process, one limit)."""
        from threadpoolctl import threadpool_limits

        super().pin_threads(threads)
        threadpool_limits(limits=threads, user_api="blas")

    def update(self, X: np.ndarray, labels: pd.DataFrame) -> int:
        """Learn from operator-confirmed cycles. ``labels`` may hold any subset of
        the targets, and NaN where the operator did not confirm a target.
        Returns the number of targets updated."""
        Z = self.scaler.transform(np.atleast_2d(X))
        # What the model believed before, kept for targets the operator left out.
        remembered = {t: self.estimators[t].predict(Z[:, self.columns[t]]) for t in self.targets}
        made = 0
        for target in self.targets:
            if target not in labels.columns or not labels[target].notna().any():
                continue
            known = labels[target].notna().to_numpy()
            z_new = Z[known]
            y_new = encode_labels(target, labels[target].to_numpy()[known])
            remembered[target][known] = y_new
            self._train_on(target, z_new, y_new)
            made += 1
        if made:
            self._remember(Z, remembered)
            self.n_updates += 1
        return made

    def _train_on(self, target: str, z_new: np.ndarray, y_new: np.ndarray) -> None:
        est = self.estimators[target]
        classes = np.arange(len(target_classes(target)))
        w = self.params["feedback_weight"]
        for _ in range(self.params["feedback_epochs"]):
            replay = self._rng.integers(0, len(self.memory_X), size=4 * w)
            zb = np.vstack([np.repeat(z_new, w, axis=0), self.memory_X[replay]])[:, self.columns[target]]
            yb = np.concatenate([np.repeat(y_new, w), self.memory_y[target][replay]])
            est.partial_fit(zb, yb, classes=classes)

    def _remember(self, Z: np.ndarray, y: dict[str, np.ndarray]) -> None:
        self.memory_X = np.vstack([self.memory_X, Z])
        for t in self.targets:
            self.memory_y[t] = np.concatenate([self.memory_y[t], y[t]])
        overflow = len(self.memory_X) - self.params["memory_size"]
        if overflow > 0:  # forget the oldest rows first: training data before feedback
            self.memory_X = self.memory_X[overflow:]
            self.memory_y = {t: v[overflow:] for t, v in self.memory_y.items()}

    def save(self, directory):
        import skops.io  # imported when used (see diagnosis.family_base)

        directory.mkdir(parents=True, exist_ok=True)
        skops.io.dump(self.scaler, directory / SCALER_FILE)
        memory = {"X": self.memory_X, **{f"y_{t}": y for t, y in self.memory_y.items()}}
        np.savez(directory / MEMORY_FILE, allow_pickle=False, **memory)
        state = {"n_updates": self.n_updates, "params": self.params, "rng": self._rng.bit_generator.state}
        (directory / STATE_FILE).write_text(json.dumps(state))
        return [SCALER_FILE, MEMORY_FILE, STATE_FILE] + super().save(directory)

    @classmethod
    def load(cls, directory):
        import skops.io

        model = super().load(directory)
        model.scaler = skops.io.load(directory / SCALER_FILE, trusted=[])
        with np.load(directory / MEMORY_FILE, allow_pickle=False) as memory:
            model.memory_X = memory["X"]
            model.memory_y = {t: memory[f"y_{t}"] for t in model.targets if f"y_{t}" in memory}
        state = json.loads((directory / STATE_FILE).read_text())
        model.n_updates = state["n_updates"]
        model.params = state["params"]
        model._rng.bit_generator.state = state["rng"]
        return model
