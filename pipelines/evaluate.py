"""How well a trained profile version answers: hold-out accuracy, the same with every
cycle shifted in time, and how often its novelty flag fires in and out of distribution.

    python -m pipelines.evaluate --profile uci-1hz          # after `hdx train --source uci`
    hdx evaluate                                           # trains uci-1hz on UCI, then this

Shifted cycles are edge-padded (``hydraulics.alignment.shift_block``: a cycle one
second late repeats its first sample and drops its last), then served as any
cycle is: aligned to the reference, featurised, scored by the four families and
combined (``diagnosis.profiles.prepare_cycles``, ``diagnosis.voting``). Novelty is
measured on the hold-out itself (in distribution: should not fire) and on cycles
the profile was not trained for: simulator cycles, each channel scaled by 20 %,
each channel stuck at its first value, and pairs of channels swapped. A tampered
cycle that validation already refuses (a value far outside its channel's range)
counts as caught and is reported separately.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from itertools import pairwise

import numpy as np
import typer

from diagnosis.profiles import ProfileReference, prepare_cycles
from diagnosis.registry import FAMILY_NAMES, ensemble_weights
from diagnosis.store import ModelStore
from diagnosis.training import score
from diagnosis.voting import weighted_probas
from hydraulics.alignment import shift_block
from hydraulics.channels import CHANNELS
from hydraulics.dataset import RigDataset
from hydraulics.features import extract

SHIFTS_S = (-3, -2, -1, 0, 1, 2, 3)
SCALE = 1.2


def _cycles(block: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    n = len(next(iter(block.values())))
    return [{c: v[i] for c, v in block.items()} for i in range(n)]


class Evaluator:
    """One profile version's reference and bundles, scoring blocks of cycles as serving does."""

    def __init__(self, store: ModelStore, version: str, weights: Mapping[str, float]):
        self.reference: ProfileReference = store.load_reference(version)
        self.bundles = {f: store.load(f, version, with_state=False) for f in FAMILY_NAMES}
        self.weights = {f: weights[f] for f in FAMILY_NAMES}
        self.version = version

    def probas(self, X: np.ndarray) -> dict[str, np.ndarray]:
        combined, _ = weighted_probas({f: b.model.predict_proba(X) for f, b in self.bundles.items()}, self.weights)
        return combined

    def accuracy(self, block: Mapping[str, np.ndarray], labels, aligned: bool = True) -> dict:
        if aligned:
            prepared = self.reference.prepare(block)
            X, flagged = prepared.features, prepared.flagged
        else:
            X, flagged = extract(block, self.reference.profile.feature_set), None
        metrics = score(self.probas(X), labels)
        out = {t: round(m["accuracy"] * 100, 1) for t, m in metrics.items() if t in self.reference.profile.components}
        if flagged is not None:
            out["novelty_flagged_pct"] = round(float(np.mean(flagged)) * 100, 1)
        return out

    def errors_flagged(self, block: Mapping[str, np.ndarray], labels) -> dict:
        """Per component: accuracy on every cycle, on the cycles the novelty check passes, and
        how many wrong answers the check flagged (a flagged diagnosis says it cannot be vouched for)."""
        from diagnosis.family_base import encode_labels

        prepared = self.reference.prepare(block)
        probas, flagged = self.probas(prepared.features), prepared.flagged
        out = {}
        for target in self.reference.profile.components:
            wrong = probas[target].argmax(axis=1) != encode_labels(target, labels[target].to_numpy())
            out[target] = {
                "accuracy": round(100 * float(1 - wrong.mean()), 1),
                "accuracy_unflagged": round(100 * float(1 - wrong[~flagged].mean()), 1),
                "wrong": int(wrong.sum()),
                "wrong_flagged": int((wrong & flagged).sum()),
            }
        return {"cycles": len(flagged), "flagged": int(flagged.sum()), "components": out}

    def flag_rate(self, block: Mapping[str, np.ndarray]) -> dict:
        """Share of cycles flagged out of distribution (refused by validation counts as caught)."""
        prepared = prepare_cycles(self.reference, _cycles(block))
        n = len(prepared.valid) + len(prepared.errors)
        flagged = 0 if prepared.rows is None else int(np.sum(prepared.rows.flagged))
        return {
            "caught_pct": round((flagged + len(prepared.errors)) / n * 100, 1),
            "refused_by_validation": len(prepared.errors),
            "cycles": n,
        }


def tampered(block: Mapping[str, np.ndarray], channels: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """Each channel ×1.2, each channel stuck at its first value, neighbouring same-rate channels swapped."""
    out = {}
    for c in channels:
        out[f"scaled {c} x{SCALE}"] = {**block, c: block[c] * SCALE}
        out[f"stuck {c}"] = {**block, c: np.repeat(block[c][:, :1], block[c].shape[1], axis=1)}
    for a, b in pairwise(channels):
        if CHANNELS[a].rate_hz == CHANNELS[b].rate_hz:
            out[f"swapped {a}<->{b}"] = {**block, a: block[b], b: block[a]}
    return out


def evaluate_version(
    store: ModelStore, version: str, test: RigDataset, weights: Mapping[str, float], simulator_seed: int = 99
) -> dict:
    """The shifted-accuracy table and the novelty rates of one profile version on ``test``."""
    from hydraulics.simulator import simulate_dataset

    ev = Evaluator(store, version, weights)
    channels = list(ev.reference.profile.channels)
    block = {c: test.channels[c] for c in channels}
    shifted = {}
    for s in SHIFTS_S:
        moved = shift_block(block, s) if s else block
        shifted[str(s)] = {
            "aligned": ev.accuracy(moved, test.labels),
            "not_aligned": ev.accuracy(moved, test.labels, aligned=False),
        }
    sim = simulate_dataset(1, seed=simulator_seed, channels=channels)
    novelty = {"hold-out (in distribution)": ev.flag_rate(block), "simulator cycles": ev.flag_rate(sim.channels)}
    kinds: dict[str, list[float]] = {}
    for name, tampered_block in tampered(block, channels).items():
        rate = ev.flag_rate(tampered_block)
        novelty[name] = rate
        kinds.setdefault(name.split()[0], []).append(rate["caught_pct"])
    summary = {kind: {"min": min(v), "mean": round(float(np.mean(v)), 1), "n": len(v)} for kind, v in kinds.items()}
    return {
        "profile": ev.reference.profile.name,
        "version": version,
        "errors_flagged": ev.errors_flagged(block, test.labels),
        "shifted": shifted,
        "novelty": novelty,
        "novelty_summary": summary,
    }


def format_evaluation(result: dict) -> str:
    comps = [k for k in next(iter(result["shifted"].values()))["aligned"] if k != "novelty_flagged_pct"]
    lines = [
        "| shift (s) | " + " | ".join(f"{c} aligned / not" for c in comps) + " | novelty flagged |",
        "|---|" + "---|" * (len(comps) + 1),
    ]
    for s, row in result["shifted"].items():
        cells = [f"{row['aligned'][c]:.1f} / {row['not_aligned'][c]:.1f}" for c in comps]
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {row['aligned'].get('novelty_flagged_pct', '–')} % |")
    lines += ["", "| cycles | flagged or refused | of which refused by validation |", "|---|---|---|"]
    for name in ("hold-out (in distribution)", "simulator cycles"):
        r = result["novelty"][name]
        lines.append(f"| {name} | {r['caught_pct']} % | {r['refused_by_validation']} of {r['cycles']} |")
    for kind, v in result["novelty_summary"].items():
        lines.append(f"| {kind} (each of {v['n']}) | min {v['min']} %, mean {v['mean']} % | |")
    errors = result.get("errors_flagged")
    if errors:
        lines += [
            "",
            f"Unshifted hold-out, {errors['flagged']} of {errors['cycles']} cycles flagged out of distribution "
            "(severity `unknown`, confidence 0):",
            "",
            "| component | accuracy, every cycle | accuracy, cycles not flagged | wrong answers | of them flagged |",
            "|---|---|---|---|---|",
        ]
        for c, e in errors["components"].items():
            lines.append(
                f"| {c} | {e['accuracy']} % | {e['accuracy_unflagged']} % | {e['wrong']} | {e['wrong_flagged']} |"
            )
    return "\n".join(lines) + "\n"


def main(
    profile: str = typer.Option("uci-1hz", help="profile to evaluate"),
    version: str = typer.Option("latest", help="profile version"),
    source: str = typer.Option("uci", help="evaluation cycles: uci (the benchmark hold-out) or simulator"),
) -> None:
    from configs.settings import get_settings
    from pipelines.train import load_training_data

    settings = get_settings()
    store = ModelStore(settings.model_store_uri).for_profile(profile)
    _, test = load_training_data(source, settings, store.profile(profile))
    result = evaluate_version(
        store, store.resolve_profile_version(version), test, ensemble_weights(settings.ensemble_weights)
    )
    print(json.dumps(result["novelty_summary"], indent=2))
    print(format_evaluation(result))


if __name__ == "__main__":
    typer.run(main)
