"""Build the assistant's retrieval index with Ray Data and publish it as a new version.

    read documents -> parse (Ray tasks) -> chunk (flat_map) -> embed (actor pool)
    -> FAISS index + chunk metadata -> new version under index_store_uri, LATEST updated

Locally:           python -m pipelines.build_index [--docs DIR ...] [--store URI]
On a cluster:      ray job submit --working-dir . -- python -m pipelines.build_index

Serving Retrievers configured with ``index_version: latest`` pick the new version up.
"""

from __future__ import annotations

import argparse
import time
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from knowledge.chunking import Chunker, load_tokenizer
from knowledge.corpus import Document, check_unique_ids, discover_files, fingerprint_files, read_document
from knowledge.embedding import MODEL_NAME, get_embedder
from knowledge.index_store import IVF_THRESHOLD, IndexStore


_LIST_SEP = "|"


def parse_file(row: dict) -> dict:
    return read_document(row["path"]).to_dict()


@lru_cache(maxsize=4)
def _chunker(model_path: str | None, max_tokens: int, overlap_tokens: int) -> Chunker:
    # Cached per worker process: Ray reuses workers, so the tokenizer loads once, not per document.
    return Chunker(load_tokenizer(model_path), max_tokens=max_tokens, overlap_tokens=overlap_tokens)


def chunk_document(row: dict, model_path: str | None = None, max_tokens: int = 200,
                   overlap_tokens: int = 40) -> list[dict]:
    chunker = _chunker(model_path, max_tokens, overlap_tokens)
    out = []
    for chunk in chunker.chunk_document(Document.from_dict(row)):
        record = chunk.to_dict()
        # Ragged list columns make Arrow fall back to pickling inside Ray; strings travel cheaply.
        record["components"] = _LIST_SEP.join(chunk.components)
        record["tags"] = _LIST_SEP.join(chunk.tags)
        record["embed_text"] = chunk.embed_text
        out.append(record)
    return out


class EmbedBatch:
    """Actor-pool UDF: the model loads once per actor, then embeds batch after batch."""

    def __init__(self, model_path: str | None = None):
        self._embedder = get_embedder(model_path)

    def __call__(self, batch: dict) -> dict:
        batch["vector"] = self._embedder.embed(list(batch["embed_text"]))
        return batch


def build_index(docs_dirs: Sequence[str | Path], store_uri: str | Path, *, model_path: str | None = None,
                max_tokens: int = 200, overlap_tokens: int = 40, embed_actors: int = 2, batch_size: int = 64,
                ivf_threshold: int = IVF_THRESHOLD) -> dict:
    """Chunk, embed and publish ``docs_dirs``; returns the new version's manifest (plus build stats)."""
    import ray

    files = discover_files(docs_dirs)
    if not files:
        raise ValueError(f"no documents (.md, .txt, .pdf) found in {[str(d) for d in docs_dirs]}")
    if not ray.is_initialized():
        ray.init()  # joins the cluster named by RAY_ADDRESS (ray job submit), else starts a local one

    started = time.perf_counter()
    ds = (
        ray.data.from_items([{"path": str(p)} for p in files])
        .map(parse_file)
        .flat_map(chunk_document, fn_kwargs={"model_path": model_path, "max_tokens": max_tokens,
                                             "overlap_tokens": overlap_tokens})
        .map_batches(EmbedBatch, fn_constructor_kwargs={"model_path": model_path}, batch_size=batch_size,
                     compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, embed_actors)),
                     batch_format="numpy")
    )
    rows: list[dict] = []
    vectors: list[np.ndarray] = []
    for batch in ds.iter_batches(batch_size=1024, batch_format="pandas"):
        vectors.extend(np.stack(batch.pop("vector").to_numpy()))
        rows.extend(batch.drop(columns=["embed_text"]).to_dict("records"))
    elapsed = time.perf_counter() - started

    # Ray Data does not keep order across the actor pool; sort so a rebuild of the same corpus is identical.
    order = sorted(range(len(rows)), key=lambda i: rows[i]["chunk_id"])
    rows = [_plain(rows[i]) for i in order]
    matrix = np.asarray([vectors[i] for i in order], dtype=np.float32)
    check_unique_ids(Document(id=r["document_id"], title="", text="", path=r["chunk_id"])
                     for r in {r["document_id"]: r for r in rows}.values())

    store = IndexStore(store_uri)
    manifest = store.publish(
        matrix, rows, model=MODEL_NAME if model_path is None else str(model_path),
        corpus_fingerprint=fingerprint_files(files), ivf_threshold=ivf_threshold,
        extra={"n_files": len(files), "chunking": {"max_tokens": max_tokens, "overlap_tokens": overlap_tokens}},
    )
    return {**manifest, "build_seconds": round(elapsed, 3),
            "chunks_per_s": round(len(rows) / elapsed, 1) if elapsed > 0 else None}


def _plain(row: dict) -> dict:
    """Undo the transport encoding: components/tags become lists again (list<string> in Parquet)."""
    row = dict(row)
    for key in ("components", "tags"):
        row[key] = [v for v in str(row.get(key) or "").split(_LIST_SEP) if v]
    return row


def main(argv: Sequence[str] | None = None) -> int:
    from configs.settings import get_settings

    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m pipelines.build_index", description=__doc__.split("\n")[1])
    parser.add_argument("--docs", action="append", type=Path,
                        help="knowledge folder (repeatable); default: settings.knowledge_dirs")
    parser.add_argument("--store", default=settings.index_store_uri, help="index store URI (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=200, help="chunk size in model tokens")
    parser.add_argument("--overlap-tokens", type=int, default=40, help="overlap between consecutive chunks")
    parser.add_argument("--embed-actors", type=int, default=2, help="max embedding actors in the pool")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--ivf-threshold", type=int, default=IVF_THRESHOLD,
                        help="use an IVF index from this many chunks on (exact flat index below)")
    args = parser.parse_args(argv)

    manifest = build_index(args.docs or settings.knowledge_dirs, args.store, max_tokens=args.max_tokens,
                           overlap_tokens=args.overlap_tokens, embed_actors=args.embed_actors,
                           batch_size=args.batch_size, ivf_threshold=args.ivf_threshold)
    print(f"documents: {manifest['n_documents']}  chunks: {manifest['n_chunks']}  "
          f"chunks/s: {manifest['chunks_per_s']}  index: {manifest['index_type']}")
    print(f"published version {manifest['version']} to {args.store} (LATEST)")
    return 0


if __name__ == "__main__":
    # Run through the importable module, not __main__: Ray pickles the UDFs by
    # reference and workers must be able to import them as pipelines.build_index.
    from pipelines.build_index import main as _main

    raise SystemExit(_main())
