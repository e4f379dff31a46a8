"""Answer-generation backends behind one interface.

    await backend.generate(prompt, grounding) -> str
    async for piece in backend.stream(prompt, grounding): ...

``grounding`` is ``knowledge.grounding.Grounding.to_dict()``: the chosen sections
(``passages``, numbered [n] as the sources) and the diagnosis lead; ``prompt`` is
built from it (``knowledge.prompt``).

* ``ExtractiveBackend``: the passages themselves, whole, under their headings and cited
  (``knowledge.answer.compose``); no model and no server needed.
* ``OllamaBackend``: an Ollama server's ``/api/chat`` (NDJSON streaming).
* ``VLLMBackend``: an in-process vLLM engine on a GPU (vllm imported lazily).

Backends raise ``BackendError`` (or let timeouts/transport errors through); the
RAG pipeline turns any failure, and any answer whose citations do not check out,
into the extractive answer marked ``degraded``.
"""

from __future__ import annotations

import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

from knowledge.answer import answer_pieces, compose
from knowledge.prompt import Prompt


class BackendError(RuntimeError):
    """The generative backend failed; the message says why (shown as the degraded reason)."""


class LLMBackend(ABC):
    name: str = "backend"
    model: str = ""

    @abstractmethod
    async def generate(self, prompt: Prompt, grounding: dict) -> str: ...

    @abstractmethod
    def stream(self, prompt: Prompt, grounding: dict) -> AsyncIterator[str]: ...

    async def aclose(self) -> None:
        return None


class ExtractiveBackend(LLMBackend):
    name = "extractive"
    model = "extractive"

    async def generate(self, prompt: Prompt, grounding: dict) -> str:
        return compose(grounding)

    async def stream(self, prompt: Prompt, grounding: dict) -> AsyncIterator[str]:
        # One event per passage: the text is already complete, word-level events would only add overhead.
        for i, piece in enumerate(answer_pieces(grounding)):
            yield ("\n\n" if i else "") + piece


class OllamaBackend(LLMBackend):
    name = "ollama"

    def __init__(self, url: str, model: str, timeout_s: float = 30.0, options: dict | None = None):
        import httpx

        self.url = url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self.options = options or {"temperature": 0.1}
        self._client = httpx.AsyncClient(
            base_url=self.url, timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s))
        )

    def _body(self, prompt: Prompt, stream: bool) -> dict:
        return {
            "model": self.model,
            "messages": [{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.user}],
            "stream": stream,
            "options": self.options,
        }

    async def generate(self, prompt: Prompt, grounding: dict) -> str:
        import httpx

        try:
            resp = await self._client.post("/api/chat", json=self._body(prompt, stream=False))
        except httpx.HTTPError as exc:
            raise BackendError(f"Ollama at {self.url} unreachable: {type(exc).__name__}: {exc}") from exc
        if resp.status_code != 200:
            raise BackendError(f"Ollama at {self.url} answered HTTP {resp.status_code}: {resp.text[:200]}")
        data = resp.json()
        if "error" in data:
            raise BackendError(f"Ollama error: {data['error']}")
        text = (data.get("message") or {}).get("content", "")
        if not text.strip():
            raise BackendError("Ollama returned an empty answer")
        return text

    async def stream(self, prompt: Prompt, grounding: dict) -> AsyncIterator[str]:
        import httpx

        try:
            async with self._client.stream("POST", "/api/chat", json=self._body(prompt, stream=True)) as resp:
                if resp.status_code != 200:
                    body = (await resp.aread()).decode(errors="replace")
                    raise BackendError(f"Ollama at {self.url} answered HTTP {resp.status_code}: {body[:200]}")
                async for line in resp.aiter_lines():
                    if not line.strip():
                        continue
                    try:
                        event = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise BackendError(f"Ollama sent a line that is not JSON: {line[:100]!r}") from exc
                    if "error" in event:
                        raise BackendError(f"Ollama error: {event['error']}")
                    piece = (event.get("message") or {}).get("content", "")
                    if piece:
                        yield piece
                    if event.get("done"):
                        return
                raise BackendError("Ollama stream ended without a done event")
        except httpx.HTTPError as exc:
            raise BackendError(f"Ollama at {self.url} unreachable: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        await self._client.aclose()


class VLLMBackend(LLMBackend):
    name = "vllm"

    def __init__(self, model_path: str, max_tokens: int = 512, temperature: float = 0.1, **engine_kwargs):
        try:
            from vllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams
        except ImportError as exc:
            raise BackendError(
                "the vllm backend needs the vllm package (and a GPU); install vllm or set "
                "HDX_LLM_BACKEND=extractive or ollama"
            ) from exc
        if not model_path:
            raise BackendError("the vllm backend needs a model: set HDX_VLLM_MODEL_PATH to a local model folder")
        self.model = model_path
        self._sampling = SamplingParams(max_tokens=max_tokens, temperature=temperature)
        self._engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(model=model_path, **engine_kwargs))

    async def _text_prompt(self, prompt: Prompt) -> str:
        tokenizer = await self._engine.get_tokenizer()
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(
                [{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.user}],
                tokenize=False,
                add_generation_prompt=True,
            )
        return prompt.as_text() + "\n\nAnswer:"

    async def generate(self, prompt: Prompt, grounding: dict) -> str:
        text = ""
        async for piece in self.stream(prompt, grounding):
            text += piece
        return text

    async def stream(self, prompt: Prompt, grounding: dict) -> AsyncIterator[str]:
        sent = 0
        async for output in self._engine.generate(await self._text_prompt(prompt), self._sampling, uuid.uuid4().hex):
            text = output.outputs[0].text  # cumulative: emit only what is new
            if len(text) > sent:
                yield text[sent:]
                sent = len(text)


def make_backend(
    kind: str,
    *,
    model: str = "",
    ollama_url: str = "",
    vllm_model_path: str = "",
    timeout_s: float = 30.0,
) -> LLMBackend:
    if kind == "extractive":
        return ExtractiveBackend()
    if kind == "ollama":
        return OllamaBackend(ollama_url, model, timeout_s)
    if kind == "vllm":
        return VLLMBackend(vllm_model_path)
    raise ValueError(f"unknown LLM backend {kind!r}; expected extractive, ollama or vllm")
