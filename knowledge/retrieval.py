"""Nearest-chunk search over a loaded index, with metadata filters.

FAISS cannot filter by metadata, so the searcher over-fetches, filters in Python,
and widens the search until it has ``k`` results or has seen the whole index.

The searcher also holds the documents' sections, block by block with their
vectors (embedded when the index was built): ``sections(document_id)`` is what
``knowledge.grounding`` chooses the answering sections from, with dot products only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import groupby

import numpy as np

from knowledge.index_store import LoadedIndex
from knowledge.sections import Block, Section

PREFERRED_COMPONENT_BOOST = 0.05  # cosine points; enough to reorder near-ties, not to promote off-topic text


@dataclass(frozen=True)
class SearchHit:
    document_id: str
    title: str
    heading_path: str
    snippet: str
    score: float
    chunk_id: str
    components: tuple[str, ...] = field(default_factory=tuple)
    tags: tuple[str, ...] = field(default_factory=tuple)
    section_id: str | None = None  # the section the chunk lies in (None: it had only meta-sentences)

    def to_dict(self) -> dict:
        return {
            "document_id": self.document_id,
            "title": self.title,
            "heading_path": self.heading_path,
            "snippet": self.snippet,
            "score": self.score,
            "chunk_id": self.chunk_id,
            "components": list(self.components),
            "tags": list(self.tags),
            "section_id": self.section_id,
        }


class IndexSearcher:
    def __init__(self, loaded: LoadedIndex, overfetch: int = 8):
        self.loaded = loaded
        self.version = loaded.version
        self.manifest = loaded.manifest
        self._overfetch = overfetch
        self._sections, self._by_document = _sections(loaded)
        self._term_index: dict = {}  # per text compared, built on first use: (vectorizer, section-term matrix, ids)
        section_of = {(s.document_id, s.heading_path): s.section_id for s, _ in self._sections.values()}
        # Plain tuples/sets per row: filtering runs per query, pandas per row would dominate latency.
        self._rows = [
            {
                **r,
                "components": tuple(_as_list(r.get("components"))),
                "tags": tuple(_as_list(r.get("tags"))),
                "section_id": section_of.get((r["document_id"], r["heading_path"])),
            }
            for r in loaded.chunks.to_dict("records")
        ]

    def sections(self, document_id: str) -> list[tuple[Section, np.ndarray]]:
        """A document's sections in order, each with its blocks' vectors (rows of a view)."""
        return [self._sections[sid] for sid in self._by_document.get(document_id, ())]

    def prepare(self) -> None:
        """Build the term indexes now (they are otherwise built by the first query)."""
        for over in ("section", "heading"):
            self._terms(over)

    def term_scores(self, question: str, over: str = "section") -> dict[str, float]:
        """Each section's TF-IDF cosine with the question: the words a question shares with a
        section ("case drain", "compensator") that a small embedding model blurs. ``over``
        "section" compares with the heading path and text, "heading" with the heading alone."""
        vectorizer, matrix, ids = self._terms(over)
        similarities = (matrix @ vectorizer.transform([question]).T).toarray().ravel()
        return {ids[i]: float(similarities[i]) for i in np.flatnonzero(similarities)}

    def _terms(self, over: str):
        if over not in self._term_index:
            from sklearn.feature_extraction.text import TfidfVectorizer

            ids = list(self._sections)
            if over == "heading":
                texts = [s.heading for s, _ in self._sections.values()]
            else:
                texts = [f"{s.heading_path}\n{s.heading_path}\n{s.text}" for s, _ in self._sections.values()]
            vectorizer = TfidfVectorizer(stop_words="english", sublinear_tf=True, ngram_range=(1, 2), min_df=1)
            self._term_index[over] = (vectorizer, vectorizer.fit_transform(texts), ids)
        return self._term_index[over]

    def documents(self) -> list[str]:
        return list(self._by_document)

    @property
    def size(self) -> int:
        return self.loaded.index.ntotal

    def search(
        self,
        query_vec,
        k: int = 5,
        components: Iterable[str] | None = None,
        tags: Iterable[str] | None = None,
        prefer_components: Iterable[str] | None = None,
        one_per_document: bool = True,
    ) -> list[SearchHit]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        query = np.asarray(query_vec, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self.loaded.index.d:
            raise ValueError(f"query vector has {query.shape[1]} dims, index {self.version} has {self.loaded.index.d}")
        want_components = set(components or ())
        want_tags = set(tags or ())
        prefer = set(prefer_components or ())
        filtered = bool(want_components or want_tags)
        fetch = min(self.size, max(k * self._overfetch, 32))
        while True:
            scores, ids = self.loaded.index.search(query, fetch)
            hits = self._collect(scores[0], ids[0], want_components, want_tags, prefer)
            if one_per_document:
                hits = _best_per_document(hits)
            if len(hits) >= k or fetch >= self.size or (not filtered and not one_per_document):
                return hits[:k]
            fetch = min(self.size, fetch * 4)

    def _collect(self, scores, ids, want_components, want_tags, prefer) -> list[SearchHit]:
        hits = []
        for score, idx in zip(scores, ids):
            if idx < 0:  # FAISS pads with -1 when fewer results exist
                continue
            row = self._rows[idx]
            if want_components and not want_components.intersection(row["components"]):
                continue
            if want_tags and not want_tags.intersection(row["tags"]):
                continue
            if prefer and prefer.intersection(row["components"]):
                score = score + PREFERRED_COMPONENT_BOOST
            hits.append(
                SearchHit(
                    document_id=row["document_id"],
                    title=row["title"],
                    heading_path=row["heading_path"],
                    snippet=row["text"],
                    score=float(score),
                    chunk_id=row["chunk_id"],
                    components=row["components"],
                    tags=row["tags"],
                    section_id=row["section_id"],
                )
            )
        hits.sort(key=lambda h: h.score, reverse=True)
        return hits


def _sections(loaded: LoadedIndex) -> tuple[dict[str, tuple[Section, np.ndarray]], dict[str, list[str]]]:
    """Sections rebuilt from the block rows (in document order), each with its vectors."""
    sections: dict[str, tuple[Section, np.ndarray]] = {}
    by_document: dict[str, list[str]] = {}
    rows = loaded.blocks.to_dict("records")
    for section_id, group in groupby(range(len(rows)), key=lambda i: rows[i]["section_id"]):
        members = list(group)  # consecutive rows: the index stores blocks in document order
        first = rows[members[0]]
        section = Section(
            section_id=section_id,
            document_id=first["document_id"],
            title=first["title"],
            heading_path=first["heading_path"],
            anchor=first["anchor"],
            position=int(first["section_position"]),
            blocks=tuple(Block(rows[i]["kind"], rows[i]["text"]) for i in members),
            components=tuple(_as_list(first.get("components"))),
            tags=tuple(_as_list(first.get("tags"))),
        )
        sections[section_id] = (section, loaded.block_vectors[members[0] : members[-1] + 1])
        by_document.setdefault(section.document_id, []).append(section_id)
    return sections, by_document


def _best_per_document(hits: list[SearchHit]) -> list[SearchHit]:
    seen: set[str] = set()
    best = []
    for hit in hits:  # already sorted by score
        if hit.document_id not in seen:
            seen.add(hit.document_id)
            best.append(hit)
    return best


def _as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def diagnosis_bias(diagnosis: dict | None) -> tuple[str, list[str]]:
    """Words to add to the retrieval query and components to prefer, from a system diagnosis.

    "Why is my system flagged?" says nothing about the valve; the diagnosis does.
    Adding its component and failure-mode words to the embedded query, and boosting
    chunks about the affected components, brings those documents to the top.
    """
    if not diagnosis:
        return "", []
    components = _as_list(diagnosis.get("affected_components") or diagnosis.get("components"))
    components = [c for c in components if isinstance(c, str)]
    modes = [m.replace("_", " ") for m in _as_list(diagnosis.get("anomaly_type"))]
    words = [*modes, *(f"{c} failure diagnosis" for c in components)]
    return " ".join(words), components
