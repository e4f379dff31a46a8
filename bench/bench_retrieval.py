"""Assistant latency: in-process retrieval (embed + search) and end-to-end RagPipeline via Serve.

    python -m bench.bench_retrieval [--store DIR] [--version latest] [--rounds 5] [--e2e-queries 60]

Retrieval: every eval question, ``--rounds`` times, one query at a time (p50/p99), with
``--torch-threads`` intra-op threads (default 1: what the Embedder replica gets, since Ray
sets OMP_NUM_THREADS to its num_cpus; two threads on a busy 2-core machine give a p99 of
hundreds of ms from thread stalls, not from retrieval).
End to end: a local Ray + Serve running the assistant with the extractive backend,
queries sent one at a time through a DeploymentHandle (p50/p90). Prints figures only.

The index must be format 3 (section blocks embedded at build time): choosing the answering
sections then costs dot products only. Build one with ``python -m bench.eval_retrieval
--build --store DIR`` (which also prints the build's chunks/s).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from bench.eval_retrieval import DEFAULT_EVAL, load_eval_set
from configs.settings import Settings, get_settings


def percentile(values_ms: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values_ms), q))


def bench_retrieval(store_uri: str, version: str, questions: list[str], rounds: int) -> list[float]:
    from knowledge.embedding import get_embedder
    from knowledge.index_store import IndexStore
    from knowledge.retrieval import IndexSearcher

    embedder, searcher = get_embedder(), IndexSearcher(IndexStore(store_uri).load(version))
    for q in questions[:5]:  # warm-up: first calls pay for lazy initialisation
        searcher.search(embedder.embed([q])[0], k=5)
    timings = []
    for _ in range(rounds):
        for q in questions:
            started = time.perf_counter()
            searcher.search(embedder.embed([q])[0], k=5)
            timings.append((time.perf_counter() - started) * 1000)
    return timings


def bench_end_to_end(store_uri: str, version: str, questions: list[str], n: int) -> tuple[list[float], dict]:
    import ray
    from ray import serve

    from deployments.builder import assistant_from_serve_config

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    settings = Settings(index_store_uri=store_uri, llm_backend="extractive")
    handle = serve.run(
        assistant_from_serve_config(settings, index_version=version), name="rag-bench", route_prefix=None
    )
    try:
        for q in questions[:3]:
            handle.query.remote(q, 5).result()
        timings, last = [], {}
        for i in range(n):
            started = time.perf_counter()
            last = handle.query.remote(questions[i % len(questions)], 5).result()
            timings.append((time.perf_counter() - started) * 1000)
            if last["metadata"]["degraded"]:
                raise RuntimeError(f"degraded answer, not a valid timing: {last['metadata']}")
        return timings, last
    finally:
        serve.delete("rag-bench")


def main(argv=None) -> int:
    settings = get_settings()
    parser = argparse.ArgumentParser(description="Retrieval and end-to-end assistant latency.")
    parser.add_argument("--store", default=settings.index_store_uri)
    parser.add_argument("--version", default="latest")
    parser.add_argument("--eval", default=str(DEFAULT_EVAL))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--e2e-queries", type=int, default=60)
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="intra-op threads for the in-process embedding (default: %(default)s, as in Serve)",
    )
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.torch_threads)

    from knowledge.index_store import IndexStore

    questions = [item["question"] for item in load_eval_set(args.eval)]
    manifest = IndexStore(args.store).manifest(args.version)
    print(
        f"index {manifest['version']} (format {manifest.get('format')}): {manifest['n_chunks']} chunks, "
        f"{manifest.get('n_blocks', '?')} section blocks embedded at build time"
    )
    retrieval = bench_retrieval(args.store, args.version, questions, args.rounds)
    print(
        f"retrieval (embed + search, in-process, {args.torch_threads} torch thread(s)): n={len(retrieval)}  "
        f"p50={percentile(retrieval, 50):.1f} ms  "
        f"p99={percentile(retrieval, 99):.1f} ms  mean={statistics.mean(retrieval):.1f} ms"
    )
    if not args.skip_e2e:
        e2e, last = bench_end_to_end(args.store, args.version, questions, args.e2e_queries)
        print(
            f"end to end (RagPipeline via handle, extractive): n={len(e2e)}  p50={percentile(e2e, 50):.1f} ms  "
            f"p90={percentile(e2e, 90):.1f} ms  (last: retrieval_ms={last['metadata']['retrieval_ms']}, "
            f"processing_time_ms={last['metadata']['processing_time_ms']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
