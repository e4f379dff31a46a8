"""Answer quality over ``tests/data/answer_eval.yaml``: do the answers answer the question?

    python -m bench.eval_answers                    # fresh in-process index of settings.knowledge_dirs
    python -m bench.eval_answers --store DIR --version latest
    python -m bench.eval_answers --backend ollama --ollama-url http://127.0.0.1:11434 --model NAME

Each entry names the document and section that answer its question and the key facts
a correct answer contains (a step, a number, a safety condition). The assistant's
path is run in process, as the Retriever and RagPipeline deployments run it:
retrieval, grounding (``knowledge.grounding``), then the backend, whose answer is
checked for its citations and replaced by the extractive one when they fail.
Printed, per backend:

* fact recall: the share of key facts in the answer (mean over questions, and over facts);
* within two sections: the share of answers that cite at most two sections;
* safety first: of the procedure questions whose document has safety notes, the share
  whose first cited source is those safety notes;
* meta-sentences: answers containing a sentence about the document itself ("This
  document covers…"); target 0;
* section hit: the share of answers that cite the expected section;
* retrieval recall@3 over ``tests/data/rag_eval.yaml`` (``bench.eval_retrieval``), with
  the same index.

Targets for the extractive backend: fact recall >= 0.8, no meta-sentences,
retrieval recall@3 >= 0.945.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from configs.settings import PROJECT_ROOT, get_settings

DEFAULT_SET = PROJECT_ROOT / "tests" / "data" / "answer_eval.yaml"
TARGET_FACT_RECALL = 0.8
TARGET_RECALL_AT_3 = 0.945


def normalise(text: str) -> str:
    """Lowercase, Markdown emphasis and backticks removed, whitespace collapsed: how facts are matched."""
    return " ".join(text.replace("**", "").replace("*", "").replace("`", "").lower().split())


def alternatives(fact) -> list[str]:
    """A fact is a phrase, or a list of phrases any one of which counts."""
    return [fact] if isinstance(fact, str) else list(fact)


def facts_found(answer: str, facts: list) -> list[bool]:
    text = normalise(answer)
    return [any(normalise(a) in text for a in alternatives(f)) for f in facts]


def answer_all(searcher, embedder, items: list[dict], backend, template_path) -> list[dict]:
    """Each question through retrieval, grounding and ``backend``, as the deployments do it."""
    from knowledge.answer import checked, compose
    from knowledge.grounding import retrieve_and_ground
    from knowledge.prompt import build_prompt

    vectors = embedder.embed([item["question"] for item in items])
    rows = []
    for item, vector in zip(items, vectors):
        started = time.perf_counter()
        _, grounding = retrieve_and_ground(searcher, vector, item["question"], vector)
        grounding = grounding.to_dict()
        prompt = build_prompt(template_path, item["question"], grounding)
        if not grounding["passages"]:
            text, degraded = compose(grounding), None  # as the pipeline: nothing to ask a backend about
        else:
            try:
                text, degraded = checked(asyncio.run(backend.generate(prompt, grounding)), grounding)
            except Exception as exc:  # the pipeline answers extractively: so does the benchmark
                text, degraded = compose(grounding), f"{type(exc).__name__}: {exc}"
        rows.append(
            {
                "item": item,
                "text": text,
                "grounding": grounding,
                "degraded": degraded,
                "ms": (time.perf_counter() - started) * 1000,
            }
        )
    return rows


def score(rows: list[dict]) -> dict:
    from knowledge.answer import cited
    from knowledge.chunking import SENTENCE_RE
    from knowledge.sections import is_meta

    recalls, facts, within, safety, meta, hits = [], [], [], [], [], []
    for row in rows:
        item, text, passages = row["item"], row["text"], row["grounding"]["passages"]
        found = facts_found(text, item["facts"])
        row["found"] = found
        recalls.append(sum(found) / len(found))
        facts.extend(found)
        numbers = [n for n in cited(text) if 1 <= n <= len(passages)]
        sections = {passages[n - 1]["section_id"] for n in numbers}
        within.append(len(sections) <= 2)
        if item.get("safety_first"):
            safety.append(bool(numbers) and passages[numbers[0] - 1]["role"] == "safety")
        row["meta"] = [s for line in text.splitlines() for s in SENTENCE_RE.split(line) if is_meta(s)]
        meta.append(bool(row["meta"]))
        row["section_hit"] = any(
            passages[n - 1]["document_id"] == item["document"]
            and passages[n - 1]["heading_path"].split(" > ")[-1] == item["section"]
            for n in numbers
        )
        hits.append(row["section_hit"])
    return {
        "n": len(rows),
        "fact_recall": statistics.fmean(recalls),
        "fact_recall_micro": sum(facts) / len(facts),
        "within_two_sections": statistics.fmean(within),
        "safety_first": statistics.fmean(safety) if safety else None,
        "n_safety": len(safety),
        "meta_answers": sum(meta),
        "section_hit": statistics.fmean(hits),
        "degraded": sum(1 for r in rows if r["degraded"]),
        "p50_ms": statistics.median(r["ms"] for r in rows),
    }


def by_kind(rows: list[dict]) -> dict[str, float]:
    kinds: dict[str, list[float]] = {}
    for row in rows:
        kinds.setdefault(row["item"]["kind"], []).append(sum(row["found"]) / len(row["found"]))
    return {k: statistics.fmean(v) for k, v in sorted(kinds.items())}


def print_report(result: dict, rows: list[dict], backend: str, recall3: float, show_misses: bool) -> None:
    print(f"backend {backend}: {result['n']} questions")
    recall, micro = result["fact_recall"], result["fact_recall_micro"]
    print(f"  fact recall (mean per question)   {recall:.3f}   (over facts {micro:.3f})")
    for kind, value in by_kind(rows).items():
        print(f"    {kind:<12} {value:.3f}")
    print(f"  answers within two sections      {result['within_two_sections']:.3f}")
    if result["safety_first"] is not None:
        print(f"  safety notes first               {result['safety_first']:.3f}   ({result['n_safety']} procedures)")
    print(f"  answers with a meta-sentence     {result['meta_answers']}")
    print(f"  expected section cited           {result['section_hit']:.3f}")
    print(f"  degraded (replaced) answers      {result['degraded']}")
    print(f"  retrieval recall@3 (rag_eval)    {recall3:.3f}")
    print(f"  p50 per question                 {result['p50_ms']:.1f} ms")
    if show_misses:
        for row in rows:
            missing = [f for f, ok in zip(row["item"]["facts"], row["found"]) if not ok]
            if missing or not row["section_hit"]:
                got = [f"{p['document_id']}>{p['heading']}" for p in row["grounding"]["passages"]]
                print(f"  - {row['item']['id']}: missing {missing}; cited {got}")


def main(argv=None) -> int:
    from bench.eval_retrieval import evaluate, load_eval_set
    from knowledge.embedding import get_embedder
    from knowledge.index_store import IndexStore
    from knowledge.llm import make_backend
    from knowledge.retrieval import IndexSearcher
    from pipelines.build_index import build_index

    settings = get_settings()
    parser = argparse.ArgumentParser(description="Answer quality: fact recall, sections, safety first.")
    parser.add_argument("--store", help="an index store (default: a fresh in-process build in a temporary folder)")
    parser.add_argument("--version", default="latest")
    parser.add_argument("--set", default=str(DEFAULT_SET))
    parser.add_argument("--backend", default="extractive", choices=("extractive", "ollama", "vllm"))
    parser.add_argument("--ollama-url", default=settings.ollama_url)
    parser.add_argument("--model", default=settings.llm_model)
    parser.add_argument("--vllm-model-path", default=settings.vllm_model_path)
    parser.add_argument("--quiet", action="store_true", help="no list of answers that missed facts")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        store = args.store
        if store is None:
            store = str(Path(tmp) / "index")
            manifest = build_index(settings.knowledge_dirs, store, in_process=True)
            print(f"built {manifest['version']}: {manifest['n_chunks']} chunks, {manifest['n_blocks']} blocks")
        searcher = IndexSearcher(IndexStore(store).load(args.version))
        embedder = get_embedder()
        items = yaml.safe_load(Path(args.set).read_text(encoding="utf-8"))
        backend = make_backend(
            args.backend,
            model=args.model,
            ollama_url=args.ollama_url,
            vllm_model_path=args.vllm_model_path,
            timeout_s=settings.llm_timeout_s,
        )
        rows = answer_all(searcher, embedder, items, backend, settings.prompt_template_path)
        result = score(rows)
        recall3 = evaluate(searcher, embedder, load_eval_set())["recall@3"]
    print_report(result, rows, args.backend, recall3, not args.quiet)
    met = result["fact_recall"] >= TARGET_FACT_RECALL and result["meta_answers"] == 0 and recall3 >= TARGET_RECALL_AT_3
    print(
        f"\ntargets (fact recall >= {TARGET_FACT_RECALL}, no meta-sentences, recall@3 >= {TARGET_RECALL_AT_3}): "
        f"{'met' if met else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
