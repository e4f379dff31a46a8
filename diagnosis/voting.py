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
* ``anomaly_type``: the affected component's failure mode, or ``multiple``;
* a cycle the models cannot vouch for (``withheld``: unlike the profile's training
  data, ``diagnosis.novelty``) gets severity ``unknown``, confidence 0 and anomaly
  type ``out_of_distribution``, whatever the levels say (``diagnosis.report.Verdict``).

``diagnose_answers`` is the one function that turns the families' answers into
typed ``Diagnosis`` objects: the ensemble deployment and the batch job call it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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


def round6(values: np.ndarray) -> np.ndarray:
    """``round(float(v), 6)`` of every value, vectorised: the rounding every verdict uses.

    ``np.round`` rounds ``v * 1e6`` after that product has itself been rounded, so it
    can differ from Python's correctly rounded ``round`` when ``v * 1e6`` is within a
    rounding error of a half; those few values are rounded by Python, so a column
    holds exactly what the per-row objects hold.
    """
    values = np.asarray(values, dtype=np.float64)
    scaled = values * 1e6
    out = np.rint(scaled) / 1e6
    near_half = np.abs(np.abs(scaled - np.trunc(scaled)) - 0.5) < 1e-6
    if near_half.any():
        out[near_half] = [round(float(v), 6) for v in values[near_half]]
    return out


WITHHELD_SEVERITY = "unknown"
WITHHELD_TYPE = "out_of_distribution"

_COMPONENT_LIST = tuple(COMPONENTS.values())
_SEVERITY_NAMES = np.array(sorted(SEVERITY_ORDER, key=SEVERITY_ORDER.get), dtype=object)


@dataclass
class VerdictColumns:
    """The verdicts of a block of cycles, one array per field (row ``i`` is cycle ``i``).

    ``diagnose_columns`` makes them; ``diagnose`` turns them into one ``Verdict`` per row,
    and the batch job writes them as columns without building any per-row object.
    Floats are rounded as in a ``Verdict``.
    """

    components: tuple[str, ...]  # the components diagnosed, in COMPONENTS order (the columns of ``affected``)
    level_index: dict[str, np.ndarray]  # component -> (n,) index into its levels
    probabilities: dict[str, np.ndarray]  # component -> (n, n_levels), rounded
    is_anomaly: np.ndarray  # (n,) bool
    anomaly_score: np.ndarray  # (n,)
    severity: np.ndarray  # (n,) str (object)
    confidence: np.ndarray  # (n,)
    affected: np.ndarray  # (n, len(components)) bool
    anomaly_type: np.ndarray  # (n,) str (object)
    probability_not_stable: np.ndarray | None  # (n,), None when no family predicts it
    stable: np.ndarray | None  # (n,) bool, decided on the unrounded probability

    def __len__(self) -> int:
        return len(self.is_anomaly)

    def level_values(self, name: str) -> np.ndarray:
        return np.array(COMPONENTS[name].values)[self.level_index[name]]

    def level_severities(self, name: str) -> np.ndarray:
        return np.array([lv.severity for lv in COMPONENTS[name].levels], dtype=object)[self.level_index[name]]

    def affected_components(self) -> list[list[str]]:
        names = list(self.components)
        return [[names[j] for j in np.flatnonzero(row)] for row in self.affected]


def _diagnosed(probas: Probas, components: Sequence[str] | None) -> tuple:
    """The components to judge: those predicted (and asked for), in COMPONENTS order."""
    wanted = COMPONENTS if components is None else set(components)
    chosen = tuple(c for c in _COMPONENT_LIST if c.name in probas and c.name in wanted)
    if not chosen:
        raise ValueError(f"nothing to diagnose: asked for {sorted(wanted)}, the models predict {sorted(probas)}")
    return chosen


def diagnose_columns(
    probas: Probas,
    coverage: float = 1.0,
    threshold: float = 0.5,
    components: Sequence[str] | None = None,
    withheld: np.ndarray | None = None,
) -> VerdictColumns:
    """The verdict of every row of the combined probabilities, as columns, over ``components``
    (default: every component the probabilities cover). ``withheld`` (bool per row): the
    cycles the models cannot vouch for (see the module docstring)."""
    diagnosed = _diagnosed(probas, components)
    n = next(iter(probas.values())).shape[0]
    stacked_nominal = np.stack([probas[c.name][:, 0] for c in diagnosed], axis=1)  # (n, n_components)
    nominal_p = np.ones(n)
    top_p = np.ones(n)
    level_index = {}
    for comp in diagnosed:
        p = probas[comp.name]
        nominal_p *= p[:, 0]
        level_index[comp.name] = p.argmax(axis=1)
        top_p = np.minimum(top_p, p.max(axis=1))
    anomaly_score = 1.0 - nominal_p
    is_anomaly = anomaly_score >= threshold

    affected = np.stack([level_index[c.name] != 0 for c in diagnosed], axis=1)
    affected &= is_anomaly[:, None]
    # An alarm always says where: when no component's most likely level is a fault,
    # the component least likely to be nominal (the first of equals).
    unnamed = is_anomaly & ~affected.any(axis=1)
    affected[unnamed, stacked_nominal[unnamed].argmin(axis=1)] = True

    # Worst severity among the affected; an affected component at a nominal level counts as a warning.
    rank = np.full(n, SEVERITY_ORDER["normal"])
    for j, comp in enumerate(diagnosed):
        level_rank = np.array([max(SEVERITY_ORDER[lv.severity], SEVERITY_ORDER["warning"]) for lv in comp.levels])[
            level_index[comp.name]
        ]
        rank = np.where(affected[:, j], np.maximum(rank, level_rank), rank)

    n_affected = affected.sum(axis=1)
    single_type = np.array([c.anomaly_type for c in diagnosed], dtype=object)[affected.argmax(axis=1)]
    anomaly_type = np.where(n_affected == 0, "none", np.where(n_affected == 1, single_type, "multiple")).astype(object)

    severity = _SEVERITY_NAMES[rank]
    confidence = round6(top_p * coverage)
    if withheld is not None and len(withheld) != n:
        raise ValueError(f"withheld has {len(withheld)} rows, the probabilities {n}")
    if withheld is not None and np.any(withheld):
        withheld = np.asarray(withheld, dtype=bool)
        severity = np.where(withheld, WITHHELD_SEVERITY, severity).astype(object)
        confidence = np.where(withheld, 0.0, confidence)
        anomaly_type = np.where(withheld, WITHHELD_TYPE, anomaly_type).astype(object)

    p_unstable = None
    if STABLE_TARGET in probas:
        p_unstable = probas[STABLE_TARGET][:, target_classes(STABLE_TARGET).index(1)]
    return VerdictColumns(
        components=tuple(c.name for c in diagnosed),
        level_index=level_index,
        probabilities={c.name: round6(probas[c.name]) for c in diagnosed},
        is_anomaly=is_anomaly,
        anomaly_score=round6(anomaly_score),
        severity=severity,
        confidence=confidence,
        affected=affected,
        anomaly_type=anomaly_type,
        probability_not_stable=None if p_unstable is None else round6(p_unstable),
        stable=None if p_unstable is None else p_unstable < 0.5,
    )


def verdict_rows(columns: VerdictColumns) -> list[Verdict]:
    """One ``Verdict`` per row of ``columns``."""
    per_component = {}
    for comp in (COMPONENTS[name] for name in columns.components):
        keys = [str(v) for v in comp.values]
        levels = [comp.levels[k] for k in columns.level_index[comp.name].tolist()]
        per_component[comp.name] = (keys, levels, columns.probabilities[comp.name].tolist())
    if columns.stable is None:
        steady = [None] * len(columns)
    else:
        steady = [
            SteadyState(stable=stable, probability_not_stable=p)
            for stable, p in zip(columns.stable.tolist(), columns.probability_not_stable.tolist())
        ]
    out = []
    for i, (is_anomaly, score, severity, confidence, affected, anomaly_type) in enumerate(
        zip(
            columns.is_anomaly.tolist(),
            columns.anomaly_score.tolist(),
            columns.severity.tolist(),
            columns.confidence.tolist(),
            columns.affected_components(),
            columns.anomaly_type.tolist(),
        )
    ):
        components = {}
        for name, (keys, levels, probabilities) in per_component.items():
            level, p = levels[i], probabilities[i]
            components[name] = ComponentState(
                level=level.value,
                meaning=level.meaning,
                severity=level.severity,
                probabilities=dict(zip(keys, p)),
                nominal_probability=p[0],
            )
        out.append(
            Verdict(
                is_anomaly=is_anomaly,
                anomaly_score=score,
                severity=severity,
                confidence=confidence,
                affected_components=affected,
                anomaly_type=anomaly_type,
                components=components,
                steady_state=steady[i],
            )
        )
    return out


def diagnose(
    probas: Probas, coverage: float = 1.0, threshold: float = 0.5, components: Sequence[str] | None = None
) -> list[Verdict]:
    """One verdict per row of the combined probabilities."""
    return verdict_rows(diagnose_columns(probas, coverage, threshold, components))


def combine_columns(
    by_family: Mapping[str, Probas],
    weights: Mapping[str, float],
    threshold: float = 0.5,
    components: Sequence[str] | None = None,
    withheld: np.ndarray | None = None,
) -> VerdictColumns:
    """The full ensemble step, as columns: weighted voting, then every cycle's verdict."""
    probas, coverage = weighted_probas(by_family, weights)
    return diagnose_columns(probas, coverage, threshold, components, withheld)


def combine(
    by_family: Mapping[str, Probas],
    weights: Mapping[str, float],
    threshold: float = 0.5,
    components: Sequence[str] | None = None,
    withheld: np.ndarray | None = None,
) -> list[Verdict]:
    """The full ensemble step: weighted voting, then the per-cycle verdict."""
    return verdict_rows(combine_columns(by_family, weights, threshold, components, withheld))


def family_scores(probas: Probas, components: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One family's own ``prediction_score`` (1 − P(every diagnosed component nominal)) and
    ``confidence`` (its weakest component's top probability), per row."""
    nominal = np.ones(len(next(iter(probas.values()))))
    confidence = np.ones_like(nominal)
    for name in (c.name for c in _diagnosed(probas, components)):
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
    components: Sequence[str] | None = None,
    withheld: np.ndarray | None = None,
) -> list[Diagnosis]:
    """One ``Diagnosis`` per row of the answering families' probabilities, over ``components``
    (default: all the models predict); ``withheld`` rows are the cycles the models cannot
    vouch for.

    ``failed`` names the families that did not answer and why; they count against
    ``ensemble_coverage`` and, through it, the confidence.
    """
    verdicts = combine({name: a.probas for name, a in answers.items()}, weights, threshold, components, withheld)
    answered_weight = sum(weights[name] for name in answers)
    coverage = round(answered_weight / sum(weights.values()), 4)
    scores = {
        name: tuple(round6(s).tolist() for s in family_scores(a.probas, components)) for name, a in answers.items()
    }
    ensemble_scores = 0
    for name in answers:
        ensemble_scores = ensemble_scores + weights[name] * np.asarray(scores[name][0])
    ensemble_scores = round6(ensemble_scores / answered_weight).tolist()
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
                prediction_score=scores[name][0][row],
                confidence=scores[name][1][row],
                processing_time_ms=round(a.processing_time_ms, 3),
                round_trip_ms=None if a.round_trip_ms is None else round(a.round_trip_ms, 3),
                features_used=n_features,
            )
            for name, a in answers.items()
        ]
        out.append(
            Diagnosis(
                prediction=verdict,
                ml_predictions=replies,
                models_failed=failed,
                ensemble_score=ensemble_scores[row],
                ensemble_coverage=coverage,
                features_extracted=n_features,
                model_versions=versions,
                state_revisions=revisions,
                feature_extraction_ms=None if feature_extraction_ms is None else round(feature_extraction_ms, 3),
            )
        )
    return out
