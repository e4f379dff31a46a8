"""The extractive answerer: verbatim, cited sentences only."""

from __future__ import annotations

import re

import pytest

from knowledge.answer import NO_ANSWER, ExtractiveAnswerer, split_sentences
from knowledge.embedding import get_embedder

PASSAGES = [
    {"document_id": "valve-lag", "title": "Valve lag", "heading_path": "Valve lag > Repair",
     "snippet": "Measure the coil voltage at the connector while switching; it must be within ten percent of "
                "nominal.\nClean or replace the spool, then flush the circuit and improve filtration."},
    {"document_id": "cooler", "title": "Cooler fouling", "heading_path": "Cooler fouling > Repair",
     "snippet": "- Clean the air-side fins with low pressure compressed air from the clean side.\n"
                "- Descale the water side of the heat exchanger with an approved cleaning agent.\n"
                "| grade | meaning |\n|---|---|\n| 3 % | failure |"},
    {"document_id": "valve-copy", "title": "Valve lag (copy)", "heading_path": "Valve lag > Repair",
     "snippet": "Measure the coil voltage at the connector while switching; it must be within ten percent of nominal."},
]


@pytest.fixture(scope="module")
def embed():
    return get_embedder().embed


def test_split_sentences_skips_tables_and_list_markers():
    sentences = split_sentences(PASSAGES[1]["snippet"])
    assert sentences == ["Clean the air-side fins with low pressure compressed air from the clean side.",
                         "Descale the water side of the heat exchanger with an approved cleaning agent."]


def test_answer_sentences_are_verbatim_and_cited(embed):
    answer = ExtractiveAnswerer(max_sentences=3).answer("How do I check the valve solenoid coil voltage?",
                                                        PASSAGES, embed)
    parts = re.findall(r"(.+?) \[(\d+)\](?: |$)", answer.text)
    assert parts, answer.text
    assert "".join(f"{s} [{n}] " for s, n in parts).strip() == answer.text  # nothing uncited in between
    for sentence, number in parts:
        assert sentence in PASSAGES[int(number) - 1]["snippet"], (sentence, number)
    assert "coil voltage" in parts[0][0] and parts[0][1] == "1"
    # the copy in passage 3 is a duplicate and must not be repeated
    assert sum("coil voltage" in s for s, _ in parts) == 1
    assert answer.sources == sorted({int(n) for _, n in parts})


def test_original_order_within_a_source(embed):
    answer = ExtractiveAnswerer(max_sentences=4, min_similarity=-1).answer("cooler cleaning", PASSAGES[1:2], embed)
    assert answer.text.index("Clean the air-side") < answer.text.index("Descale the water side")


def test_irrelevant_question_says_not_covered(embed):
    answer = ExtractiveAnswerer(min_similarity=0.5).answer("Who won the football match yesterday?", PASSAGES, embed)
    assert answer.text == NO_ANSWER and answer.sources == []
    assert ExtractiveAnswerer().answer("anything", [], embed).text == NO_ANSWER
