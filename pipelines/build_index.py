"""Build the assistant's retrieval index with Ray Data and publish it as a new version.

    read documents -> parse (Ray tasks) -> chunk (flat_map)
    -> embed (actor pool): each chunk, and each of its answer sentences
    -> FAISS index + chunk metadata + sentence vectors -> new version under index_store_uri, LATEST updated

Locally:           python -m pipelines.build_index [--docs DIR ...] [--store URI] [--if-missing]
On a cluster:      ray job submit --working-dir . -- python -m pipelines.build_index
Quick start:       ``ensure_index(settings)`` builds only when the store has no usable index.

Serving Retrievers configured with ``index_version: latest`` pick the new version up.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from knowledge.answer import embed_sentences
from knowledge.chunking import Chunker, load_tokenizer
from knowledge.corpus import Document, check_unique_ids, discover_files, fingerprint_files, read_document
from knowledge.embedding import MODEL_NAME, get_embedder
from knowledge.index_store import INDEX_FORMAT, IVF_THRESHOLD, IndexNotFound, IndexStore

logger = logging.getLogger(__name__)
_LIST_SEP = "|"


def parse_file(row: dict) -> dict:
    return read_document(row["path"]).to_dict()


@lru_cache(maxsize=4)
def _chunker(model_path: str | None, max_tokens: int, overlap_tokens: int) -> Chunker:
    # Cached per worker process: Ray reuses workers, so the tokenizer loads once, not per document.
    return Chunker(load_tokenizer(model_path), max_tokens=max_tokens, overlap_tokens=overlap_tokens)


def chunk_document(
    row: dict, model_path: str | None = None, max_tokens: int = 200, overlap_tokens: int = 40
) -> list[dict]:
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
    """Actor-pool UDF: the model loads once per actor, then embeds batch after batch.

    Per chunk it adds ``vector`` (the chunk, for retrieval), ``sentences`` (its
    answer sentences, JSON) and ``sentence_vectors`` (their float32 vectors as
    bytes): ragged columns would make Arrow fall back to pickling.
    """

    def __init__(self, model_path: str | None = None):
        self._embedder = get_embedder(model_path)

    def __call__(self, batch: dict) -> dict:
        batch["vector"] = self._embedder.embed(list(batch["embed_text"]))
        per_chunk, vectors = embed_sentences(
            [str(t) for t in batch["text"]], self._embedder.embed, dims=self._embedder.dims
        )
        blobs, start = [], 0
        for sentences in per_chunk:
            blobs.append(vectors[start : start + len(sentences)].tobytes())
            start += len(sentences)
        batch["sentences"] = np.array([json.dumps(s) for s in per_chunk], dtype=object)
        batch["sentence_vectors"] = np.array(blobs, dtype=object)
        return batch


def build_index(
    docs_dirs: Sequence[str | Path],
    store_uri: str | Path,
    *,
    model_path: str | None = None,
    max_tokens: int = 200,
    overlap_tokens: int = 40,
    embed_actors: int = 2,
    batch_size: int = 64,
    ivf_threshold: int = IVF_THRESHOLD,
) -> dict:
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
        .flat_map(
            chunk_document,
            fn_kwargs={"model_path": model_path, "max_tokens": max_tokens, "overlap_tokens": overlap_tokens},
        )
        .map_batches(
            EmbedBatch,
            fn_constructor_kwargs={"model_path": model_path},
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, embed_actors)),
            batch_format="numpy",
        )
    )
    rows: list[dict] = []
    vectors: list[np.ndarray] = []
    sentence_blobs: list[bytes] = []
    for batch in ds.iter_batches(batch_size=1024, batch_format="pandas"):
        vectors.extend(np.stack(batch.pop("vector").to_numpy()))
        sentence_blobs.extend(batch.pop("sentence_vectors"))
        rows.extend(batch.drop(columns=["embed_text"]).to_dict("records"))
    elapsed = time.perf_counter() - started

    # Ray Data does not keep order across the actor pool; sort so a rebuild of the same corpus is identical.
    order = sorted(range(len(rows)), key=lambda i: rows[i]["chunk_id"])
    rows = [_plain(rows[i]) for i in order]
    matrix = np.asarray([vectors[i] for i in order], dtype=np.float32)
    dims = matrix.shape[1]
    sentence_matrix = np.concatenate(
        [np.frombuffer(sentence_blobs[i], dtype=np.float32).reshape(-1, dims) for i in order]
        or [np.zeros((0, dims), dtype=np.float32)]
    )
    n_sentences = len(sentence_matrix)
    check_unique_ids(
        Document(id=r["document_id"], title="", text="", path=r["chunk_id"])
        for r in {r["document_id"]: r for r in rows}.values()
    )

    store = IndexStore(store_uri)
    manifest = store.publish(
        matrix,
        rows,
        sentence_vectors=sentence_matrix,
        model=MODEL_NAME if model_path is None else str(model_path),
        corpus_fingerprint=fingerprint_files(files),
        ivf_threshold=ivf_threshold,
        extra={"n_files": len(files), "chunking": {"max_tokens": max_tokens, "overlap_tokens": overlap_tokens}},
    )
    return {
        **manifest,
        "build_seconds": round(elapsed, 3),
        "chunks_per_s": round(len(rows) / elapsed, 1) if elapsed > 0 else None,
        "sentences_per_s": round(n_sentences / elapsed, 1) if elapsed > 0 else None,
    }


def ensure_index(settings=None, **build_kwargs) -> dict | None:
    """Build the index only when ``settings.index_store_uri`` has no usable one (quick start).

    Returns the new manifest, or None when LATEST already names a version in the
    current format. A LATEST of an older format (no stored sentence vectors) is
    rebuilt from ``settings.knowledge_dirs``: serving could not load it.
    """
    from configs.settings import get_settings

    settings = settings or get_settings()
    store = IndexStore(settings.index_store_uri)
    try:
        manifest = store.manifest("latest")
    except IndexNotFound:
        manifest = None
    if manifest is not None and manifest.get("format") == INDEX_FORMAT:
        return None
    if manifest is not None:
        logger.warning(
            "index %s under %s has format %s, serving needs %s: rebuilding",
            manifest.get("version"),
            store.uri,
            manifest.get("format"),
            INDEX_FORMAT,
        )
    return build_index(settings.knowledge_dirs, settings.index_store_uri, **build_kwargs)


def _plain(row: dict) -> dict:
    """Undo the transport encoding: components/tags become lists again (list<string> in Parquet)."""
    row = dict(row)
    for key in ("components", "tags"):
        row[key] = [v for v in str(row.get(key) or "").split(_LIST_SEP) if v]
    row["sentences"] = json.loads(row["sentences"])
    return row


def main(argv: Sequence[str] | None = None) -> int:
    from configs.settings import get_settings

    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m pipelines.build_index", description=__doc__.split("\n")[1])
    parser.add_argument(
        "--docs", action="append", type=Path, help="knowledge folder (repeatable); default: settings.knowledge_dirs"
    )
    parser.add_argument("--store", default=settings.index_store_uri, help="index store URI (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=200, help="chunk size in model tokens")
    parser.add_argument("--overlap-tokens", type=int, default=40, help="overlap between consecutive chunks")
    parser.add_argument("--embed-actors", type=int, default=2, help="max embedding actors in the pool")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--ivf-threshold",
        type=int,
        default=IVF_THRESHOLD,
        help="use an IVF index from this many chunks on (exact flat index below)",
    )
    parser.add_argument(
        "--if-missing", action="store_true", help="build only when the store has no index in the current format"
    )
    args = parser.parse_args(argv)

    build_kwargs = {
        "max_tokens": args.max_tokens,
        "overlap_tokens": args.overlap_tokens,
        "embed_actors": args.embed_actors,
        "batch_size": args.batch_size,
        "ivf_threshold": args.ivf_threshold,
    }
    if args.if_missing:
        settings = settings.model_copy(
            update={"index_store_uri": args.store, "knowledge_dirs": args.docs or settings.knowledge_dirs}
        )
        manifest = ensure_index(settings, **build_kwargs)
        if manifest is None:
            print(f"index present: {IndexStore(args.store).latest_version()} in {args.store} (nothing built)")
            return 0
    else:
        manifest = build_index(args.docs or settings.knowledge_dirs, args.store, **build_kwargs)
    print(
        f"documents: {manifest['n_documents']}  chunks: {manifest['n_chunks']}  "
        f"sentences: {manifest['n_sentences']}  chunks/s: {manifest['chunks_per_s']}  "
        f"index: {manifest['index_type']}"
    )
    print(f"published version {manifest['version']} to {args.store} (LATEST)")
    return 0


if __name__ == "__main__":
    # Run through the importable module, not __main__: Ray pickles the UDFs by
    # reference and workers must be able to import them as pipelines.build_index.
    from pipelines.build_index import main as _main

    raise SystemExit(_main())
