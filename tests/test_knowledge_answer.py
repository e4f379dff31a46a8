"""The extractive answerer: verbatim, cited sentences only."""

from __future__ import annotations

import re

import pytest

from knowledge.answer import NO_ANSWER, ExtractiveAnswerer, embed_sentences, split_sentences
from knowledge.embedding import get_embedder

PASSAGES = [
    {
        "document_id": "valve-lag",
        "title": "Valve lag",
        "heading_path": "Valve lag > Repair",
        "snippet": "Measure the coil voltage at the connector while switching; it must be within ten percent of "
        "nominal.\nClean or replace the spool, then flush the circuit and improve filtration.",
    },
    {
        "document_id": "cooler",
        "title": "Cooler fouling",
        "heading_path": "Cooler fouling > Repair",
        "snippet": "- Clean the air-side fins with low pressure compressed air from the clean side.\n"
        "- Descale the water side of the heat exchanger with an approved cleaning agent.\n"
        "| grade | meaning |\n|---|---|\n| 3 % | failure |",
    },
    {
        "document_id": "valve-copy",
        "title": "Valve lag (copy)",
        "heading_path": "Valve lag > Repair",
        "snippet": "Measure the coil voltage at the connector while switching; "
        "it must be within ten percent of nominal.",
    },
]


@pytest.fixture(scope="module")
def embed():
    return get_embedder().embed


def test_split_sentences_skips_tables_and_list_markers():
    sentences = split_sentences(PASSAGES[1]["snippet"])
    assert sentences == [
        "Clean the air-side fins with low pressure compressed air from the clean side.",
        "Descale the water side of the heat exchanger with an approved cleaning agent.",
    ]


def test_answer_sentences_are_verbatim_and_cited(embed):
    answer = ExtractiveAnswerer(max_sentences=3).answer(
        "How do I check the valve solenoid coil voltage?", PASSAGES, embed
    )
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


def _with_stored_vectors(passages, embed):
    """Passages as the index returns them: sentences split and embedded ahead of time."""
    sentences, vectors = embed_sentences([p["snippet"] for p in passages], embed)
    out, start = [], 0
    for passage, own in zip(passages, sentences):
        out.append({**passage, "sentences": own, "sentence_vectors": vectors[start : start + len(own)]})
        start += len(own)
    return out


def test_stored_sentence_vectors_give_the_same_answer_without_embedding(embed):
    question = "How do I check the valve solenoid coil voltage?"
    stored = _with_stored_vectors(PASSAGES, embed)
    assert stored[1]["sentences"] == split_sentences(PASSAGES[1]["snippet"]) and stored[1][
        "sentence_vectors"
    ].shape == (2, 384)

    def must_not_embed(texts):
        raise AssertionError(f"embedded at query time: {texts}")

    answerer = ExtractiveAnswerer(max_sentences=3)
    fast = answerer.answer(question, stored, must_not_embed, question_vector=embed([question])[0])
    assert fast.text == answerer.answer(question, PASSAGES, embed).text
    assert sum("coil voltage" in c.text for c in fast.sentences) == 1  # still deduplicated
    for c in fast.sentences:  # verbatim, cited, in source order
        assert c.text in PASSAGES[c.source - 1]["snippet"] and f"{c.text} [{c.source}]" in fast.text
    assert [(c.source, c.position) for c in fast.sentences] == sorted((c.source, c.position) for c in fast.sentences)


def test_passages_without_stored_vectors_need_an_embed_function(embed):
    stored = _with_stored_vectors(PASSAGES, embed)
    question_vector = embed(["cooler cleaning"])[0]
    mixed = [stored[0], PASSAGES[1]]  # one passage lacks vectors: fall back to embedding all
    with pytest.raises(ValueError, match="embed function"):
        ExtractiveAnswerer().answer("cooler cleaning", mixed, question_vector=question_vector)
    assert "[2]" in ExtractiveAnswerer().answer("cooler cleaning", mixed, embed, question_vector=question_vector).text
    broken = [{**stored[0], "sentence_vectors": stored[0]["sentence_vectors"][:1]}]
    with pytest.raises(ValueError, match="sentences but vectors"):
        ExtractiveAnswerer().answer("coil", broken, question_vector=question_vector)
