"""Retrieval quality over ``tests/data/rag_eval.yaml``: recall@1, recall@3 and MRR.

    python -m bench.eval_retrieval                 # against the LATEST index in settings.index_store_uri
    python -m bench.eval_retrieval --build         # build a fresh index from settings.knowledge_dirs first
    python -m bench.eval_retrieval --store DIR --version v2026...

A question counts as found at k when any of its expected documents is among the
top-k documents (one hit per document). MRR uses the rank of the first expected
document within the top 10. Target: recall@3 >= 0.9.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from configs.settings import PROJECT_ROOT, get_settings

DEFAULT_EVAL = PROJECT_ROOT / "tests" / "data" / "rag_eval.yaml"
MRR_DEPTH = 10


def load_eval_set(path: str | Path = DEFAULT_EVAL) -> list[dict]:
    items = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or []
    bad = [
        i
        for i, item in enumerate(items)
        if not (
            isinstance(item, dict)
            and item.get("question")
            and isinstance(item.get("expected"), list)
            and item["expected"]
        )
    ]
    if bad:
        raise ValueError(f"{path}: entries {bad[:5]} need a 'question' and a non-empty 'expected' list")
    return items


def evaluate(searcher, embedder, items: list[dict]) -> dict:
    questions = [item["question"] for item in items]
    vectors = embedder.embed(questions)
    ranks, rows = [], []
    for item, vector in zip(items, vectors):
        hits = searcher.search(vector, k=MRR_DEPTH)
        ids = [h.document_id for h in hits]
        rank = next((i + 1 for i, doc_id in enumerate(ids) if doc_id in item["expected"]), None)
        ranks.append(rank)
        rows.append({"question": item["question"], "expected": item["expected"], "got": ids[:3], "rank": rank})
    n = len(items)
    return {
        "n": n,
        "recall@1": sum(1 for r in ranks if r and r <= 1) / n,
        "recall@3": sum(1 for r in ranks if r and r <= 3) / n,
        "mrr": sum(1.0 / r for r in ranks if r) / n,
        "rows": rows,
    }


def print_report(result: dict, version: str, show_misses: bool = True) -> None:
    print(f"index {version}: {result['n']} questions")
    print(f"{'metric':<10}{'value':>8}")
    for metric in ("recall@1", "recall@3", "mrr"):
        print(f"{metric:<10}{result[metric]:>8.3f}")
    if show_misses:
        misses = [r for r in result["rows"] if not r["rank"] or r["rank"] > 1]
        if misses:
            print(f"\n{'rank':>4}  {'expected':<28} {'top 3':<60} question")
            for r in misses:
                print(
                    f"{str(r['rank'] or '-'):>4}  {','.join(r['expected'])[:28]:<28} "
                    f"{','.join(r['got'])[:60]:<60} {r['question'][:70]}"
                )


def main(argv=None) -> int:
    from knowledge.embedding import get_embedder
    from knowledge.index_store import IndexStore
    from knowledge.retrieval import IndexSearcher

    settings = get_settings()
    parser = argparse.ArgumentParser(description="Retrieval recall@1/@3 and MRR over the eval set.")
    parser.add_argument("--store", default=settings.index_store_uri)
    parser.add_argument("--version", default="latest")
    parser.add_argument("--eval", default=str(DEFAULT_EVAL))
    parser.add_argument("--build", action="store_true", help="build and publish a fresh index first (Ray Data)")
    args = parser.parse_args(argv)

    if args.build:
        from pipelines.build_index import build_index

        manifest = build_index(settings.knowledge_dirs, args.store, embed_actors=1)
        print(f"built {manifest['version']}: {manifest['n_chunks']} chunks at {manifest['chunks_per_s']} chunks/s")
    loaded = IndexStore(args.store).load(args.version)
    started = time.perf_counter()
    result = evaluate(IndexSearcher(loaded), get_embedder(), load_eval_set(args.eval))
    print_report(result, loaded.version)
    print(
        f"\n(evaluated in {time.perf_counter() - started:.1f} s; target recall@3 >= 0.9: "
        f"{'met' if result['recall@3'] >= 0.9 else 'NOT met'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
