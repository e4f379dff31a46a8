"""Combining the model families into one diagnosis.

Used by the online ensemble deployment and by batch prediction alike. Per
component: weighted soft voting over the families that answered, giving the
level, its probability distribution and severity. Overall:

* ``anomaly_score`` = 1 − P(every component nominal), treating components as
  independent (they are varied independently on the rig);
* ``is_anomaly`` when that score reaches the threshold (the alarm sensitivity);
* ``affected_components`` (only when an anomaly is flagged): components whose
  most likely level is not nominal; when no single component's argmax is, the
  component least likely to be nominal is named, so an alarm always says where;
* ``severity``: the worst severity among affected components;
* ``confidence``: the weakest component's top probability, scaled by the share
  of ensemble weight that answered, so a missing model lowers it;
* ``anomaly_type``: the affected component's failure mode, or ``multiple``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from hydraulics.components import COMPONENTS, SEVERITY_ORDER, STABLE_TARGET, TARGETS, target_classes

Probas = Mapping[str, np.ndarray]  # target → (n, n_levels)


def weighted_probas(by_family: Mapping[str, Probas], weights: Mapping[str, float]) -> tuple[dict[str, np.ndarray], float]:
    """Weighted mean of the answering families' probabilities; also the answered weight share."""
    if not by_family:
        raise ValueError("no model answered")
    unknown = [f for f in by_family if f not in weights]
    if unknown:
        raise ValueError(f"no ensemble weight for model(s) {unknown}; weights are set for {sorted(weights)}")
    total = sum(weights.values())
    answered = sum(weights[f] for f in by_family)
    if answered <= 0:
        raise ValueError("every answering model has ensemble weight 0")
    combined = {}
    for target in TARGETS:
        parts = [weights[f] * p[target] for f, p in by_family.items() if target in p]
        if parts:
            combined[target] = np.sum(parts, axis=0) / sum(weights[f] for f, p in by_family.items() if target in p)
    return combined, answered / total


def diagnose(probas: Probas, coverage: float = 1.0, threshold: float = 0.5) -> list[dict]:
    """One diagnosis dict per row of the combined probabilities."""
    n = next(iter(probas.values())).shape[0]
    nominal_p = np.ones(n)
    top_p = np.ones(n)
    level_idx = {}
    for name in COMPONENTS:
        p = probas[name]
        nominal_p *= p[:, 0]
        level_idx[name] = p.argmax(axis=1)
        top_p = np.minimum(top_p, p.max(axis=1))
    anomaly_score = 1.0 - nominal_p
    out = []
    for i in range(n):
        components = {}
        affected = []
        for name, comp in COMPONENTS.items():
            p = probas[name][i]
            level = comp.levels[level_idx[name][i]]
            components[name] = {
                "level": level.value,
                "meaning": level.meaning,
                "severity": level.severity,
                "probabilities": {str(v): round(float(x), 6) for v, x in zip(comp.values, p)},
                "nominal_probability": round(float(p[0]), 6),
            }
            if level_idx[name][i] != 0:
                affected.append(name)
        is_anomaly = bool(anomaly_score[i] >= threshold)
        if not is_anomaly:
            affected = []
        elif not affected:
            affected = [min(COMPONENTS, key=lambda c: probas[c][i, 0])]
        severity = "normal"
        for name in affected:
            sev = components[name]["severity"] if components[name]["severity"] != "normal" else "warning"
            if SEVERITY_ORDER[sev] > SEVERITY_ORDER[severity]:
                severity = sev
        if not affected:
            anomaly_type = "none"
        elif len(affected) == 1:
            anomaly_type = COMPONENTS[affected[0]].anomaly_type
        else:
            anomaly_type = "multiple"
        diag = {
            "is_anomaly": is_anomaly,
            "anomaly_score": round(float(anomaly_score[i]), 6),
            "severity": severity,
            "confidence": round(float(top_p[i] * coverage), 6),
            "affected_components": affected,
            "anomaly_type": anomaly_type,
            "components": components,
        }
        if STABLE_TARGET in probas:
            p_unstable = float(probas[STABLE_TARGET][i, target_classes(STABLE_TARGET).index(1)])
            diag["steady_state"] = {"stable": p_unstable < 0.5, "probability_not_stable": round(p_unstable, 6)}
        out.append(diag)
    return out


def combine(by_family: Mapping[str, Probas], weights: Mapping[str, float], threshold: float = 0.5) -> list[dict]:
    """The full ensemble step: weighted voting, then the per-cycle diagnosis."""
    probas, coverage = weighted_probas(by_family, weights)
    return diagnose(probas, coverage, threshold)
