"""llama.cpp itself (llama-cpp-python) runs an exported tiny llama and computes transformers' logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from tiny_llamas import save_tiny_llama
from src.export import export_gguf

pytestmark = pytest.mark.llamacpp
llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python)")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_tokenizer):
    folder = save_tiny_llama(tmp_path_factory.mktemp("merged"), tiny_tokenizer)
    return folder, export_gguf(folder, folder / "tiny.f16.gguf", "f16")


def test_llama_cpp_computes_the_merged_models_logits(exported, tiny_tokenizer):
    folder, path = exported
    ids = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "¿Cuánto es 45 - 27?"}], add_generation_prompt=True
    )["input_ids"]
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=1, logits_all=True, verbose=False)
    llm.eval(ids)
    got = np.asarray(llm.scores[: len(ids)])  # (T, vocab)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    # f16 weights (and llama.cpp's f16 matrix products) against fp32; a wrong Q/K layout or norm is off by ~0.1+.
    np.testing.assert_allclose(got, expected, atol=5e-3, rtol=0)


def test_llama_cpp_tokenises_like_transformers_and_adds_no_bos(exported, tiny_tokenizer):
    _, path = exported
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=1, vocab_only=True, verbose=False)
    text = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "Calcula 12 + 30, luego 3 × 4."}], tokenize=False)
    assert llm.tokenize(text.encode("utf-8"), add_bos=True, special=True) == tiny_tokenizer(text)["input_ids"]
    assert llm.metadata["tokenizer.chat_template"] == tiny_tokenizer.chat_template
