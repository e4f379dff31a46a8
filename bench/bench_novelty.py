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

``--sweep`` measures the served path instead (``ProfileReference``: aligned
features, the profile's novelty columns, the tampered sets of ``hdx evaluate``),
refitting ``NoveltyModel`` for a grid of far-out fences and calibration quantiles,
and prints for each the hold-out flag rate against the tampered sets' rates (the
trade-off ``docs/novelty.md`` reports), then every hold-out cycle the default model
flags with its score, its distance in cycles to the nearest change of the rig's
conditions (``profile.txt``) and the features that flagged it.
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


SWEEP_FENCES = (3.0, 4.5, 6.0, float("inf"))
SWEEP_QUANTILES = (0.995, 0.998)
COLD_START = 10  # the recording's first block, the oil warming from 35 °C: the split holds it out whole


def sweep(folder: Path) -> None:
    """The served path (``ProfileReference``: aligned features, the profile's novelty
    columns) with the novelty model refitted per setting; the tampered sets of
    ``pipelines.evaluate`` (a cycle validation refuses counts as caught, as there)."""
    from diagnosis.novelty import FENCE, QUANTILE, NoveltyModel
    from diagnosis.profiles import ProfileReference, builtin_profile, prepare_cycles
    from hydraulics.features import extract
    from hydraulics.loaders import load_holdout, load_uci, uci_split
    from pipelines.evaluate import tampered

    profile = builtin_profile("uci-1hz")
    train, test = uci_split(load_uci(folder, channels=list(profile.channels)), load_holdout(folder))
    aligned, _, _ = ProfileReference.fit(profile, train.channels).align(train.channels)
    X = extract(aligned, profile.feature_set)
    reference = ProfileReference.fit(profile, train.channels, X)
    cols = reference.novelty_columns
    names = [profile.feature_set.feature_names()[i] for i in cols]
    holdout_block = {c: test.channels[c] for c in profile.channels}
    sets = {"holdout": holdout_block, **tampered(holdout_block, list(profile.channels))}
    cycles = {
        name: [{c: block[c][i] for c in profile.channels} for i in range(len(test))] for name, block in sets.items()
    }

    def caught(name: str) -> float:
        prepared = prepare_cycles(reference, cycles[name])
        flagged = 0 if prepared.rows is None else int(prepared.rows.flagged.sum())
        return 100.0 * (flagged + len(prepared.errors)) / len(cycles[name])

    print("\nfence x quantile: hold-out flag rate against the tampered sets' (min / mean %)")
    print(
        f"{'fence':>6s} {'quantile':>8s} {'excluded':>8s} {'hold-out':>8s} "
        f"{'scaled':>13s} {'stuck':>13s} {'swapped':>13s}"
    )
    for fence in SWEEP_FENCES:
        for q in SWEEP_QUANTILES:
            reference.novelty = NoveltyModel.fit(X[:, cols], names, quantile=q, fence=fence)
            kinds: dict[str, list[float]] = {}
            for name in sets:
                kinds.setdefault(name.split()[0], []).append(caught(name))
            cells = [f"{min(kinds[k]):5.1f} / {np.mean(kinds[k]):5.1f}" for k in ("scaled", "stuck", "swapped")]
            print(
                f"{fence:6g} {q:8.3f} {reference.novelty.n_excluded:8d} {kinds['holdout'][0]:7.1f}% " + " ".join(cells)
            )

    reference.novelty = NoveltyModel.fit(X[:, cols], names, quantile=QUANTILE, fence=FENCE)
    result = reference.prepare(holdout_block)
    conditions = np.loadtxt(folder / "profile.txt")[:, :4]
    changes = np.flatnonzero((conditions[1:] != conditions[:-1]).any(axis=1)) + 1  # first cycle of each run
    holdout = test.cycle_ids.astype(int)
    flagged = np.flatnonzero(result.flagged)
    print(f"\nhold-out cycles flagged by the default model: {len(flagged)} of {len(holdout)}")
    print(f"{'cycle':>6s} {'score':>7s} {'to a change':>11s}  furthest features")
    for i in flagged[np.argsort(-result.novelty[flagged])]:
        cycle = int(holdout[i])
        where = "cold start" if cycle < COLD_START else f"{int(np.min(np.abs(changes - cycle)))} cycles"
        print(f"{cycle:6d} {result.novelty[i]:7.2f} {where:>11s}  {', '.join(result.top_features[i])}")
    distance = np.array([np.min(np.abs(changes - c)) for c in holdout])
    for d in (2, 4):
        near = (distance <= d) | (holdout < COLD_START)
        print(
            f"within {d} cycles of a change or in the cold start: {near.sum()} hold-out cycles, "
            f"{100 * result.flagged[near].mean():.1f} % flagged; the other {(~near).sum()}: "
            f"{100 * result.flagged[~near].mean():.1f} % flagged"
        )


def main() -> None:
    from hydraulics.alignment import shift_block
    from hydraulics.features import get_feature_set

    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--designs", default="all", help="comma list of: novelty, plain, iforest, augmented")
    parser.add_argument("--sweep", action="store_true", help="the fence x quantile trade-off and the flagged cycles")
    args = parser.parse_args()
    start = time.perf_counter()
    if args.sweep:
        sweep(args.folder)
        print(f"\ntotal {time.perf_counter() - start:.1f} s")
        return
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
