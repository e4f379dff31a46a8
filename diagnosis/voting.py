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

``diagnose_answers`` is the one function that turns the families' answers into
typed ``Diagnosis`` objects: the ensemble deployment and the batch job call it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from diagnosis.report import ComponentState, Diagnosis, FamilyAnswer, ModelReply, SteadyState, Verdict
from hydraulics.components import COMPONENTS, SEVERITY_ORDER, STABLE_TARGET, TARGETS, target_classes

Probas = Mapping[str, np.ndarray]  # target → (n, n_levels)


def weighted_probas(
    by_family: Mapping[str, Probas], weights: Mapping[str, float]
) -> tuple[dict[str, np.ndarray], float]:
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


def diagnose(probas: Probas, coverage: float = 1.0, threshold: float = 0.5) -> list[Verdict]:
    """One verdict per row of the combined probabilities."""
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
            components[name] = ComponentState(
                level=level.value,
                meaning=level.meaning,
                severity=level.severity,
                probabilities={str(v): round(float(x), 6) for v, x in zip(comp.values, p)},
                nominal_probability=round(float(p[0]), 6),
            )
            if level_idx[name][i] != 0:
                affected.append(name)
        is_anomaly = bool(anomaly_score[i] >= threshold)
        if not is_anomaly:
            affected = []
        elif not affected:
            affected = [min(COMPONENTS, key=lambda c: probas[c][i, 0])]
        severity = "normal"
        for name in affected:
            sev = components[name].severity if components[name].severity != "normal" else "warning"
            if SEVERITY_ORDER[sev] > SEVERITY_ORDER[severity]:
                severity = sev
        if not affected:
            anomaly_type = "none"
        elif len(affected) == 1:
            anomaly_type = COMPONENTS[affected[0]].anomaly_type
        else:
            anomaly_type = "multiple"
        steady_state = None
        if STABLE_TARGET in probas:
            p_unstable = float(probas[STABLE_TARGET][i, target_classes(STABLE_TARGET).index(1)])
            steady_state = SteadyState(stable=p_unstable < 0.5, probability_not_stable=round(p_unstable, 6))
        out.append(
            Verdict(
                is_anomaly=is_anomaly,
                anomaly_score=round(float(anomaly_score[i]), 6),
                severity=severity,
                confidence=round(float(top_p[i] * coverage), 6),
                affected_components=affected,
                anomaly_type=anomaly_type,
                components=components,
                steady_state=steady_state,
            )
        )
    return out


def combine(by_family: Mapping[str, Probas], weights: Mapping[str, float], threshold: float = 0.5) -> list[Verdict]:
    """The full ensemble step: weighted voting, then the per-cycle verdict."""
    probas, coverage = weighted_probas(by_family, weights)
    return diagnose(probas, coverage, threshold)


def family_scores(probas: Probas) -> tuple[np.ndarray, np.ndarray]:
    """One family's own ``prediction_score`` (1 − P(every component nominal)) and
    ``confidence`` (its weakest component's top probability), per row."""
    nominal = np.ones(len(next(iter(probas.values()))))
    confidence = np.ones_like(nominal)
    for name in COMPONENTS:
        nominal *= probas[name][:, 0]
        confidence = np.minimum(confidence, probas[name].max(axis=1))
    return 1.0 - nominal, confidence


def diagnose_answers(
    answers: Mapping[str, FamilyAnswer],
    weights: Mapping[str, float],
    threshold: float,
    n_features: int,
    failed: Mapping[str, str] | None = None,
    feature_extraction_ms: float | None = None,
) -> list[Diagnosis]:
    """One ``Diagnosis`` per row of the answering families' probabilities.

    ``failed`` names the families that did not answer and why; they count against
    ``ensemble_coverage`` and, through it, the confidence.
    """
    verdicts = combine({name: a.probas for name, a in answers.items()}, weights, threshold)
    answered_weight = sum(weights[name] for name in answers)
    coverage = round(answered_weight / sum(weights.values()), 4)
    scores = {name: family_scores(a.probas) for name, a in answers.items()}
    versions = {name: a.version for name, a in answers.items()}
    revisions = {name: a.state_revision for name, a in answers.items() if a.state_revision}
    failed = dict(failed or {})
    out = []
    for row, verdict in enumerate(verdicts):
        replies = [
            ModelReply(
                ml_model=name,
                version=a.version,
                state_revision=a.state_revision,
                prediction_score=round(float(scores[name][0][row]), 6),
                confidence=round(float(scores[name][1][row]), 6),
                processing_time_ms=round(a.processing_time_ms, 3),
                round_trip_ms=None if a.round_trip_ms is None else round(a.round_trip_ms, 3),
                features_used=n_features,
            )
            for name, a in answers.items()
        ]
        ensemble_score = sum(weights[r.ml_model] * r.prediction_score for r in replies) / answered_weight
        out.append(
            Diagnosis(
                prediction=verdict,
                ml_predictions=replies,
                models_failed=failed,
                ensemble_score=round(ensemble_score, 6),
                ensemble_coverage=coverage,
                features_extracted=n_features,
                model_versions=versions,
                state_revisions=revisions,
                feature_extraction_ms=None if feature_extraction_ms is None else round(feature_extraction_ms, 3),
            )
        )
    return out
