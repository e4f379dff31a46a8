"""Is this cycle like the profile's training data? A novelty score for every diagnosis.

A classifier answers confidently for any input, including cycles from another
rig, a miscalibrated sensor or two swapped cables. ``NoveltyModel`` learns what
the training cycles' feature vectors look like and scores how far a new cycle
is from them, so a diagnosis can say "this is outside what I was trained on".

Design ``"pca_range"`` (the one that met the targets; ``bench/bench_novelty.py``
compares it with the alternatives it beat):

* Spread features (``*__std``, ``*__ripple``) are taken as logarithms: a stuck
  sensor's zero spread is its tell, and on a linear scale zero is close to the
  small spreads of quiet healthy cycles.
* Every feature is standardised with robust statistics (median, IQR).
* Relation score: a PCA of the standardised training features predicts each
  feature from the others; each feature's residual is divided by its typical
  training residual, and the squared ratios are averaged per channel (features
  are named ``<channel>__<statistic>``, cross-channel ones ``x__...``). A scaled,
  swapped or stuck channel moves all its features against the channels it is
  physically tied to; pooling them per channel adds that evidence up, where
  one total residual would drown it in the other 200 features' noise.
* Range score: each feature's robust |z| against the ``quantile`` of the
  training |z| of that feature, the maximum over features.

The score is the larger of the two, each divided by its ``quantile`` on
held-out folds of the training data (cross-validated inside ``fit``), and the
maximum again by its held-out ``quantile``: 1.0 is the threshold, and new
in-distribution cycles score above it about ``1 - quantile`` of the time (a
model's scores of its own training rows are over-fitted and would promise less).

Training data of a real rig holds a few broken cycles (the UCI set: ~2 % with the
efficiency factor collapsing mid-cycle, vibration spikes). Left in, they set
the threshold and blind the model. ``fit`` therefore scores the training rows
on held-out folds first and leaves out the far-out ones (Tukey's outer fence on
the log score, ``fence`` IQRs above the upper quartile) before it fits and
calibrates; ``n_excluded`` says how many. ``python -m bench.bench_novelty --sweep``
prints what the fence and the quantile trade: on the UCI rig, every setting that
flags at most 2 % of the hold-out lets at least one kind of tampered channel through
more often than 1 time in 20 (``docs/evaluation.md``).

Saved as ``novelty.npz`` (arrays, read with ``allow_pickle=False``) and
``novelty.json`` (design, parameters, feature names, thresholds); never pickled.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.model_selection import KFold

DESIGN = "pca_range"
NPZ_FILE = "novelty.npz"
JSON_FILE = "novelty.json"
FORMAT = 1
SPREAD_SUFFIXES = ("__std", "__ripple")
_Z_LIMIT = 1e6  # a feature constant in training makes any change huge; keep it finite
FENCE = 3.0  # Tukey's outer fence, in IQRs of the log score: "far out"
# In-distribution cycles scoring below 1. 0.998 rather than 0.995: on the UCI hold-out
# 3.2 % flagged instead of 4.9 %, every tampered set still at least 95.6 % (docs/novelty.md).
QUANTILE = 0.998


@dataclass(frozen=True)
class NoveltyResult:
    """Scores of ``n`` cycles: ``score`` (1.0 = threshold), ``flagged`` (score > 1) and
    ``contributions`` ``(n, n_features)``, each feature's part in the score in the same unit."""

    score: np.ndarray
    flagged: np.ndarray
    contributions: np.ndarray = field(repr=False)
    feature_names: list[str] = field(repr=False)

    def top_features(self, i: int, k: int = 3) -> list[str]:
        """The ``k`` features that contribute most to row ``i``'s score, largest first."""
        order = np.argsort(-self.contributions[i], kind="stable")[:k]
        return [self.feature_names[j] for j in order]


@dataclass
class _Parts:
    """The fitted arrays of one model: what ``novelty.npz`` holds."""

    log_floor: np.ndarray  # (f,) > 0 where a spread feature is taken as a log, else 0
    center: np.ndarray  # (f,) robust location
    scale: np.ndarray  # (f,) robust spread
    z_quantile: np.ndarray  # (f,) training |z| quantile (range score)
    pca_mean: np.ndarray  # (f,)
    components: np.ndarray  # (k, f)
    residual_scale: np.ndarray  # (f,) typical training residual (relation score)
    group: np.ndarray  # (f,) int: the channel group of each feature


def _groups(feature_names: Sequence[str]) -> np.ndarray:
    prefixes = [name.split("__", 1)[0] if "__" in name else name for name in feature_names]
    _, index = np.unique(prefixes, return_inverse=True)
    return index.astype(np.int64)


def _logged(X: np.ndarray, log_floor: np.ndarray) -> np.ndarray:
    X = np.array(X, dtype=np.float64)
    cols = log_floor > 0
    X[:, cols] = np.log(np.maximum(X[:, cols], log_floor[cols]))
    return X


def _standardise(X: np.ndarray, parts: _Parts) -> np.ndarray:
    z = (_logged(X, parts.log_floor) - parts.center) / parts.scale
    return np.clip(np.nan_to_num(z, nan=_Z_LIMIT, posinf=_Z_LIMIT, neginf=-_Z_LIMIT), -_Z_LIMIT, _Z_LIMIT)


def _fit_parts(X: np.ndarray, spread: np.ndarray, group: np.ndarray, n_components: int, quantile: float) -> _Parts:
    # A stuck sensor's spread is exactly 0: the floor keeps the log finite, far below any healthy spread.
    log_floor = np.where(spread, 1e-3 * np.maximum(np.median(X, axis=0), 1e-9), 0.0)
    Xl = _logged(X, log_floor)
    center = np.median(Xl, axis=0)
    q25, q75 = np.percentile(Xl, [25, 75], axis=0)
    # IQR in standard deviations of a normal distribution; a feature without spread gets a floor
    # relative to its level, so that any change of a feature training never varied counts as novel.
    floor = 1e-3 * np.abs(center) + 1e-9
    scale = (q75 - q25) / 1.349
    scale = np.where(scale > floor, scale, np.maximum(Xl.std(axis=0), floor))
    parts = _Parts(log_floor, center, scale, np.ones(X.shape[1]), np.zeros(X.shape[1]), np.zeros((0, X.shape[1])),
                   np.ones(X.shape[1]), group)  # fmt: skip
    z = _standardise(X, parts)
    parts.z_quantile = np.maximum(np.quantile(np.abs(z), quantile, axis=0), 1.0)
    pca = PCA(n_components=min(n_components, *z.shape), svd_solver="full").fit(z)
    parts.pca_mean, parts.components = pca.mean_, pca.components_
    spread_r = _residual(z, parts).std(axis=0)
    parts.residual_scale = np.maximum(spread_r, 1e-6 + 1e-3 * np.median(spread_r))
    return parts


def _residual(z: np.ndarray, parts: _Parts) -> np.ndarray:
    centred = z - parts.pca_mean
    return centred - (centred @ parts.components.T) @ parts.components


def _raw_scores(parts: _Parts, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Relation and range score ``(n, 2)`` and the per-feature terms ``(n, f, 2)`` they are made of."""
    z = _standardise(X, parts)
    n_groups = int(parts.group.max()) + 1
    sizes = np.bincount(parts.group, minlength=n_groups).astype(np.float64)
    relation_terms = (_residual(z, parts) / parts.residual_scale) ** 2 / sizes[parts.group]
    per_group = relation_terms @ (parts.group[:, None] == np.arange(n_groups))  # mean per channel
    range_terms = np.abs(z) / parts.z_quantile
    scores = np.column_stack([per_group.max(axis=1), range_terms.max(axis=1)])
    return scores, np.stack([relation_terms, range_terms], axis=2)


class NoveltyModel:
    """Per-channel PCA residuals and per-feature range of robust-standardised features,
    thresholded on held-out folds of the training data (see the module docstring)."""

    def __init__(self) -> None:
        self.design = DESIGN
        self.feature_names: list[str] = []
        self.params: dict = {}
        self.thresholds = np.ones(3)  # relation, range, their maximum: held-out quantiles
        self.n_train = 0
        self.n_excluded = 0
        self._parts: _Parts | None = None

    @classmethod
    def fit(
        cls,
        X: np.ndarray,
        feature_names: Sequence[str],
        quantile: float = QUANTILE,
        components: float = 0.35,
        n_folds: int = 5,
        seed: int = 0,
        fence: float = FENCE,
    ) -> NoveltyModel:
        """Fit on the training feature matrix (rows = cycles, columns named ``feature_names``).

        ``components``: PCA components as a share of the number of features (the
        features are highly redundant; a third of them keeps the tight relations
        between channels out of the residual's way); ``quantile``: the share of
        in-distribution cycles that should score below 1; ``fence``: training cycles whose
        held-out log score is more than this many IQRs above its upper quartile are left
        out as broken."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(feature_names):
            raise ValueError(f"X has shape {X.shape}, expected (n_cycles, {len(feature_names)})")
        if X.shape[0] < 10 * n_folds or not np.isfinite(X).all():
            raise ValueError(f"need at least {10 * n_folds} rows of finite features, got {X.shape[0]}")
        if not 0.5 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0.5, 1), got {quantile}")
        spread = np.array([name.endswith(SPREAD_SUFFIXES) for name in feature_names])
        group = _groups(feature_names)
        n_components = max(1, round(components * X.shape[1]))

        def held_out(rows: np.ndarray) -> np.ndarray:
            out = np.empty((len(rows), 2))
            for train, test in KFold(n_folds, shuffle=True, random_state=seed).split(rows):
                parts = _fit_parts(X[rows[train]], spread, group, n_components, quantile)
                out[test] = _raw_scores(parts, X[rows[test]])[0]
            return out

        everything = np.arange(X.shape[0])
        first = held_out(everything)
        log_score = np.log(np.maximum((first / np.median(first, axis=0)).max(axis=1), 1e-12))
        q25, q75 = np.percentile(log_score, [25, 75])
        kept = everything[log_score <= q75 + fence * (q75 - q25)]
        scores = held_out(kept)
        part_thresholds = np.quantile(scores, quantile, axis=0)
        combined = np.quantile((scores / part_thresholds).max(axis=1), quantile)

        model = cls()
        model.feature_names = list(feature_names)
        model.params = {
            "quantile": quantile,
            "components": components,
            "n_folds": n_folds,
            "seed": seed,
            "fence": fence,
        }
        model.thresholds = np.r_[part_thresholds, combined]
        model.n_train, model.n_excluded = X.shape[0], X.shape[0] - len(kept)
        model._parts = _fit_parts(X[kept], spread, group, n_components, quantile)
        return model

    def score(self, X: np.ndarray) -> NoveltyResult:
        """Novelty of each row of ``X`` (the columns of ``fit``): 1.0 is the threshold."""
        if self._parts is None:
            raise RuntimeError("NoveltyModel is not fitted")
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        if X.shape[1] != len(self.feature_names):
            raise ValueError(f"X has {X.shape[1]} columns, the model was fitted on {len(self.feature_names)}")
        raw, terms = _raw_scores(self._parts, X)
        parts_t, combined_t = self.thresholds[:2], self.thresholds[2]
        score = (raw / parts_t).max(axis=1) / combined_t
        contributions = (terms / parts_t).max(axis=2) / combined_t
        return NoveltyResult(score, score > 1.0, contributions, self.feature_names)

    # --- persistence: arrays in .npz, the rest in JSON; nothing is pickled -------------

    def save(self, directory: Path) -> None:
        if self._parts is None:
            raise RuntimeError("NoveltyModel is not fitted")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / NPZ_FILE, **{f.name: getattr(self._parts, f.name) for f in fields(_Parts)})
        meta = {
            "format": FORMAT,
            "design": self.design,
            "params": self.params,
            "feature_names": self.feature_names,
            "thresholds": dict(zip(("relation", "range", "combined"), self.thresholds.tolist())),
            "n_train": self.n_train,
            "n_excluded": self.n_excluded,
        }
        (directory / JSON_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: Path) -> NoveltyModel:
        directory = Path(directory)
        meta = json.loads((directory / JSON_FILE).read_text())
        if meta.get("format") != FORMAT or meta.get("design") != DESIGN:
            raise ValueError(f"{directory / JSON_FILE}: not a {DESIGN} novelty model of format {FORMAT}")
        with np.load(directory / NPZ_FILE, allow_pickle=False) as arrays:
            parts = _Parts(**{f.name: arrays[f.name] for f in fields(_Parts)})
        model = cls()
        model.params = meta["params"]
        model.feature_names = list(meta["feature_names"])
        t = meta["thresholds"]
        model.thresholds = np.array([t["relation"], t["range"], t["combined"]], dtype=np.float64)
        model.n_train, model.n_excluded = meta["n_train"], meta["n_excluded"]
        if parts.center.shape != (len(model.feature_names),):
            raise ValueError(f"{directory / NPZ_FILE}: arrays do not match the {len(model.feature_names)} features")
        model._parts = parts
        return model
