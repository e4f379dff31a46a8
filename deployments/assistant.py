"""The maintenance assistant as Ray Serve deployments.

    RagPipeline ──> Embedder   (GreedyBatcher: concurrent queries share one forward pass)
               ──> Retriever  (FAISS index; retrieval, then the sections that answer: knowledge.grounding;
                               user_config {index_version} hot-swaps versions)
               ──> LLM        (extractive | ollama | vllm), given those sections

Only the ingress (``api/routers/rag.py``) talks HTTP; these are reached by handles.
The question is embedded once; the index (format 3) brings every section's blocks
with their vectors, so choosing the answering sections costs only dot products.
Every backend answers from the same chosen sections, and its answer is checked:
an answer that cites a source it was not given, or none, is replaced by the
extractive answer with ``metadata.degraded = true`` and the reason, as is any
failure of the generative backend; clients never see the exception.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from configs.settings import Settings
from diagnosis.batching import GreedyBatcher
from diagnosis.failures import describe
from knowledge.answer import checked, citation_problem, compose
from knowledge.embedding import get_embedder
from knowledge.grounding import retrieve_and_ground
from knowledge.index_store import IndexFormatError, IndexNotFound, IndexStore
from knowledge.prompt import build_prompt
from knowledge.retrieval import IndexSearcher, diagnosis_bias

logger = logging.getLogger("ray.serve")
EMBED_MAX_BATCH = 16


@serve.deployment
class Embedder:
    def __init__(self, model_path: str | None = None):
        self._model = get_embedder(model_path)
        self._batcher = GreedyBatcher(self._embed_batch, EMBED_MAX_BATCH)

    def reconfigure(self, user_config: dict | None) -> None:
        """``max_batch_size`` of ``embed``, from ``user_config``."""
        self._batcher.max_batch_size = int((user_config or {}).get("max_batch_size", EMBED_MAX_BATCH))

    async def embed(self, query: str) -> np.ndarray:
        """One query's vector; queries that arrive during a forward pass share the next one."""
        return await self._batcher.submit(query)

    async def _embed_batch(self, queries: list[str]) -> list[np.ndarray]:
        # The forward pass runs in a thread so the replica keeps accepting (and batching) requests.
        vectors = await asyncio.to_thread(self._model.embed, list(queries))
        return list(vectors)


@serve.deployment(user_config={"index_version": "latest"})
class Retriever:
    def __init__(self, store_uri: str, refresh_interval_s: float = 30.0):
        self._store = IndexStore(store_uri)
        self._searcher: IndexSearcher | None = None
        self._wanted = "latest"
        self._refresh_interval_s = refresh_interval_s
        self._last_check = 0.0
        self._reload_lock = asyncio.Lock()

    async def reconfigure(self, config: dict | None) -> None:
        wanted = str((config or {}).get("index_version") or "latest")
        async with self._reload_lock:
            try:
                # Load the whole new version first; queries keep using the old one meanwhile.
                searcher = await asyncio.to_thread(self._load, wanted)
            except IndexNotFound as exc:  # IndexFormatError included: an outdated index is no usable index
                if wanted != "latest":
                    raise  # a pinned version that does not exist (or is outdated) is a configuration error
                logger.warning(
                    "no usable index under %s (%s); the assistant answers without sources until one is built",
                    self._store.uri,
                    exc,
                )
                searcher = None
            self._wanted = wanted
            if searcher is not None:
                self._searcher = searcher  # a single reference swap: atomic for concurrent queries
            self._last_check = time.monotonic()

    def _load(self, version: str) -> IndexSearcher:
        loaded = self._store.load(version)
        logger.info("retriever loaded index %s (%d chunks)", loaded.version, loaded.index.ntotal)
        searcher = IndexSearcher(loaded)
        searcher.prepare()  # here, off the event loop, not in the first query
        return searcher

    async def _follow_latest(self) -> None:
        """With ``latest`` configured, pick up newly published versions (checked every refresh interval)."""
        if self._wanted != "latest" or self._reload_lock.locked():
            return
        if self._searcher is not None and time.monotonic() - self._last_check < self._refresh_interval_s:
            return
        async with self._reload_lock:
            self._last_check = time.monotonic()
            latest = await asyncio.to_thread(self._store.latest_version)
            if latest and (self._searcher is None or latest != self._searcher.version):
                try:
                    self._searcher = await asyncio.to_thread(self._load, latest)
                except IndexFormatError as exc:
                    if self._searcher is None:
                        raise  # the query reports why there are no sources
                    logger.error("keeping index %s: %s", self._searcher.version, exc)

    async def _current(self) -> IndexSearcher:
        if self._searcher is None:
            await self._follow_latest()
        elif self._wanted == "latest" and time.monotonic() - self._last_check >= self._refresh_interval_s:
            asyncio.get_running_loop().create_task(self._follow_latest())  # never delays this query
        searcher = self._searcher  # one reference for the whole query, even if a swap happens now
        if searcher is None:
            raise IndexNotFound(
                f"no index has been published under {self._store.uri}; build one with `python -m pipelines.build_index`"
            )
        return searcher

    async def ground(
        self,
        query_vec,
        question: str,
        question_vector,
        k: int = 5,
        prefer_components: list[str] | None = None,
        diagnosis: dict | None = None,
    ) -> dict:
        """The retrieved documents and, from their sections, the passages that answer the question
        (``knowledge.grounding``), both from the same index version."""
        searcher = await self._current()
        hits, grounding = retrieve_and_ground(
            searcher, query_vec, question, question_vector, k, prefer_components, diagnosis
        )
        return {"hits": hits, "grounding": grounding.to_dict(), "index_version": searcher.version}

    async def document(self, document_id: str) -> dict | None:
        """A document's sections with their anchors (what a source's link opens); None if unknown."""
        searcher = await self._current()
        sections = searcher.sections(document_id)
        if not sections:
            return None
        first = sections[0][0]
        return {
            "document_id": document_id,
            "title": first.title,
            "components": list(first.components),
            "tags": list(first.tags),
            "index_version": searcher.version,
            "sections": [
                {
                    "heading_path": s.heading_path,
                    "heading": s.heading,
                    "anchor": s.anchor,
                    "kind": s.kind,
                    "text": s.text,
                }
                for s, _ in sections
            ],
        }

    def info(self) -> dict:
        searcher = self._searcher
        return {
            "configured": self._wanted,
            "index_version": searcher.version if searcher else None,
            "n_chunks": searcher.size if searcher else 0,
        }


@serve.deployment  # replaced in place on a code rollout: serve_config.yaml says why
class LLM:
    def __init__(
        self,
        backend: str,
        model: str,
        ollama_url: str,
        vllm_model_path: str,
        timeout_s: float,
        prompt_template_path: str,
    ):
        from knowledge.llm import make_backend

        self.kind = backend
        self._template = str(prompt_template_path)
        self._init_error: str | None = None
        self._backend = None
        try:
            self._backend = make_backend(
                self.kind,
                model=model,
                ollama_url=ollama_url,
                vllm_model_path=vllm_model_path,
                timeout_s=timeout_s,
            )
        except Exception as exc:  # keep serving: every answer degrades to extractive with this reason
            self._init_error = f"{self.kind} backend unavailable: {exc}"
            logger.error(self._init_error)
        self.model = self._backend.model if self._backend else f"{self.kind} (unavailable)"
        if self.kind != "extractive":
            from knowledge.chunking import load_tokenizer

            load_tokenizer()  # for tokens_used; loading it on the first request would eat its timeout

    def _ready(self):
        from knowledge.llm import BackendError

        if self._backend is None:
            raise BackendError(self._init_error or "backend not initialised")
        return self._backend

    async def generate(self, question: str, grounding: dict) -> dict:
        """``grounding``: ``knowledge.grounding.Grounding.to_dict()``, the sections to answer from."""
        backend = self._ready()
        prompt = build_prompt(self._template, question, grounding)
        text = await backend.generate(prompt, grounding)
        return {"text": text, "model": backend.model, "tokens_used": self._tokens(prompt.as_text(), text)}

    async def stream(self, question: str, grounding: dict) -> AsyncIterator[str]:
        backend = self._ready()
        prompt = build_prompt(self._template, question, grounding)
        async for piece in backend.stream(prompt, grounding):
            yield piece

    def info(self) -> dict:
        return {"backend": self.kind, "model": self.model, "error": self._init_error}

    def _tokens(self, prompt: str, completion: str) -> int:
        if self.kind == "extractive":
            return 0  # no generative model ran
        from knowledge.chunking import load_tokenizer

        # Estimated with the embedding tokenizer: backends' own counts are not uniformly available.
        tok = load_tokenizer()
        return len(tok(prompt, add_special_tokens=False)["input_ids"]) + len(
            tok(completion, add_special_tokens=False)["input_ids"]
        )


@serve.deployment
class RagPipeline:
    def __init__(
        self, embedder: DeploymentHandle, retriever: DeploymentHandle, llm: DeploymentHandle, llm_timeout_s: float
    ):
        self._embedder = embedder
        self._retriever = retriever
        self._llm = llm
        self._llm_stream = llm.options(stream=True)
        self._timeout_s = llm_timeout_s

    async def _retrieve(self, query: str, max_results: int, diagnosis: dict | None) -> dict:
        """Hits and the grounding (the passages that answer), from one index version."""
        started = time.perf_counter()
        extra_words, prefer = diagnosis_bias(diagnosis)
        retrieval_query = f"{query} {extra_words}".strip()
        try:
            if retrieval_query == query.strip():
                vector = question_vector = await self._embedder.embed.remote(retrieval_query)
            else:  # concurrent calls: the Embedder's batching runs both in one forward pass
                vector, question_vector = await asyncio.gather(
                    self._embedder.embed.remote(retrieval_query), self._embedder.embed.remote(query)
                )
            result = await self._retriever.ground.remote(
                vector, query, question_vector, k=max_results, prefer_components=prefer or None, diagnosis=diagnosis
            )
            error = None
        except Exception as exc:  # no index yet, or retriever down: answer without sources, say why
            result, error = {"hits": [], "grounding": {"passages": []}, "index_version": None}, describe(exc)
        result["retrieval_ms"] = round((time.perf_counter() - started) * 1000, 2)
        result["error"] = error
        return result

    async def query(
        self, query: str, max_results: int = 5, system_id: str | None = None, diagnosis: dict | None = None
    ) -> dict:
        started = time.perf_counter()
        retrieved = await self._retrieve(query, max_results, diagnosis)
        grounding = retrieved["grounding"]
        passages = grounding["passages"]
        degraded_reason = retrieved["error"]
        model, tokens = None, 0
        if not passages:
            text = compose(grounding)  # the lead, if any, and NO_ANSWER
        else:
            try:
                result = await asyncio.wait_for(self._llm.generate.remote(query, grounding), self._timeout_s)
                text, problem = checked(result["text"], grounding)
                model, tokens = result["model"], result["tokens_used"]
                if problem:
                    degraded_reason = f"{model}: {problem}; answered extractively instead"
                    logger.warning("LLM answer replaced: %s", degraded_reason)
                    model = "extractive"
            except Exception as exc:
                degraded_reason = describe(exc)
                logger.warning("LLM failed, answering extractively: %s", degraded_reason)
                text, model = compose(grounding), "extractive"
        return {
            "response": text,
            "sources": _sources(passages, retrieved["hits"]),
            "metadata": _metadata(model or "none", started, retrieved, tokens, degraded_reason, system_id),
        }

    async def stream(
        self, query: str, max_results: int = 5, system_id: str | None = None, diagnosis: dict | None = None
    ) -> AsyncIterator[dict]:
        """Yields {"event": "token", "text": ...} events, then one {"event": "done", ...} with sources and metadata.

        A generative answer is checked as it streams: once it cites a source it was not
        given (or, at its end, if it cited none), the stream stops and one
        {"event": "replace", "text": ...} carries the extractive answer that replaces
        everything sent so far; the done event then says ``degraded`` and why.
        """
        started = time.perf_counter()
        retrieved = await self._retrieve(query, max_results, diagnosis)
        grounding = retrieved["grounding"]
        passages = grounding["passages"]
        degraded_reason = retrieved["error"]
        model, pieces = None, 0
        if not passages:
            yield {"event": "token", "text": compose(grounding)}
        else:
            generator = self._llm_stream.stream.remote(query, grounding)
            text, problem = "", None
            try:
                while problem is None:
                    try:
                        piece = await asyncio.wait_for(generator.__anext__(), self._timeout_s)
                    except StopAsyncIteration:
                        problem = citation_problem(text, len(passages))
                        break
                    pieces += 1
                    text += piece
                    problem = citation_problem(text, len(passages), final=False)
                    if problem is None:
                        yield {"event": "token", "text": piece}
                if problem is not None:
                    generator.cancel()
                    model = (await self._llm.info.remote())["model"]
                    degraded_reason = f"{model}: {problem}; answered extractively instead"
                    logger.warning("LLM stream replaced after %d pieces: %s", pieces, degraded_reason)
                    yield {"event": "replace", "text": compose(grounding)}
                    model = "extractive"
                else:
                    model = (await self._llm.info.remote())["model"]
            except Exception as exc:
                generator.cancel()
                degraded_reason = describe(exc)
                logger.warning("LLM stream failed after %d pieces, answering extractively: %s", pieces, degraded_reason)
                yield {"event": "replace", "text": compose(grounding)}
                model = "extractive"
        yield {
            "event": "done",
            "sources": _sources(passages, retrieved["hits"]),
            "metadata": _metadata(model or "none", started, retrieved, pieces, degraded_reason, system_id),
        }

    async def document(self, document_id: str) -> dict | None:
        return await self._retriever.document.remote(document_id)

    async def info(self) -> dict:
        """For ``/ready``: the index version served, and the generation backend and model."""
        retriever, llm = await asyncio.gather(self._retriever.info.remote(), self._llm.info.remote())
        info = {
            "index_version": retriever["index_version"],
            "index_configured": retriever["configured"],
            "n_chunks": retriever["n_chunks"],
            "backend": llm["backend"],
            "model": llm["model"],
        }
        if llm.get("error"):
            info["backend_error"] = llm["error"]
        return info


DOCUMENT_URL = "/api/v1/rag/documents/{document_id}"


def _sources(passages: list[dict], hits: list[dict]) -> list[dict]:
    """The passages answered from (cited [n] = sources[n-1]), then the other documents retrieved."""

    def source(d: dict, text: str, cited: bool) -> dict:
        anchor = d.get("anchor") or ""
        url = DOCUMENT_URL.format(document_id=d["document_id"]) + (f"#{anchor}" if anchor else "")
        return {
            "document_id": d["document_id"],
            "title": d["title"],
            "heading_path": d["heading_path"],
            "anchor": anchor,
            "url": url,
            "snippet": text,
            "score": round(float(d["score"]), 4),
            "cited": cited,
        }

    used = {p["document_id"] for p in passages}
    out = [source(p, p["text"], True) for p in passages]
    for hit in hits:
        if hit["document_id"] not in used:
            anchor = (hit.get("section_id") or "").partition("#")[2]
            out.append(source({**hit, "anchor": anchor}, hit["snippet"], False))
    return out


def _metadata(
    model: str, started: float, retrieved: dict, tokens: int, degraded_reason: str | None, system_id: str | None
) -> dict[str, Any]:
    meta = {
        "model": model,
        "processing_time_ms": round((time.perf_counter() - started) * 1000, 2),
        "retrieval_ms": retrieved["retrieval_ms"],
        "tokens_used": tokens,
        "index_version": retrieved["index_version"],
        "degraded": degraded_reason is not None,
    }
    if degraded_reason is not None:
        meta["degraded_reason"] = degraded_reason
    if system_id is not None:
        meta["system_id"] = system_id
    return meta


def build_assistant(settings: Settings, index_version: str = "latest", options=None):
    """The bound RagPipeline application, ready for ``serve.run`` or the main app builder.

    ``index_version`` pins the Retriever to one published version; "latest" follows
    new builds. Changing it on a running app only reconfigures the Retriever.
    ``options(deployment, name)`` applies deployment options (``deployments.builder``
    passes serve_config.yaml's); resources, a GPU for vLLM included, come from there.
    """
    options = options or (lambda deployment, name: deployment.options(name=name))
    s = settings
    retriever = options(Retriever.options(user_config={"index_version": index_version}), "Retriever")
    return options(RagPipeline, "RagPipeline").bind(
        options(Embedder, "Embedder").bind(),
        retriever.bind(store_uri=s.index_store_uri),
        options(LLM, "LLM").bind(
            backend=s.llm_backend,
            model=s.llm_model,
            ollama_url=s.ollama_url,
            vllm_model_path=s.vllm_model_path,
            timeout_s=s.llm_timeout_s,
            prompt_template_path=str(s.prompt_template_path),
        ),
        llm_timeout_s=s.llm_timeout_s,
    )
