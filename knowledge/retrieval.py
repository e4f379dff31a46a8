"""Nearest-chunk search over a loaded index, with metadata filters.

FAISS cannot filter by metadata, so the searcher over-fetches, filters in Python,
and widens the search until it has ``k`` results or has seen the whole index.

Each hit carries its chunk's answer sentences and their vectors (embedded when
the index was built), so an extractive answer needs no embedding at query time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from knowledge.index_store import LoadedIndex

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
    sentences: tuple[str, ...] = field(default_factory=tuple)
    # (len(sentences), dims) float32, a view into the index's sentence matrix
    sentence_vectors: np.ndarray | None = field(default=None, compare=False, repr=False)

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
            "sentences": list(self.sentences),
            "sentence_vectors": self.sentence_vectors,
        }


class IndexSearcher:
    def __init__(self, loaded: LoadedIndex, overfetch: int = 8):
        self.loaded = loaded
        self.version = loaded.version
        self.manifest = loaded.manifest
        self._overfetch = overfetch
        rows = loaded.chunks.to_dict("records")
        # Plain tuples/sets per row: filtering runs per query, pandas per row would dominate latency.
        offsets = loaded.sentence_offsets
        self._rows = [
            {
                **r,
                "components": tuple(_as_list(r.get("components"))),
                "tags": tuple(_as_list(r.get("tags"))),
                "sentences": tuple(str(t) for t in r["sentences"]),
                "sentence_vectors": loaded.sentence_vectors[offsets[i] : offsets[i + 1]],
            }
            for i, r in enumerate(rows)
        ]

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
                    sentences=row["sentences"],
                    sentence_vectors=row["sentence_vectors"],
                )
            )
        hits.sort(key=lambda h: h.score, reverse=True)
        return hits


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
