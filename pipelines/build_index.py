"""Build the assistant's retrieval index with Ray Data and publish it as a new version.

    read documents -> parse (Ray tasks) -> chunks and section blocks (flat_map)
    -> embed (actor pool): each chunk (for retrieval) and each block (for choosing what answers)
    -> FAISS index + chunk metadata + blocks with their vectors -> new version under index_store_uri

Locally:           python -m pipelines.build_index [--docs DIR ...] [--store URI] [--if-missing]
On a cluster:      ray job submit --working-dir . -- python -m pipelines.build_index
Quick start:       ``ensure_index(settings)`` builds only when the store has no usable index.

Serving Retrievers configured with ``index_version: latest`` pick the new version up.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from knowledge.chunking import Chunker, embed_text, load_tokenizer
from knowledge.corpus import Document, check_unique_ids, discover_files, fingerprint_files, read_document
from knowledge.embedding import MODEL_NAME, get_embedder
from knowledge.index_store import INDEX_FORMAT, IVF_THRESHOLD, IndexNotFound, IndexStore
from knowledge.sections import document_sections

logger = logging.getLogger(__name__)
_LIST_SEP = "|"


def parse_file(row: dict) -> dict:
    return read_document(row["path"]).to_dict()


@lru_cache(maxsize=4)
def _chunker(model_path: str | None, max_tokens: int, overlap_tokens: int) -> Chunker:
    # Cached per worker process: Ray reuses workers, so the tokenizer loads once, not per document.
    return Chunker(load_tokenizer(model_path), max_tokens=max_tokens, overlap_tokens=overlap_tokens)


def document_records(
    row: dict, model_path: str | None = None, max_tokens: int = 200, overlap_tokens: int = 40
) -> list[dict]:
    """One document's chunks (``record`` "chunk") and its sections' blocks (``record`` "block"),
    in one schema: each is one text to embed."""
    chunker = _chunker(model_path, max_tokens, overlap_tokens)
    doc = Document.from_dict(row)
    # Ragged list columns make Arrow fall back to pickling inside Ray; strings travel cheaply.
    common = {"components": _LIST_SEP.join(doc.components), "tags": _LIST_SEP.join(doc.tags), "title": doc.title}
    out = []
    for chunk in chunker.chunk_document(doc):
        out.append(
            {
                **common,
                "record": "chunk",
                "id": chunk.chunk_id,
                "document_id": doc.id,
                "heading_path": chunk.heading_path,
                "text": chunk.text,
                "anchor": "",
                "section_position": -1,
                "position": -1,
                "kind": "",
                "embed_text": chunk.embed_text,
            }
        )
    for section in document_sections(doc.id, doc.title, doc.text, doc.components, doc.tags):
        for position, block in enumerate(section.blocks):
            out.append(
                {
                    **common,
                    "record": "block",
                    "id": f"{section.section_id}/{position}",
                    "document_id": doc.id,
                    "heading_path": section.heading_path,
                    "text": block.text,
                    "anchor": section.anchor,
                    "section_position": section.position,
                    "position": position,
                    "kind": block.kind,
                    "embed_text": embed_text(section.heading_path, block.text),
                }
            )
    return out


class EmbedBatch:
    """Actor-pool UDF: the model loads once per actor, then embeds batch after batch."""

    def __init__(self, model_path: str | None = None):
        self._embedder = get_embedder(model_path)

    def __call__(self, batch: dict) -> dict:
        batch["vector"] = self._embedder.embed(list(batch["embed_text"]))
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
    in_process: bool = False,
) -> dict:
    """Chunk, embed and publish ``docs_dirs``; returns the new version's manifest (plus build stats).

    ``in_process`` runs the same steps in this process, without Ray (tests and
    benchmarks on a small corpus, where starting a cluster costs more than the build)."""
    files = discover_files(docs_dirs)
    if not files:
        raise ValueError(f"no documents (.md, .txt, .pdf) found in {[str(d) for d in docs_dirs]}")
    started = time.perf_counter()
    kwargs = {"model_path": model_path, "max_tokens": max_tokens, "overlap_tokens": overlap_tokens}
    if in_process:
        texts = [r for f in files for r in document_records(parse_file({"path": str(f)}), **kwargs)]
        embed = EmbedBatch(model_path)
        records = []
        for i in range(0, len(texts), batch_size):
            batch = texts[i : i + batch_size]
            vectors = embed({"embed_text": [r["embed_text"] for r in batch]})["vector"]
            records.extend({**r, "vector": v} for r, v in zip(batch, vectors))
    else:
        records = _embedded_with_ray(files, kwargs, embed_actors, batch_size)
    elapsed = time.perf_counter() - started
    return _publish(records, files, store_uri, model_path, ivf_threshold, elapsed, max_tokens, overlap_tokens)


def _embedded_with_ray(files, kwargs: dict, embed_actors: int, batch_size: int) -> list[dict]:
    import ray

    if not ray.is_initialized():
        ray.init()  # joins the cluster named by RAY_ADDRESS (ray job submit), else starts a local one
    ds = (
        ray.data.from_items([{"path": str(p)} for p in files])
        .map(parse_file)
        .flat_map(document_records, fn_kwargs=kwargs)
        .map_batches(
            EmbedBatch,
            fn_constructor_kwargs={"model_path": kwargs["model_path"]},
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, embed_actors)),
            batch_format="numpy",
        )
    )
    records: list[dict] = []
    for batch in ds.iter_batches(batch_size=1024, batch_format="pandas"):
        records.extend(batch.to_dict("records"))
    return records


def _publish(records, files, store_uri, model_path, ivf_threshold, elapsed, max_tokens, overlap_tokens) -> dict:
    # Ray Data does not keep order across the actor pool; sort so a rebuild of the same corpus is identical.
    chunks = sorted((r for r in records if r["record"] == "chunk"), key=lambda r: r["id"])
    blocks = sorted(
        (r for r in records if r["record"] == "block"),
        key=lambda r: (r["document_id"], r["section_position"], r["position"]),
    )
    matrix = np.asarray([r["vector"] for r in chunks], dtype=np.float32)
    block_matrix = np.asarray([r["vector"] for r in blocks], dtype=np.float32).reshape(-1, matrix.shape[1])
    chunk_rows, block_rows = [_chunk_row(r) for r in chunks], [_block_row(r) for r in blocks]
    check_unique_ids(
        Document(id=r["document_id"], title="", text="", path=r["chunk_id"])
        for r in {r["document_id"]: r for r in chunk_rows}.values()
    )

    store = IndexStore(store_uri)
    manifest = store.publish(
        matrix,
        chunk_rows,
        blocks=block_rows,
        block_vectors=block_matrix,
        model=MODEL_NAME if model_path is None else str(model_path),
        corpus_fingerprint=fingerprint_files(files),
        ivf_threshold=ivf_threshold,
        extra={"n_files": len(files), "chunking": {"max_tokens": max_tokens, "overlap_tokens": overlap_tokens}},
    )
    return {
        **manifest,
        "build_seconds": round(elapsed, 3),
        "chunks_per_s": round(len(chunk_rows) / elapsed, 1) if elapsed > 0 else None,
        "texts_per_s": round(len(records) / elapsed, 1) if elapsed > 0 else None,
    }


def ensure_index(settings=None, **build_kwargs) -> dict | None:
    """Build the index only when ``settings.index_store_uri`` has no usable one (quick start).

    Returns the new manifest, or None when LATEST already names a version in the
    current format. A LATEST of an older format (no section blocks) is
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


def _lists(row: dict) -> dict:
    """Undo the transport encoding: components/tags become lists again (list<string> in Parquet)."""
    return {key: [v for v in str(row.get(key) or "").split(_LIST_SEP) if v] for key in ("components", "tags")}


def _chunk_row(r: dict) -> dict:
    keys = ("document_id", "title", "heading_path", "text")
    return {"chunk_id": r["id"], **{k: r[k] for k in keys}, **_lists(r)}


def _block_row(r: dict) -> dict:
    section_id = r["id"].rsplit("/", 1)[0]
    keys = ("document_id", "title", "heading_path", "anchor", "section_position", "position", "kind", "text")
    return {"section_id": section_id, **{k: r[k] for k in keys}, **_lists(r)}


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
        f"section blocks: {manifest['n_blocks']}  chunks/s: {manifest['chunks_per_s']}  "
        f"index: {manifest['index_type']}"
    )
    print(f"published version {manifest['version']} to {args.store} (LATEST)")
    return 0


if __name__ == "__main__":
    # Run through the importable module, not __main__: Ray pickles the UDFs by
    # reference and workers must be able to import them as pipelines.build_index.
    from pipelines.build_index import main as _main

    raise SystemExit(_main())
