"""The maintenance assistant as Ray Serve deployments.

    RagPipeline ──> Embedder   (GreedyBatcher: concurrent queries share one forward pass)
               ──> Retriever  (FAISS index; user_config {index_version} hot-swaps versions)
               ──> LLM        (extractive | ollama | vllm)

Only the ingress (``api/routers/rag.py``) talks HTTP; these are reached by handles.
The question is embedded once; the index (format 2) brings each hit's answer
sentences with their vectors, so an extractive answer costs only dot products.
Any failure of the generative backend becomes an extractive answer with
``metadata.degraded = true`` and the reason; clients never see the exception.
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
from knowledge.answer import NO_ANSWER, ExtractiveAnswerer
from knowledge.embedding import get_embedder
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

    def embed_many(self, texts: list[str]) -> np.ndarray:
        """Many texts in one call (passages without stored sentence vectors); sync, so Serve runs it
        in its thread pool."""
        return self._model.embed(list(texts))


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
        return IndexSearcher(loaded)

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

    async def search(
        self,
        query_vec,
        k: int = 5,
        components: list[str] | None = None,
        tags: list[str] | None = None,
        prefer_components: list[str] | None = None,
    ) -> dict:
        if self._searcher is None:
            await self._follow_latest()
        elif self._wanted == "latest" and time.monotonic() - self._last_check >= self._refresh_interval_s:
            asyncio.get_running_loop().create_task(self._follow_latest())  # never delays this query
        searcher = self._searcher  # one reference for the whole query, even if a swap happens now
        if searcher is None:
            raise IndexNotFound(
                f"no index has been published under {self._store.uri}; build one with `python -m pipelines.build_index`"
            )
        hits = searcher.search(query_vec, k=k, components=components, tags=tags, prefer_components=prefer_components)
        return {"hits": [h.to_dict() for h in hits], "index_version": searcher.version}

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
        embed_model_path: str | None = None,
    ):
        from knowledge.llm import make_backend

        self.kind = backend
        self._template = str(prompt_template_path)
        self._init_error: str | None = None
        self._backend = None
        try:
            # Index passages bring their sentence vectors: the model loads only if other passages come.
            embed = (lambda texts: get_embedder(embed_model_path).embed(texts)) if self.kind == "extractive" else None
            self._backend = make_backend(
                self.kind,
                embed=embed,
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

    async def generate(
        self,
        question: str,
        passages: list[dict],
        diagnosis: dict | None = None,
        question_vector: np.ndarray | None = None,
    ) -> dict:
        backend = self._ready()
        prompt = build_prompt(self._template, question, passages, diagnosis)
        text = await backend.generate(prompt, passages, question, question_vector)
        return {"text": text, "model": backend.model, "tokens_used": self._tokens(prompt.as_text(), text)}

    async def stream(
        self,
        question: str,
        passages: list[dict],
        diagnosis: dict | None = None,
        question_vector: np.ndarray | None = None,
    ) -> AsyncIterator[str]:
        backend = self._ready()
        prompt = build_prompt(self._template, question, passages, diagnosis)
        async for piece in backend.stream(prompt, passages, question, question_vector):
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
        self._answerer = ExtractiveAnswerer()

    async def _retrieve(self, query: str, max_results: int, diagnosis: dict | None) -> dict:
        """Hits, plus ``question_vector``: the question alone, embedded, for the extractive answer."""
        started = time.perf_counter()
        extra_words, prefer = diagnosis_bias(diagnosis)
        retrieval_query = f"{query} {extra_words}".strip()
        question_vector = None
        try:
            if retrieval_query == query.strip():
                vector = question_vector = await self._embedder.embed.remote(retrieval_query)
            else:  # concurrent calls: the Embedder's batching runs both in one forward pass
                vector, question_vector = await asyncio.gather(
                    self._embedder.embed.remote(retrieval_query), self._embedder.embed.remote(query)
                )
            result = await self._retriever.search.remote(vector, k=max_results, prefer_components=prefer or None)
            error = None
        except Exception as exc:  # no index yet, or retriever down: answer without sources, say why
            result, error = {"hits": [], "index_version": None}, describe(exc)
        result["retrieval_ms"] = round((time.perf_counter() - started) * 1000, 2)
        result["error"] = error
        result["question_vector"] = question_vector
        return result

    async def _extractive(self, query: str, hits: list[dict], question_vector: np.ndarray | None) -> str:
        try:
            answer = await self._answerer.aanswer(
                query, hits, lambda texts: self._embedder.embed_many.remote(texts), question_vector=question_vector
            )
            return answer.text
        except Exception as exc:
            logger.error("extractive fallback failed: %s", describe(exc))
            return "The assistant could not compose an answer; the sources below are the most relevant documents."

    async def query(
        self, query: str, max_results: int = 5, system_id: str | None = None, diagnosis: dict | None = None
    ) -> dict:
        started = time.perf_counter()
        retrieved = await self._retrieve(query, max_results, diagnosis)
        hits = retrieved["hits"]
        degraded_reason = retrieved["error"]
        model, tokens = None, 0
        if not hits:
            text = NO_ANSWER
        else:
            try:
                result = await asyncio.wait_for(
                    self._llm.generate.remote(query, hits, diagnosis, retrieved["question_vector"]), self._timeout_s
                )
                text, model, tokens = result["text"], result["model"], result["tokens_used"]
            except Exception as exc:
                degraded_reason = describe(exc)
                logger.warning("LLM failed, answering extractively: %s", degraded_reason)
                text, model = await self._extractive(query, hits, retrieved["question_vector"]), "extractive"
        return {
            "response": text,
            "sources": _sources(hits),
            "metadata": _metadata(model or "none", started, retrieved, tokens, degraded_reason, system_id),
        }

    async def stream(
        self, query: str, max_results: int = 5, system_id: str | None = None, diagnosis: dict | None = None
    ) -> AsyncIterator[dict]:
        """Yields {"event": "token", "text": ...} events, then one {"event": "done", ...} with sources and metadata."""
        started = time.perf_counter()
        retrieved = await self._retrieve(query, max_results, diagnosis)
        hits = retrieved["hits"]
        degraded_reason = retrieved["error"]
        model, pieces = None, 0
        if not hits:
            yield {"event": "token", "text": NO_ANSWER}
        else:
            generator = self._llm_stream.stream.remote(query, hits, diagnosis, retrieved["question_vector"])
            try:
                while True:
                    try:
                        piece = await asyncio.wait_for(generator.__anext__(), self._timeout_s)
                    except StopAsyncIteration:
                        break
                    pieces += 1
                    yield {"event": "token", "text": piece}
                model = "streamed"
            except Exception as exc:
                generator.cancel()
                degraded_reason = describe(exc)
                logger.warning("LLM stream failed after %d pieces, answering extractively: %s", pieces, degraded_reason)
                text = await self._extractive(query, hits, retrieved["question_vector"])
                yield {"event": "token", "text": ("\n\n" if pieces else "") + text}
                model = "extractive"
            if model == "streamed":
                model = (await self._llm.info.remote())["model"]
        yield {
            "event": "done",
            "sources": _sources(hits),
            "metadata": _metadata(model or "none", started, retrieved, pieces, degraded_reason, system_id),
        }

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


def _sources(hits: list[dict]) -> list[dict]:
    # Order matters: citation [n] in the answer is sources[n-1].
    return [
        {
            "document_id": h["document_id"],
            "title": h["title"],
            "heading_path": h["heading_path"],
            "snippet": h["snippet"],
            "score": round(float(h["score"]), 4),
        }
        for h in hits
    ]


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
