"""Novelty flag rates on the UCI data: in-distribution hold-out against cycles the profile was not trained for.

    python -m bench.bench_novelty [--folder ../shared/data/uci_hydraulic] [--designs all]

Fits ``diagnosis.novelty.NoveltyModel`` (and, for comparison, the designs it beat)
on the rig_1hz features of the UCI training split, then prints the share of
cycles flagged in: the hold-out; simulator cycles; the hold-out with each channel
scaled ×1.2, stuck at its first value, pairs of channels swapped; and shifted by
±1..3 s, without and with ``hydraulics.alignment.align`` first. A tampered
block the feature pipeline itself rejects (a value outside a channel's plausible
range) is counted under "rejected"; its features are then computed without the
range check, so the novelty model is measured on it too. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

CHANNELS = ("TS1", "TS2", "TS3", "TS4", "VS1", "CE", "CP", "SE")
PAIRS = (("TS1", "TS2"), ("CE", "CP"), ("SE", "VS1"), ("TS3", "TS4"), ("TS1", "TS3"), ("TS2", "TS4"))
SHIFTS = (-3, -2, -1, 1, 2, 3)
ALIGN_CHANNELS = ("SE", "VS1")
DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / "shared" / "data" / "uci_hydraulic"


def _features(block: dict[str, np.ndarray]) -> tuple[np.ndarray, int]:
    """rig_1hz features and how many cycles the pipeline's validation rejects."""
    from hydraulics import features
    from hydraulics.validation import SensorDataError

    try:
        return features.extract(block, "rig_1hz"), 0
    except SensorDataError:
        n = len(block[CHANNELS[0]])
        _, errors = features.extract_cycles([{c: block[c][i] for c in CHANNELS} for i in range(n)], "rig_1hz")
        fs = features.get_feature_set("rig_1hz")
        return features._compute(fs, features._trim_to_cycle(block))[1], len(errors)


def build_sets(folder: Path) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, int]]]:
    from hydraulics.alignment import align, reference_cycle, shift_block
    from hydraulics.loaders import load_holdout, load_uci, uci_split
    from hydraulics.simulator import simulate_dataset

    train, test = uci_split(load_uci(folder, channels=CHANNELS), load_holdout(folder))
    h = test.channels
    sets: dict[str, tuple[np.ndarray, int]] = {"holdout": _features(h)}
    sets["simulator"] = _features(simulate_dataset(2, seed=5, channels=CHANNELS).channels)
    for ch in CHANNELS:
        sets[f"scaled {ch}"] = _features({**h, ch: h[ch] * 1.2})
    for ch in CHANNELS:
        sets[f"stuck {ch}"] = _features({**h, ch: np.repeat(h[ch][:, :1], h[ch].shape[1], axis=1)})
    for a, b in PAIRS:
        sets[f"swap {a}<->{b}"] = _features({**h, a: h[b], b: h[a]})
    reference = reference_cycle(train.channels, ALIGN_CHANNELS)
    for s in SHIFTS:
        shifted = shift_block(h, s)
        sets[f"shift {s:+d} raw"] = _features(shifted)
        aligned, found, _ = align(shifted, reference, ALIGN_CHANNELS)
        sets[f"shift {s:+d} aligned"] = _features(aligned)
        sets[f"shift {s:+d} aligned"] += (float((found == s).mean()),)
    return _features(train.channels)[0], sets


# --- the designs compared with NoveltyModel ------------------------------------------


def _calibrated(fit_score, X: np.ndarray, quantile: float = 0.995):
    """A scorer whose threshold (1.0) is the ``quantile`` of its held-out-fold scores."""
    from sklearn.model_selection import KFold

    held = np.empty(len(X))
    for tr, te in KFold(5, shuffle=True, random_state=0).split(X):
        held[te] = fit_score(X[tr])(X[te])
    threshold = np.quantile(held, quantile)
    final = fit_score(X)
    return lambda Y: final(Y) / threshold


def isolation_forest(X: np.ndarray):
    """sklearn IsolationForest on robust-standardised features (not saveable without pickle)."""
    from sklearn.ensemble import IsolationForest
    from sklearn.preprocessing import RobustScaler

    def fit(Xt):
        scaler = RobustScaler().fit(Xt)
        forest = IsolationForest(n_estimators=200, random_state=0).fit(scaler.transform(Xt))
        return lambda Y: -forest.score_samples(np.clip(scaler.transform(Y), -1e6, 1e6))

    return _calibrated(fit, X)


def plain_spe_range(X: np.ndarray):
    """The textbook version: robust z, total PCA residual (99 % variance) and max |z| range, no logs,
    no per-channel pooling, no exclusion of broken training cycles."""
    from sklearn.decomposition import PCA

    def fit(Xt):
        center = np.median(Xt, axis=0)
        q25, q75 = np.percentile(Xt, [25, 75], axis=0)
        scale = np.maximum((q75 - q25) / 1.349, 1e-3 * np.abs(center) + 1e-9)
        z = (Xt - center) / scale
        zq = np.maximum(np.quantile(np.abs(z), 0.995, axis=0), 1.0)
        pca = PCA(0.99, svd_solver="full").fit(z)
        spe_t = np.quantile(((z - pca.inverse_transform(pca.transform(z))) ** 2).sum(axis=1), 0.995)

        def score(Y):
            zy = np.clip((Y - center) / scale, -1e6, 1e6)
            spe = ((zy - pca.inverse_transform(pca.transform(zy))) ** 2).sum(axis=1) / spe_t
            return np.maximum(spe, (np.abs(zy) / zq).max(axis=1))

        return score

    return _calibrated(fit, X)


def novelty_model(X: np.ndarray, names: list[str]):
    from diagnosis.novelty import NoveltyModel

    model = NoveltyModel.fit(X, names)
    return lambda Y: model.score(Y).score, model


def main() -> None:
    from hydraulics.alignment import shift_block
    from hydraulics.features import get_feature_set

    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--designs", default="all", help="comma list of: novelty, plain, iforest, augmented")
    args = parser.parse_args()
    start = time.perf_counter()
    X, sets = build_sets(args.folder)
    names = get_feature_set("rig_1hz").feature_names()
    print(f"features of {len(X)} training cycles and {len(sets)} test sets in {time.perf_counter() - start:.1f} s")

    wanted = ["novelty", "plain", "iforest", "augmented"] if args.designs == "all" else args.designs.split(",")
    scorers = {}
    for design in wanted:
        t = time.perf_counter()
        if design == "novelty":
            scorers[design], model = novelty_model(X, names)
            print(f"novelty: {model.n_excluded} of {model.n_train} training cycles excluded as far-out")
        elif design == "plain":
            scorers[design] = plain_spe_range(X)
        elif design == "iforest":
            scorers[design] = isolation_forest(X)
        elif design == "augmented":  # NoveltyModel also trained on early-started, re-aligned training cycles
            from hydraulics.loaders import load_holdout, load_uci, uci_split

            train, _ = uci_split(load_uci(args.folder, channels=CHANNELS), load_holdout(args.folder))
            extra = [_features(shift_block(shift_block(train.channels, -s), s))[0] for s in (1, 2, 3)]
            scorers[design], _ = novelty_model(np.vstack([X, *extra]), names)
        print(f"fitted {design} in {time.perf_counter() - t:.1f} s")

    header = f"{'set':24s} {'rejected':>8s} " + " ".join(f"{d:>10s}" for d in scorers)
    print("\nflag rate (%; score > 1)\n" + header + "\n" + "-" * len(header))
    summary: dict[str, dict[str, list[float]]] = {d: {} for d in scorers}
    for name, (F, rejected, *extra) in sets.items():
        rates = {d: 100.0 * float((fn(F) > 1.0).mean()) for d, fn in scorers.items()}
        note = f"  (align found the shift for {100 * extra[0]:.1f} %)" if extra else ""
        print(f"{name:24s} {rejected:8d} " + " ".join(f"{rates[d]:10.1f}" for d in scorers) + note)
        kind = name.split()[0] + (" aligned" if name.endswith("aligned") else " raw" if name.endswith("raw") else "")
        for d in scorers:
            summary[d].setdefault(kind, []).append(rates[d])
    print("\nsummary (min / mean %)")
    for kind in ("scaled", "stuck", "swap", "shift raw", "shift aligned"):
        cells = [f"{min(summary[d][kind]):4.0f}/{np.mean(summary[d][kind]):4.0f}" for d in scorers]
        print(f"{kind:24s} " + " ".join(f"{c:>10s}" for c in cells))
    print(f"\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
