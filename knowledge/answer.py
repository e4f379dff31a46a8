"""Extractive answers: the retrieved sentences closest to the question, with citations.

Works without any LLM, so it is both a backend of its own and the fallback when a
generative backend fails. Every sentence is copied verbatim from a retrieved
passage (leading list markers aside) and followed by ``[n]``, the 1-based number
of that passage in the sources list, so the answer can be checked against them.

Passages from the index carry their ``sentences`` and ``sentence_vectors``,
split and embedded when the index was built (``embed_sentences``); given the
question's vector, answering is then only dot products. Passages without them
(any other source) are split and embedded on the spot.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from knowledge.chunking import FENCE_RE, HEADING_RE, SENTENCE_RE

NO_ANSWER = "The maintenance documents retrieved for this question do not cover it."
_LIST_MARKER = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_MIN_WORDS = 4


@dataclass(frozen=True)
class Candidate:
    source: int  # 1-based passage number
    position: int  # order within the passage
    text: str


@dataclass
class Answer:
    text: str
    sources: list[int] = field(default_factory=list)  # 1-based passage numbers cited, ascending
    sentences: list[Candidate] = field(default_factory=list)


def split_sentences(text: str) -> list[str]:
    """Sentences of a passage; tables, code and headings are not prose and are skipped."""
    sentences: list[str] = []
    in_fence = False
    paragraph: list[str] = []

    def flush():
        if paragraph:
            sentences.extend(s.strip() for s in SENTENCE_RE.split(" ".join(paragraph)) if s.strip())
            paragraph.clear()

    for line in text.splitlines():
        if FENCE_RE.match(line):
            in_fence = not in_fence
            flush()
            continue
        stripped = line.strip()
        if in_fence or not stripped or stripped.startswith("|") or HEADING_RE.match(stripped):
            flush()
            continue
        if _LIST_MARKER.match(line):
            flush()
            stripped = _LIST_MARKER.sub("", line).strip()
        paragraph.append(stripped)
    flush()
    return [s for s in sentences if len(s.split()) >= _MIN_WORDS and re.search(r"[A-Za-z]", s)]


class ExtractiveAnswerer:
    def __init__(self, max_sentences: int = 4, min_similarity: float = 0.2, duplicate_similarity: float = 0.9):
        self.max_sentences = max_sentences
        self.min_similarity = min_similarity
        self.duplicate_similarity = duplicate_similarity

    @staticmethod
    def candidates(passages: Sequence[dict]) -> list[Candidate]:
        out = []
        for number, passage in enumerate(passages, start=1):
            for position, sentence in enumerate(split_sentences(passage.get("snippet") or passage.get("text", ""))):
                out.append(Candidate(number, position, sentence))
        return out

    @staticmethod
    def embedded_candidates(passages: Sequence[dict]) -> tuple[list[Candidate], np.ndarray] | None:
        """Candidates with the vectors stored at build time; None unless every passage has them."""
        out: list[Candidate] = []
        blocks: list[np.ndarray] = []
        for number, passage in enumerate(passages, start=1):
            sentences, vectors = passage.get("sentences"), passage.get("sentence_vectors")
            if sentences is None or vectors is None:
                return None
            vectors = np.asarray(vectors, dtype=np.float32)
            if len(sentences) == 0:
                continue
            if vectors.ndim != 2 or len(vectors) != len(sentences):
                raise ValueError(
                    f"passage {number} has {len(sentences)} sentences but vectors of shape {vectors.shape}"
                )
            out.extend(Candidate(number, position, str(text)) for position, text in enumerate(sentences))
            blocks.append(vectors)
        return out, (np.concatenate(blocks) if blocks else np.zeros((0, 0), dtype=np.float32))

    def answer(
        self,
        question: str,
        passages: Sequence[dict],
        embed: Callable[[list[str]], np.ndarray] | None = None,
        question_vector: np.ndarray | None = None,
    ) -> Answer:
        """With ``question_vector`` and build-time sentence vectors, no embedding happens here."""
        ready = self._without_embedding(passages, embed, question_vector)
        if isinstance(ready, Answer):
            return ready
        vectors = np.asarray(embed([question] + [c.text for c in ready]), dtype=np.float32)
        return self.select(vectors[0], ready, vectors[1:])

    async def aanswer(
        self,
        question: str,
        passages: Sequence[dict],
        embed: Callable[[list[str]], Awaitable[np.ndarray]] | None = None,
        question_vector: np.ndarray | None = None,
    ) -> Answer:
        ready = self._without_embedding(passages, embed, question_vector)
        if isinstance(ready, Answer):
            return ready
        vectors = np.asarray(await embed([question] + [c.text for c in ready]), dtype=np.float32)
        return self.select(vectors[0], ready, vectors[1:])

    def _without_embedding(self, passages: Sequence[dict], embed, question_vector: np.ndarray | None):
        """The answer when no embedding is needed (stored sentence vectors, or nothing
        to say); otherwise the candidate sentences the caller must embed."""
        if question_vector is not None:
            embedded = self.embedded_candidates(passages)
            if embedded is not None:
                return self.select(np.asarray(question_vector, dtype=np.float32), *embedded)
        candidates = self.candidates(passages)
        if not candidates:
            return Answer(NO_ANSWER)
        if embed is None:
            raise ValueError("these passages carry no sentence vectors: an embed function is needed")
        return candidates

    def select(self, question_vec: np.ndarray, candidates: Sequence[Candidate], vectors: np.ndarray) -> Answer:
        if not candidates:
            return Answer(NO_ANSWER)
        similarity = vectors @ question_vec
        # A slight preference for better-ranked passages breaks ties between equally close sentences.
        ranked = sorted(range(len(candidates)), key=lambda i: similarity[i] - 0.01 * candidates[i].source, reverse=True)
        chosen: list[int] = []
        for i in ranked:
            if similarity[i] < self.min_similarity or len(chosen) >= self.max_sentences:
                break
            if any(
                candidates[i].text == candidates[j].text or float(vectors[i] @ vectors[j]) >= self.duplicate_similarity
                for j in chosen
            ):
                continue
            chosen.append(i)
        if not chosen:
            return Answer(NO_ANSWER)
        picked = sorted((candidates[i] for i in chosen), key=lambda c: (c.source, c.position))
        text = " ".join(f"{c.text} [{c.source}]" for c in picked)
        return Answer(text=text, sources=sorted({c.source for c in picked}), sentences=picked)


def embed_sentences(
    texts: Sequence[str], embed: Callable[[list[str]], np.ndarray], dims: int | None = None
) -> tuple[list[list[str]], np.ndarray]:
    """Index build time: each chunk text's answer sentences, and all their vectors in one pass.

    Returns the sentences per text and one matrix with their vectors, text after
    text, in order (the layout ``IndexStore.publish`` stores).
    """
    per_text = [split_sentences(t) for t in texts]
    flat = [sentence for sentences in per_text for sentence in sentences]
    if flat:
        vectors = np.asarray(embed(flat), dtype=np.float32)
    else:
        vectors = np.zeros((0, dims or 0), dtype=np.float32)
    return per_text, vectors
