"""Which sections answer a question: the grounding every backend answers from.

Retrieval finds the documents; this module chooses, from their sections, what an
engineer needs, and hands the same passages to the extractive answer and to an LLM:

* a *procedure* question ("how do I…", "what should I check…", "… what now?")
  gets the best-matching procedure section whole, its steps in their order,
  preceded by the safety notes of the same document;
* any other question ("why…", "what does … mean", "is that critical?") gets the
  blocks of the best-matching section that answer it: the closest block, with the
  paragraph that introduces it or the list or table it introduces, or the whole
  section when it is short; a second section only when it matches about as well;
* a question about a system whose latest diagnosis flags a component starts from
  that component's failure-mode document, and a lead sentence says which diagnosis
  (component, level, confidence, when) the answer explains.

Never more than two sections; blocks are whole (``knowledge.sections``), and the
meta-sentences of a document were removed when the index was built. Choosing is
dot products between the question's vector and the blocks' stored vectors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from knowledge.retrieval import IndexSearcher
from knowledge.sections import ORDERED_ITEM_RE, PROCEDURE_HEADING_RE, Block, Section

# A section's score is its closest block's cosine with the question plus TERM_WEIGHT times its
# TF-IDF cosine (shared words), from the CANDIDATE_DOCUMENTS best-retrieved documents. The
# weights were set on tests/data/answer_eval.yaml (docs/bench_assistant.md has the sweep).
MAX_SECTIONS = 2
CANDIDATE_DOCUMENTS = 3
DOCUMENT_WEIGHT = 0.0  # the document's own retrieval score: it did not help to add it
TERM_WEIGHT = 1.0
HEADING_WEIGHT = 0.2  # for procedures: the question's words in the heading ("first start")
NAMED_PROCEDURE_BONUS = 0.1  # a section headed "... procedure" over a side list of the same document
STEPS_WEIGHT = 0.1  # up to this much for a procedure of ten or more steps
OVERVIEW_PENALTY = 0.3  # the text before the first heading summarises; it rarely answers
SECOND_SECTION_MARGIN = 0.1  # a second explanatory section must match within this of the first
SHORT_SECTION_WORDS = 250  # an explanatory section this short is given whole
PROCEDURE_RE = re.compile(
    r"\bhow (do|should|can|would|to) (i|we|you)?\b|\bhow to\b"
    r"|\bwhat (should|must|do|have|need|would) (i|we)( have| need)?( to)? (check|do|look|test|measure|replace)\b"
    r"|\bwhere (do|should) (i|we) (start|begin|look)\b|\bwhat now\b|\bwhat are the steps\b|\bsteps?\b"
    r"|\bprocedure\b",
    re.IGNORECASE,
)
SEVERITY_RANK = {"critical": 3, "warning": 2, "normal": 1}


@dataclass(frozen=True)
class Passage:
    """One section (or the answering blocks of it), numbered [n] by its place in the list."""

    section: Section
    blocks: tuple[Block, ...]
    role: str  # safety | procedure | explanation
    score: float

    @property
    def text(self) -> str:
        return "\n\n".join(b.text for b in self.blocks)

    def to_dict(self) -> dict:
        s = self.section
        return {
            "document_id": s.document_id,
            "title": s.title,
            "heading_path": s.heading_path,
            "heading": s.heading,
            "anchor": s.anchor,
            "section_id": s.section_id,
            "role": self.role,
            "text": self.text,
            "blocks": [{"kind": b.kind, "text": b.text} for b in self.blocks],
            "score": round(float(self.score), 4),
        }


@dataclass
class Grounding:
    intent: str  # procedure | explanation
    passages: list[Passage] = field(default_factory=list)
    lead: str | None = None  # the diagnosis this answer explains, in one sentence
    focus: dict | None = None  # {component, level, meaning, severity, probability, confidence, diagnosed_at}

    def to_dict(self) -> dict:
        return {
            "intent": self.intent,
            "passages": [p.to_dict() for p in self.passages],
            "lead": self.lead,
            "focus": self.focus,
        }


def retrieve_and_ground(
    searcher: IndexSearcher,
    query_vector: np.ndarray,
    question: str,
    question_vector: np.ndarray,
    k: int = 5,
    prefer_components: Sequence[str] | None = None,
    diagnosis: dict | None = None,
) -> tuple[list[dict], Grounding]:
    """Retrieve with ``query_vector`` (the question, steered by the diagnosis), then ground."""
    hits = [h.to_dict() for h in searcher.search(query_vector, k=k, prefer_components=prefer_components)]
    return hits, ground(searcher, question, question_vector, hits, diagnosis)


def question_intent(question: str) -> str:
    return "procedure" if PROCEDURE_RE.search(question) else "explanation"


def ground(
    searcher: IndexSearcher,
    question: str,
    question_vector: np.ndarray,
    hits: Sequence[dict],
    diagnosis: dict | None = None,
    max_sections: int = MAX_SECTIONS,
) -> Grounding:
    """The passages that answer ``question``, from the retrieved ``hits`` (dicts, best first)."""
    q = np.asarray(question_vector, dtype=np.float32).reshape(-1)
    grounding = Grounding(intent=question_intent(question))
    focus = diagnosis_focus(diagnosis)
    documents = [(h["document_id"], float(h["score"])) for h in hits[:CANDIDATE_DOCUMENTS]]
    if focus is not None:
        grounding.focus = focus
        grounding.lead = diagnosis_lead(focus)
        flagged = failure_mode_document(searcher, focus["component"]) if focus.get("component") else None
        if flagged is not None:
            best = max((score for _, score in documents), default=0.0)
            documents = [(flagged, best)]  # the flagged component's document answers first
    terms = searcher.term_scores(question) if TERM_WEIGHT else {}
    headings = searcher.term_scores(question, "heading") if HEADING_WEIGHT else {}
    scored = [
        (
            section,
            vectors,
            (vectors @ q, terms.get(section.section_id, 0.0), headings.get(section.section_id, 0.0)),
            doc_score,
        )
        for doc_id, doc_score in documents
        for section, vectors in searcher.sections(doc_id)
        if len(vectors)
    ]
    if not scored:
        return grounding
    if grounding.intent == "procedure":
        passages = _procedure(searcher, scored)
        if passages:
            grounding.passages = passages[-max_sections:]  # with room for one, the steps over the notes
            return grounding
    grounding.passages = _explanation(scored, max_sections)
    return grounding


def _score(similarities, doc_score: float) -> float:
    blocks, terms, _ = similarities
    return float(blocks.max()) + TERM_WEIGHT * terms + DOCUMENT_WEIGHT * doc_score


def _procedure(searcher: IndexSearcher, scored) -> list[Passage]:
    procedures = [(s, sims, doc) for s, _, sims, doc in scored if s.kind == "procedure"]
    if not procedures:
        return []
    section, sims, doc_score = max(procedures, key=lambda p: _score(p[1], p[2]) + _procedure_prior(p[0], p[1]))
    steps = Passage(section, section.blocks, "procedure", _score(sims, doc_score))
    safety = next((s for s, _ in searcher.sections(section.document_id) if s.kind == "safety"), None)
    if safety is None:
        return [steps]
    return [Passage(safety, safety.blocks, "safety", steps.score), steps]


def _procedure_prior(section: Section, similarities) -> float:
    """A document's main procedure (named so, with many steps) before its short side lists."""
    steps = sum(
        1 for b in section.blocks if b.kind == "list" for line in b.text.splitlines() if ORDERED_ITEM_RE.match(line)
    )
    named = bool(PROCEDURE_HEADING_RE.search(section.heading))
    heading_terms = similarities[2]
    return NAMED_PROCEDURE_BONUS * named + STEPS_WEIGHT * min(steps, 10) / 10 + HEADING_WEIGHT * heading_terms


def _explanation(scored, max_sections: int) -> list[Passage]:
    ranked = sorted(
        (
            (s, sims, _score(sims, doc) - OVERVIEW_PENALTY * (s.kind == "overview"))
            for s, _, sims, doc in scored
            if s.kind != "safety"
        ),
        key=lambda r: r[2],
        reverse=True,
    )
    if not ranked:
        return []
    best_score = ranked[0][2]
    chosen = [r for r in ranked[:max_sections] if r[2] >= best_score - SECOND_SECTION_MARGIN]
    return [Passage(s, answering_blocks(s, sims), "explanation", score) for s, sims, score in chosen]


def answering_blocks(section: Section, similarities: np.ndarray) -> tuple[Block, ...]:
    """The closest block with what belongs to it, or the whole section when it is short."""
    blocks = section.blocks
    if sum(len(b.text.split()) for b in blocks) <= SHORT_SECTION_WORDS:
        return blocks
    best = int(np.argmax(similarities[0]))
    first, last = best, best
    if best > 0 and blocks[best].kind != "paragraph" and blocks[best - 1].kind == "paragraph":
        first = best - 1  # the paragraph that introduces a list or table
    if blocks[best].kind == "paragraph" and blocks[best].text.rstrip().endswith(":") and best + 1 < len(blocks):
        last = best + 1  # the list or table the paragraph introduces
    return blocks[first : last + 1]


def failure_mode_document(searcher: IndexSearcher, component: str) -> str | None:
    """The document about how ``component`` fails (tagged ``failure-mode``), if the index has one."""
    for document_id in searcher.documents():
        sections = searcher.sections(document_id)
        if sections:
            section = sections[0][0]
            if "failure-mode" in section.tags and component in section.components:
                return document_id
    return None


def diagnosis_focus(diagnosis: dict | None) -> dict | None:
    """What a system's latest diagnosis says, reduced to what an answer explains.

    The worst flagged component (by severity, then by how unlikely its nominal level
    is); a diagnosis the models could not vouch for, or one that flags nothing, is a
    focus without a component.
    """
    if not diagnosis:
        return None
    when = diagnosis.get("diagnosed_at")
    components = diagnosis.get("components") or {}
    ood = (diagnosis.get("out_of_distribution") or {}).get("flagged") or diagnosis.get("severity") == "unknown"
    base = {"diagnosed_at": when, "confidence": diagnosis.get("confidence"), "severity": diagnosis.get("severity")}
    if ood:
        return {**base, "component": None, "out_of_distribution": True}
    flagged = [c for c in diagnosis.get("affected_components") or [] if isinstance(c, str)]
    if not flagged:
        return {**base, "component": None}

    def badness(name: str) -> tuple:
        state = components.get(name) or {}
        return (SEVERITY_RANK.get(state.get("severity"), 0), -float(state.get("nominal_probability", 1.0)))

    component = max(flagged, key=badness)
    state = components.get(component) or {}
    level = state.get("level")
    probability = (state.get("probabilities") or {}).get(str(level))
    return {
        **base,
        "component": component,
        "level": level,
        "meaning": state.get("meaning"),
        "component_severity": state.get("severity"),
        "probability": probability,
    }


def diagnosis_lead(focus: dict) -> str:
    when = f" of {_when(focus['diagnosed_at'])}" if focus.get("diagnosed_at") else ""
    if focus.get("out_of_distribution"):
        return (
            f"The latest diagnosis{when} could not be vouched for: the cycle is unlike what the models "
            "were trained on, so no component condition is known from it."
        )
    if not focus.get("component"):
        return f"The latest diagnosis{when} flags no component; the documents below answer the question."
    parts = [f"level {focus['level']}" if focus.get("level") is not None else None]
    if focus.get("meaning"):
        parts.append(str(focus["meaning"]))
    if focus.get("component_severity"):
        parts.append(str(focus["component_severity"]))
    detail = ", ".join(p for p in parts if p)
    confidence = focus.get("confidence")
    confidence = f", confidence {float(confidence):.2f}" if isinstance(confidence, int | float) else ""
    return f"This explains the latest diagnosis{when}: the {focus['component']} at {detail}{confidence}."


def _when(value) -> str:
    text = str(value)
    match = re.match(r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2})", text)
    return f"{match.group(1)} {match.group(2)} UTC" if match else text
