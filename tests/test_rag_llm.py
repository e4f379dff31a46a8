"""Generation backends: Ollama (against a protocol stand-in), extractive, and vLLM (GPU only)."""

from __future__ import annotations

import importlib.util

import pytest

from configs.settings import Settings
from knowledge.llm import BackendError, ExtractiveBackend, OllamaBackend, VLLMBackend
from knowledge.prompt import build_prompt
from tests.fixtures.ollama_standin import OllamaProtocolStandIn

PASSAGES = [
    {
        "document_id": "valve-lag",
        "title": "Valve lag",
        "heading_path": "Valve lag > Repair",
        "heading": "Repair",
        "role": "procedure",
        "text": "1. Measure the coil voltage at the connector while switching.\n2. Clean or replace the spool.",
    }
]
QUESTION = "How do I fix a lagging valve?"
GROUNDING = {
    "intent": "procedure",
    "passages": PASSAGES,
    "lead": "This explains the latest diagnosis: the valve at level 80, critical, confidence 0.71.",
    "focus": {"component": "valve", "level": 80, "severity": "critical", "confidence": 0.71},
}
NO_DIAGNOSIS = {**GROUNDING, "lead": None, "focus": None}


@pytest.fixture(scope="module")
def standin():
    server = OllamaProtocolStandIn().start()
    yield server
    server.stop()


@pytest.fixture
def prompt(standin):
    standin.reset()
    return build_prompt(Settings().prompt_template_path, QUESTION, GROUNDING)


def test_prompt_has_question_diagnosis_whole_numbered_sections_and_rules(prompt):
    assert "maintenance assistant" in prompt.system
    assert f"Question: {QUESTION}" in prompt.user
    assert GROUNDING["lead"] in prompt.user and "component: valve" in prompt.user and "level: 80" in prompt.user
    assert f"[1] Valve lag — Valve lag > Repair (procedure)\n{PASSAGES[0]['text']}" in prompt.user
    assert "[n]" in prompt.user and "do not cover" in prompt.user and "Cite only the numbers above" in prompt.user
    no_diag = build_prompt(Settings().prompt_template_path, QUESTION, NO_DIAGNOSIS)
    assert "diagnosis (latest" not in no_diag.user


async def test_ollama_streams_ndjson_and_sends_chat_messages(standin, prompt):
    backend = OllamaBackend(standin.url, "standin-llm", timeout_s=5)
    pieces = [p async for p in backend.stream(prompt, GROUNDING)]
    assert len(pieces) > 3 and "".join(pieces) == standin.behaviour.reply
    sent = standin.behaviour.requests[-1]
    assert sent["stream"] is True and sent["model"] == "standin-llm"
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert QUESTION in sent["messages"][1]["content"]
    assert await backend.generate(prompt, GROUNDING) == standin.behaviour.reply
    assert standin.behaviour.requests[-1]["stream"] is False
    await backend.aclose()


async def test_ollama_errors_become_backend_errors(standin, prompt):
    backend = OllamaBackend(standin.url, "standin-llm", timeout_s=5)
    standin.behaviour.status = 500
    with pytest.raises(BackendError, match="HTTP 500"):
        await backend.generate(prompt, GROUNDING)
    with pytest.raises(BackendError, match="HTTP 500"):
        [p async for p in backend.stream(prompt, GROUNDING)]
    standin.reset()
    standin.behaviour.fail_after_pieces = 2
    with pytest.raises(BackendError, match="stream interrupted"):
        [p async for p in backend.stream(prompt, GROUNDING)]
    await backend.aclose()


async def test_ollama_timeout_and_unreachable(standin, prompt):
    standin.behaviour.delay_s = 1.0
    slow = OllamaBackend(standin.url, "standin-llm", timeout_s=0.2)
    with pytest.raises(BackendError, match="Timeout"):
        await slow.generate(prompt, GROUNDING)
    await slow.aclose()
    down = OllamaBackend("http://127.0.0.1:9", "standin-llm", timeout_s=2)  # port 9 (discard): nothing listens
    with pytest.raises(BackendError, match="unreachable"):
        await down.generate(prompt, GROUNDING)
    await down.aclose()


async def test_extractive_backend_stream_equals_generate(prompt):
    backend = ExtractiveBackend()
    text = await backend.generate(prompt, GROUNDING)
    assert text.startswith(GROUNDING["lead"]) and "**Repair — Valve lag** [1]" in text and PASSAGES[0]["text"] in text
    assert "".join([p async for p in backend.stream(prompt, GROUNDING)]) == text


def test_vllm_backend_says_clearly_when_vllm_is_missing():
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(BackendError, match="needs the vllm package"):
        VLLMBackend("/models/none")


def _gpu_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None or not _gpu_available(), reason="needs vllm and a GPU")
async def test_vllm_generates_with_a_tiny_random_model(tmp_path):
    """A tiny random-weight Llama with a tokenizer trained on the knowledge base: checks the wiring, not quality."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from configs.settings import PROJECT_ROOT

    corpus = [p.read_text() for p in (PROJECT_ROOT / "knowledge" / "docs").glob("*.md")] or [PASSAGES[0]["text"]]
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel()
    raw.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=2000, special_tokens=["<unk>", "<s>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    backend = VLLMBackend(str(tmp_path), max_tokens=16, gpu_memory_utilization=0.3, enforce_eager=True)
    prompt = build_prompt(Settings().prompt_template_path, QUESTION, NO_DIAGNOSIS)
    pieces = [p async for p in backend.stream(prompt, GROUNDING)]
    assert pieces and all(isinstance(p, str) for p in pieces)
    assert isinstance(await backend.generate(prompt, GROUNDING), str)
