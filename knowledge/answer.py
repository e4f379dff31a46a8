"""Extractive answers composed of the chosen sections, and the citation check for LLM answers.

Works without any LLM, so it is both a backend of its own and the answer that
replaces a generative one that failed or cited what it was not given. The text is
the grounding's passages (``knowledge.grounding``) in their order, each under its
heading and cited ``[n]``, the 1-based number of that passage in the sources list;
the blocks are copied whole (lists and tables are never cut). A question about a
system starts with the lead sentence naming the diagnosis the answer explains.
"""

from __future__ import annotations

import re

NO_ANSWER = "The maintenance documents retrieved for this question do not cover it."
CITATION_RE = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
_ROLE_TITLES = {"safety": "Safety first", "procedure": None, "explanation": None}


def passage_heading(passage: dict) -> str:
    """``Heading — Document title``; the safety notes of a procedure read "Safety first"."""
    heading = _ROLE_TITLES.get(passage.get("role")) or passage.get("heading") or passage.get("title", "")
    title = passage.get("title", "")
    return heading if not title or heading == title else f"{heading} — {title}"


def answer_pieces(grounding: dict) -> list[str]:
    """The answer as pieces (lead, then one per passage): what a stream sends one by one."""
    passages = grounding.get("passages") or []
    pieces = [grounding["lead"]] if grounding.get("lead") else []
    if not passages:
        return [*pieces, NO_ANSWER]
    for number, passage in enumerate(passages, start=1):
        pieces.append(f"**{passage_heading(passage)}** [{number}]\n\n{passage['text']}")
    return pieces


def compose(grounding: dict) -> str:
    return "\n\n".join(answer_pieces(grounding))


def cited(text: str) -> list[int]:
    """The source numbers ``text`` cites, in order of first appearance ([1], [2][3], [1, 2])."""
    numbers: list[int] = []
    for match in CITATION_RE.finditer(text):
        for part in match.group(1).split(","):
            n = int(part)
            if n not in numbers:
                numbers.append(n)
    return numbers


def citation_problem(text: str, n_sources: int, final: bool = True) -> str | None:
    """Why an answer's citations cannot be trusted, or None.

    A citation of a source that was not supplied is a problem as soon as it appears;
    citing nothing at all only once the answer is complete (``final``).
    """
    numbers = cited(text)
    outside = [n for n in numbers if not 1 <= n <= n_sources]
    if outside:
        listed = ", ".join(f"[{n}]" for n in outside)
        return f"the answer cited {listed}, which is not among the {n_sources} sources supplied"
    if final and not numbers:
        return "the answer cited none of the sources supplied"
    return None


def checked(text: str, grounding: dict) -> tuple[str, str | None]:
    """A complete answer, or the extractive one in its place when its citations fail:
    ``(the text to send, why it was replaced or None)``."""
    problem = citation_problem(text, len(grounding.get("passages") or []))
    return (compose(grounding), problem) if problem else (text, None)
