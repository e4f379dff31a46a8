"""Ensemble logic on crafted probabilities."""

import numpy as np
import pytest

from diagnosis.report import SteadyState
from diagnosis.voting import combine, diagnose, weighted_probas
from hydraulics.components import COMPONENTS, TARGETS, target_classes


def _probas(**overrides):
    """Every target certain of its nominal level, unless overridden (rows of one cycle)."""
    out = {}
    for t in TARGETS:
        k = len(target_classes(t))
        p = np.zeros((1, k))
        p[0, 0] = 1.0
        out[t] = p
    for t, row in overrides.items():
        out[t] = np.array([row], dtype=float)
    return out


def test_all_nominal_is_healthy():
    d = diagnose(_probas())[0]
    assert d.is_anomaly is False
    assert d.anomaly_score == 0.0
    assert d.severity == "normal" and d.affected_components == [] and d.anomaly_type == "none"
    assert d.confidence == 1.0
    assert d.components["accumulator"].level == 130


def test_single_component_fault_names_type_and_severity():
    d = diagnose(_probas(valve=[0.1, 0.1, 0.7, 0.1]))[0]
    assert d.is_anomaly is True
    assert d.anomaly_score == pytest.approx(0.9)
    assert d.affected_components == ["valve"]
    assert d.anomaly_type == "valve_lag"
    assert d.components["valve"].level == 80
    assert d.severity == "critical"  # 80 % = severe lag
    assert d.confidence == pytest.approx(0.7)


def test_multiple_faults_and_worst_severity():
    d = diagnose(_probas(cooler=[0.2, 0.8, 0.0], pump=[0.0, 0.1, 0.9]))[0]
    assert d.anomaly_type == "multiple"
    assert set(d.affected_components) == {"cooler", "pump"}
    assert d.severity == "critical"  # pump severe leakage beats cooler warning
    assert d.anomaly_score == pytest.approx(1 - 0.2 * 0.0)


def test_anomaly_score_is_joint_probability_and_names_the_likeliest_component():
    # Each component is more likely nominal than not, but jointly a fault is likely.
    d = diagnose(_probas(cooler=[0.7, 0.3, 0.0], valve=[0.6, 0.4, 0, 0], pump=[0.8, 0.2, 0]))[0]
    assert d.anomaly_score == pytest.approx(1 - 0.7 * 0.6 * 0.8)
    assert d.is_anomaly is True
    assert d.affected_components == ["valve"]
    assert d.severity == "warning"
    assert (
        diagnose(_probas(cooler=[0.7, 0.3, 0.0], valve=[0.6, 0.4, 0, 0], pump=[0.8, 0.2, 0]), threshold=0.9)[
            0
        ].is_anomaly
        is False
    )


def test_weighted_soft_voting_and_missing_model_lowers_confidence():
    a = _probas(accumulator=[0.2, 0.8, 0.0, 0.0])
    b = _probas(accumulator=[0.8, 0.2, 0.0, 0.0])
    probas, coverage = weighted_probas({"catboost": a, "xgboost": b}, {"catboost": 3.0, "xgboost": 1.0})
    assert probas["accumulator"][0] == pytest.approx([0.35, 0.65, 0.0, 0.0])
    assert coverage == 1.0
    full = combine(
        {"catboost": a, "xgboost": a, "random_forest": a, "adaptive": a},
        {"catboost": 1, "xgboost": 1, "random_forest": 1, "adaptive": 1},
    )[0]
    three = combine(
        {"catboost": a, "xgboost": a, "random_forest": a},
        {"catboost": 1, "xgboost": 1, "random_forest": 1, "adaptive": 1},
    )[0]
    assert full.components == three.components
    assert three.confidence == pytest.approx(full.confidence * 0.75)


def test_no_model_and_unweighted_model_are_errors():
    with pytest.raises(ValueError, match="no model answered"):
        combine({}, {"catboost": 1})
    with pytest.raises(ValueError, match="no ensemble weight"):
        combine({"mystery": _probas()}, {"catboost": 1})


def test_stable_flag_reported():
    d = diagnose(_probas(stable=[0.1, 0.9]))[0]
    assert d.steady_state == SteadyState(stable=False, probability_not_stable=0.9)
    assert set(d.components) == set(COMPONENTS)


def test_answers_name_the_learned_state_they_were_made_with():
    from diagnosis.report import FamilyAnswer
    from diagnosis.voting import diagnose_answers

    answers = {
        "xgboost": FamilyAnswer("xgboost", "v1", _probas()),
        "adaptive": FamilyAnswer("adaptive", "v1", _probas(), state_revision="r00000004"),
    }
    [d] = diagnose_answers(answers, {"xgboost": 1.0, "adaptive": 1.0}, 0.5, n_features=3)
    assert d.model_versions == {"xgboost": "v1", "adaptive": "v1"}
    assert d.state_revisions == {"adaptive": "r00000004"}  # only a family that has learned
    assert {r.ml_model: r.state_revision for r in d.ml_predictions} == {"xgboost": None, "adaptive": "r00000004"}


def test_a_withheld_cycle_is_neither_a_confident_normal_nor_a_confident_fault():
    """A cycle unlike the training data (``withheld``): severity unknown, confidence 0,
    anomaly type out_of_distribution, whatever the levels say; the levels are still given."""
    from diagnosis.voting import diagnose_columns

    healthy, faulty = _probas(), _probas(valve=[0.0, 0.0, 0.0, 1.0])
    both = {t: np.vstack([healthy[t], faulty[t]]) for t in TARGETS}
    plain = diagnose_columns(both)
    withheld = diagnose_columns(both, withheld=np.array([True, True]))
    assert list(plain.severity) == ["normal", "critical"] and list(plain.confidence) == [1.0, 1.0]
    assert list(withheld.severity) == ["unknown", "unknown"] and list(withheld.confidence) == [0.0, 0.0]
    assert list(withheld.anomaly_type) == ["out_of_distribution"] * 2
    assert list(withheld.level_values("valve")) == list(plain.level_values("valve"))
    with pytest.raises(ValueError, match="withheld has 1 rows"):
        diagnose_columns(both, withheld=np.array([True]))
