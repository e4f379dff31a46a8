"""Sections of whole blocks, the extractive answer composed of them, and the citation check."""

from __future__ import annotations

from knowledge.answer import NO_ANSWER, answer_pieces, citation_problem, cited, compose
from knowledge.sections import document_sections, is_meta, slug, split_blocks

DOC = """This document covers the failure mode of a sticking valve. It lists the checks.
A sticking spool answers late: PS2 rises after the switching command.

## Symptoms

The pressure at PS2 rises late. It is described below in the next section.
The lag grows with contamination:

| Lag | Grade |
|---|---|
| 20 ms | warning |
| 50 ms | critical |

## Procedure

Required: a multimeter.

1. Stop the pump and lock out the motor.
2. Measure the coil voltage
   at the connector while switching.

3. Clean the spool.

If the lag stays, replace the valve.

## Safety notes

- Depressurise before opening any line.
- Never loosen a fitting under pressure.

## Procedure

1. A second procedure under the same heading.
"""


def _sections():
    return document_sections("valve-lag", "Valve lag", DOC, ("valve",), ("failure-mode",))


def test_blocks_keep_lists_and_tables_whole():
    blocks = split_blocks(_sections()[2].text)
    assert [b.kind for b in blocks] == ["paragraph", "list", "paragraph"]
    steps = blocks[1].text.splitlines()
    assert steps[0].startswith("1. Stop") and steps[-1] == "3. Clean the spool."  # a blank line inside stays one list
    assert "   at the connector while switching." in blocks[1].text  # continuation line kept with its item
    table = next(b for b in _sections()[1].blocks if b.kind == "table")
    assert table.text.splitlines() == ["| Lag | Grade |", "|---|---|", "| 20 ms | warning |", "| 50 ms | critical |"]


def test_sections_have_kinds_anchors_and_no_meta_sentences():
    sections = _sections()
    assert [(s.heading, s.kind, s.anchor) for s in sections] == [
        ("Valve lag", "overview", ""),
        ("Symptoms", "explanation", "symptoms"),
        ("Procedure", "procedure", "procedure"),
        ("Safety notes", "safety", "safety-notes"),
        ("Procedure", "procedure", "procedure-1"),  # a repeated heading gets its own anchor, as on GitHub
    ]
    assert sections[0].text == "A sticking spool answers late: PS2 rises after the switching command."
    assert "described below" not in sections[1].text and "The lag grows" in sections[1].text
    assert sections[2].section_id == "valve-lag#procedure" and sections[2].components == ("valve",)


def test_meta_sentences_are_recognised():
    for meta in ("This document covers cooler cleaning.", "It lists the symptoms.", "This guide explains seals."):
        assert is_meta(meta), meta
    for fact in ("It must read 0 bar.", "This valve is a 4/3 valve.", "The documents in the cabinet are dry."):
        assert not is_meta(fact), fact
    assert slug("Procedure: checking and recharging precharge") == "procedure-checking-and-recharging-precharge"
    assert slug("Procedure (tank sampling with vacuum pump)") == "procedure-tank-sampling-with-vacuum-pump"


def _passage(section, role):
    return {
        "document_id": section.document_id,
        "title": section.title,
        "heading_path": section.heading_path,
        "heading": section.heading,
        "anchor": section.anchor,
        "section_id": section.section_id,
        "role": role,
        "text": section.text,
    }


def test_the_extractive_answer_is_the_passages_whole_under_their_headings_and_cited():
    sections = _sections()
    grounding = {"passages": [_passage(sections[3], "safety"), _passage(sections[2], "procedure")], "lead": None}
    text = compose(grounding)
    assert text.startswith("**Safety first — Valve lag** [1]\n\n- Depressurise before opening any line.")
    assert "**Procedure — Valve lag** [2]\n\nRequired: a multimeter.\n\n1. Stop the pump" in text
    assert sections[2].text in text and sections[3].text in text  # verbatim, nothing cut
    assert cited(text) == [1, 2]
    assert "".join(("\n\n" if i else "") + p for i, p in enumerate(answer_pieces(grounding))) == text


def test_a_lead_comes_first_and_no_passage_means_no_answer():
    assert compose({"passages": [], "lead": None}) == NO_ANSWER
    assert compose({"passages": [], "lead": "The latest diagnosis flags no component."}).endswith(NO_ANSWER)
    one = {"passages": [_passage(_sections()[1], "explanation")], "lead": "This explains the valve."}
    assert compose(one).startswith("This explains the valve.\n\n**Symptoms — Valve lag** [1]")


def test_citations_must_point_to_the_sources_supplied():
    assert cited("Stop the pump [1]. Clean it [2][3], see [1, 4].") == [1, 2, 3, 4]
    assert citation_problem("Stop the pump [1].", 2) is None
    outside = "the answer cited [3], which is not among the 2 sources supplied"
    assert citation_problem("Stop the pump [3].", 2) == outside
    assert citation_problem("Stop the pump.", 2) == "the answer cited none of the sources supplied"
    assert citation_problem("Stop the pump", 2, final=False) is None  # a stream may cite later
    assert citation_problem("See [0] and [1]", 2, final=False) is not None
