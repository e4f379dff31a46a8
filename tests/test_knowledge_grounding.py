"""Which sections answer a question, on the real knowledge base (indexed once per session)."""

from __future__ import annotations

import re

import pytest
import yaml

from configs.settings import PROJECT_ROOT
from knowledge.answer import compose
from knowledge.chunking import SENTENCE_RE
from knowledge.embedding import get_embedder
from knowledge.grounding import question_intent, retrieve_and_ground
from knowledge.sections import is_meta

ANSWER_SET = PROJECT_ROOT / "tests" / "data" / "answer_eval.yaml"


@pytest.fixture(scope="module")
def ask(knowledge_searcher):
    embedder = get_embedder()

    def ask(question: str, diagnosis: dict | None = None):
        vector = embedder.embed([question])[0]
        _, grounding = retrieve_and_ground(knowledge_searcher, vector, question, vector, diagnosis=diagnosis)
        grounding = grounding.to_dict()
        return grounding, compose(grounding)

    return ask


def _section(searcher, document_id: str, heading: str):
    return next(s for s, _ in searcher.sections(document_id) if s.heading == heading)


@pytest.mark.parametrize(
    "question",
    [
        "How do I measure the nitrogen precharge of a bladder accumulator safely?",
        "How do I check accumulator precharge?",
    ],
)
def test_a_procedure_question_gets_the_safety_notes_then_every_step_in_order(ask, knowledge_searcher, question):
    grounding, text = ask(question)
    assert grounding["intent"] == "procedure"
    assert [(p["document_id"], p["heading"], p["role"]) for p in grounding["passages"]] == [
        ("accumulator-precharge-loss", "Safety notes", "safety"),
        ("accumulator-precharge-loss", "Procedure: checking and recharging precharge", "procedure"),
    ]
    heading = "Procedure: checking and recharging precharge"
    procedure = _section(knowledge_searcher, "accumulator-precharge-loss", heading)
    assert procedure.text in text  # whole, verbatim
    steps = [int(m) for m in re.findall(r"(?m)^(\d+)\. ", text)]
    assert steps == list(range(1, 12))  # all eleven steps, in order, nothing else numbered
    assert text.index("Never oxygen and never compressed air") < text.index("1. Stop the pump")
    assert "It lists the symptoms" not in text and "This document covers" not in text


def test_the_red_indicator_question_gets_the_filter_change_procedure(ask):
    grounding, text = ask("Filter bypass indicator is red, what now?")
    assert [(p["document_id"], p["role"]) for p in grounding["passages"]] == [
        ("filter-element-change", "safety"),
        ("filter-element-change", "procedure"),
    ]
    assert text.startswith("**Safety first")


def test_a_question_answered_by_a_table_keeps_the_table_whole(ask, knowledge_searcher):
    grounding, text = ask("Lab report says 18/16/13. How many particles per mL is that?")
    assert grounding["intent"] == "explanation"
    section = _section(knowledge_searcher, "hydraulic-oil-viscosity-cleanliness", "ISO 4406 cleanliness code")
    table = next(b.text for b in section.blocks if b.kind == "table")
    assert table in text and len(table.splitlines()) > 5


def test_an_explanation_never_carries_more_than_two_sections(ask):
    grounding, _ = ask("Why does a cooler lose efficiency over time?")
    assert grounding["intent"] == "explanation" and 1 <= len(grounding["passages"]) <= 2
    assert all(p["role"] == "explanation" for p in grounding["passages"])


def test_no_answer_to_any_question_of_the_answer_set_has_a_meta_sentence(ask):
    items = yaml.safe_load(ANSWER_SET.read_text(encoding="utf-8"))
    for item in items:
        grounding, text = ask(item["question"])
        meta = [s for line in text.splitlines() for s in SENTENCE_RE.split(line) if is_meta(s)]
        assert not meta, (item["id"], meta)
        assert len({p["section_id"] for p in grounding["passages"]}) <= 2, item["id"]


ACCUMULATOR_FLAGGED = {
    "is_anomaly": True,
    "severity": "critical",
    "confidence": 0.83,
    "affected_components": ["accumulator"],
    "anomaly_type": "accumulator_precharge_loss",
    "components": {
        "accumulator": {
            "level": 100,
            "meaning": "severely reduced pressure",
            "severity": "critical",
            "probabilities": {"100": 0.91, "130": 0.09},
            "nominal_probability": 0.09,
        },
        "cooler": {"level": 100, "meaning": "full efficiency", "severity": "normal", "probabilities": {}},
    },
    "diagnosed_at": "2026-12-07T14:03:11+00:00",
}


def test_a_system_question_starts_from_the_flagged_components_failure_mode_document(ask):
    grounding, text = ask("Why is my system flagged and what should I check?", ACCUMULATOR_FLAGGED)
    assert grounding["passages"][0]["document_id"] == "accumulator-precharge-loss"
    assert grounding["focus"]["component"] == "accumulator" and grounding["focus"]["level"] == 100
    lead = text.split("\n\n")[0]
    assert lead == grounding["lead"]
    for said in ("accumulator", "level 100", "critical", "confidence 0.83", "2026-12-07 14:03 UTC"):
        assert said in lead, (said, lead)


def test_a_diagnosis_the_models_cannot_vouch_for_is_said_so(ask):
    unknown = {**ACCUMULATOR_FLAGGED, "severity": "unknown", "out_of_distribution": {"flagged": True, "score": 3.1}}
    grounding, text = ask("Why is my system flagged?", unknown)
    assert grounding["focus"]["component"] is None
    assert text.startswith("The latest diagnosis of 2026-12-07 14:03 UTC could not be vouched for")


@pytest.mark.parametrize(
    ("question", "intent"),
    [
        ("How do I check accumulator precharge?", "procedure"),
        ("Filter bypass indicator is red, what now?", "procedure"),
        ("Pump is whining and there's foam in the tank. What should I check?", "procedure"),
        ("PS1 won't come up to 190 bar any more. Where do I start?", "procedure"),
        ("What does leakage class 2 on the main pump mean?", "explanation"),
        ("Accumulator reported at 100 bar instead of 130. Is that critical?", "explanation"),
        ("Why does oil foam?", "explanation"),
    ],
)
def test_question_intent(question, intent):
    assert question_intent(question) == intent
