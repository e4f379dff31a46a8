"""The answer-quality evaluation set (tests/data/answer_eval.yaml) agrees with the knowledge base.

Every entry names a document and a section of knowledge/docs; each fact must be a verbatim
phrase of that section (procedures: of the section or of the document's "Safety notes"), so
the benchmark that checks answers for these facts measures the assistant, not typos in the set.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from bench.eval_answers import alternatives, normalise  # the benchmark's own matching
from knowledge.chunking import PATH_SEP, split_sections
from knowledge.corpus import load_documents

ROOT = Path(__file__).resolve().parent.parent
EVAL_PATH = ROOT / "tests" / "data" / "answer_eval.yaml"
DOCS_DIR = ROOT / "knowledge" / "docs"

KINDS = {"procedure", "explanation", "table"}
SAFETY_HEADING = "Safety notes"
ID_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
TABLE_SEPARATOR_RE = re.compile(r"^\|[\s:|-]+\|?$")

MIN_ENTRIES = 45
MIN_DOCUMENTS = 25
MIN_TABLES = 6
MIN_FACTS, MAX_FACTS = 2, 4
MIN_WORDS, MAX_WORDS = 2, 8

REPORTED_QUESTIONS = (
    "How do I measure the nitrogen precharge of a bladder accumulator safely?",
    "How do I check accumulator precharge?",
    "Filter bypass indicator is red, what now?",
)


def load_entries() -> list:
    with EVAL_PATH.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    assert isinstance(data, list), f"{EVAL_PATH} must be a YAML list of entries, got {type(data).__name__}"
    return data


ENTRIES = load_entries()


def entry_id(entry) -> str:
    return str(entry.get("id")) if isinstance(entry, dict) else repr(entry)[:40]


@lru_cache(maxsize=1)
def documents() -> dict[str, dict[str, list[str]]]:
    """document id -> section heading -> bodies (normally one), without the untitled first paragraph."""
    out: dict[str, dict[str, list[str]]] = {}
    for doc in load_documents([DOCS_DIR]):
        sections: dict[str, list[str]] = {}
        for path, body in split_sections(doc.text, doc.title):
            parts = path.split(PATH_SEP)
            if len(parts) < 2:  # the text before the first heading describes the document itself
                continue
            sections.setdefault(parts[-1].strip(), []).append(body)
        out[doc.id] = sections
    return out


def section_body(document: str, heading: str) -> str | None:
    bodies = documents()[document].get(heading)
    if not bodies:
        return None
    assert len(bodies) == 1, f"heading {heading!r} occurs {len(bodies)} times in {document}; it must be unique"
    return bodies[0]


def table_rows(body: str) -> list[str]:
    rows = [line.strip() for line in body.splitlines() if line.lstrip().startswith("|")]
    return [normalise(row) for row in rows if not TABLE_SEPARATOR_RE.match(row)]


# ---------------------------------------------------------------- per entry


@pytest.mark.parametrize("entry", ENTRIES, ids=entry_id)
def test_entry_shape(entry):
    assert isinstance(entry, dict), f"entry {entry!r} is not a mapping"
    eid = entry_id(entry)
    required = {"id": str, "question": str, "document": str, "section": str, "kind": str, "facts": list}
    for key, typ in required.items():
        assert key in entry, f"{eid}: missing key {key!r}"
        assert isinstance(entry[key], typ), f"{eid}: {key!r} must be {typ.__name__}, got {type(entry[key]).__name__}"
        if typ is str:
            assert entry[key].strip(), f"{eid}: {key!r} is empty"
    allowed = set(required) | {"safety_first"}
    assert not set(entry) - allowed, f"{eid}: unknown keys {sorted(set(entry) - allowed)}"
    assert ID_RE.match(entry["id"]), f"{eid}: id must be kebab-case"
    assert entry["kind"] in KINDS, f"{eid}: kind {entry['kind']!r} not in {sorted(KINDS)}"
    if entry["kind"] == "procedure":
        assert isinstance(entry.get("safety_first"), bool), f"{eid}: procedure entries need safety_first: true/false"
    else:
        assert "safety_first" not in entry, f"{eid}: safety_first is only for kind procedure"

    facts = entry["facts"]
    assert MIN_FACTS <= len(facts) <= MAX_FACTS, f"{eid}: needs {MIN_FACTS}-{MAX_FACTS} facts, has {len(facts)}"
    for fact in facts:
        assert isinstance(fact, str) or (isinstance(fact, list) and fact and all(isinstance(a, str) for a in fact)), (
            f"{eid}: fact {fact!r} must be a string or a non-empty list of strings"
        )
        for alt in alternatives(fact):
            words = len(alt.split())
            assert MIN_WORDS <= words <= MAX_WORDS, (
                f"{eid}: fact {alt!r} has {words} words, expected {MIN_WORDS}-{MAX_WORDS}"
            )
            assert not any(m in alt for m in ("**", "`")), f"{eid}: fact {alt!r} must not contain Markdown markup"


@pytest.mark.parametrize("entry", ENTRIES, ids=entry_id)
def test_entry_matches_document(entry):
    eid = entry_id(entry)
    docs = documents()
    assert entry["document"] in docs, f"{eid}: document {entry['document']!r} not found in {DOCS_DIR}"
    body = section_body(entry["document"], entry["section"])
    assert body is not None, (
        f"{eid}: section {entry['section']!r} not found in {entry['document']}; "
        f"headings are {sorted(docs[entry['document']])}"
    )
    section = normalise(body)
    safety_body = section_body(entry["document"], SAFETY_HEADING)
    safety = normalise(safety_body) if safety_body is not None else ""
    kind = entry["kind"]

    if kind == "procedure":
        assert entry["section"] != SAFETY_HEADING, f"{eid}: a procedure's section is the one with the steps"
        assert entry["safety_first"] == (safety_body is not None), (
            f"{eid}: safety_first must be {safety_body is not None} "
            f"({entry['document']} {'has' if safety_body is not None else 'has no'} a {SAFETY_HEADING!r} section)"
        )

    in_section: set[int] = set()
    in_safety: set[int] = set()
    for i, fact in enumerate(entry["facts"]):
        for alt in alternatives(fact):
            needle = normalise(alt)
            found_section = needle in section
            found_safety = kind == "procedure" and needle in safety
            where = f"section {entry['section']!r}" + (f" or {SAFETY_HEADING!r}" if kind == "procedure" else "")
            assert found_section or found_safety, (
                f"{eid}: fact {alt!r} not found verbatim in {entry['document']} {where}"
            )
            if found_section:
                in_section.add(i)
            if found_safety:
                in_safety.add(i)

    if kind == "procedure" and safety_body is not None:
        assert in_safety, f"{eid}: no fact comes from the {SAFETY_HEADING!r} section of {entry['document']}"
        assert any(i != j for i in in_section for j in in_safety), (
            f"{eid}: besides the safety fact, at least one fact must come from the steps in {entry['section']!r}"
        )

    if kind == "table":
        rows = table_rows(body)
        assert rows, f"{eid}: section {entry['section']!r} of {entry['document']} has no Markdown table"
        for fact in entry["facts"]:
            assert any(normalise(alt) in row for alt in alternatives(fact) for row in rows), (
                f"{eid}: table fact {fact!r} is not in any table row of {entry['section']!r}"
            )


# ---------------------------------------------------------------- whole set


def test_ids_and_questions_unique():
    ids = [entry_id(e) for e in ENTRIES]
    dup_ids = sorted({i for i in ids if ids.count(i) > 1})
    assert not dup_ids, f"duplicate ids: {dup_ids}"
    questions = [normalise(e["question"]) for e in ENTRIES if isinstance(e, dict) and "question" in e]
    dup_q = sorted({q for q in questions if questions.count(q) > 1})
    assert not dup_q, f"duplicate questions: {dup_q}"


def test_set_size_and_coverage():
    assert len(ENTRIES) >= MIN_ENTRIES, f"{len(ENTRIES)} entries, need at least {MIN_ENTRIES}"
    covered = {e.get("document") for e in ENTRIES if isinstance(e, dict)}
    assert len(covered) >= MIN_DOCUMENTS, f"{len(covered)} documents covered, need at least {MIN_DOCUMENTS}"
    kinds = [e.get("kind") for e in ENTRIES if isinstance(e, dict)]
    assert kinds.count("table") >= MIN_TABLES, f"{kinds.count('table')} table entries, need at least {MIN_TABLES}"
    assert kinds.count("procedure") >= 15, f"only {kinds.count('procedure')} procedure entries"
    assert kinds.count("explanation") >= 10, f"only {kinds.count('explanation')} explanation entries"


@pytest.mark.parametrize("question", REPORTED_QUESTIONS)
def test_reported_questions_present(question):
    questions = {e.get("question") for e in ENTRIES if isinstance(e, dict)}
    assert question in questions, f"reported question {question!r} is missing from {EVAL_PATH.name}"
