"""Tensor names, rotary layout, storage types and RoPE factors of the GGUF export."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from tiny_llamas import save_tiny_llama
from src.errors import ConfigurationError, ModelSourceError
from src.export.gguf_tensors import llama_tensors, rope_frequency_factors, storage_type, to_rotary_interleaved

F32, F16, Q8_0 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.Q8_0


def test_rotary_layout_interleaves_each_heads_two_halves():
    rows = torch.arange(2 * 8, dtype=torch.float32).unsqueeze(1)  # 2 heads of dimension 8, one column
    permuted = to_rotary_interleaved(rows, n_heads=2).squeeze(1).tolist()
    assert permuted == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]


def test_rotary_layout_depends_on_the_head_count():
    # K under grouped-query attention has fewer heads than Q: permuting it with Q's count scrambles it.
    k = torch.randn(2 * 8, 4)
    assert not torch.equal(to_rotary_interleaved(k, n_heads=2), to_rotary_interleaved(k, n_heads=4))


@pytest.mark.parametrize(
    ("name", "shape", "outtype", "expected"),
    [
        ("blk.0.attn_norm.weight", (32,), "f16", F32),
        ("blk.0.attn_norm.weight", (32,), "q8_0", F32),
        ("output_norm.weight", (32,), "q8_0", F32),
        ("blk.0.attn_q.weight", (32, 32), "f16", F16),
        ("blk.0.attn_q.weight", (32, 32), "q8_0", Q8_0),
        ("token_embd.weight", (400, 64), "q8_0", Q8_0),
        ("blk.0.attn_q.weight", (48, 48), "q8_0", F16),  # rows of 48 do not split into 32-value blocks
    ],
)
def test_storage_type_follows_llama_cpp(name, shape, outtype, expected):
    assert storage_type(name, shape, outtype) == expected


def test_llama3_rope_factors_divide_the_base_frequencies_into_transformers_scaled_ones():
    config = LlamaConfig(
        hidden_size=128,
        num_attention_heads=2,
        max_position_embeddings=131072,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    base, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    factors = rope_frequency_factors(config)
    assert factors.dtype == np.float32 and factors.shape == (32,)
    np.testing.assert_allclose(factors, (base / scaled).numpy(), rtol=1e-5)


def test_no_rope_factors_without_llama3_scaling():
    assert rope_frequency_factors(LlamaConfig(hidden_size=32, num_attention_heads=4)) is None


def test_tensors_are_named_for_llama_cpp_and_k_uses_the_kv_head_count(tmp_path, tiny_tokenizer):
    folder = save_tiny_llama(tmp_path, tiny_tokenizer)
    config = LlamaConfig.from_pretrained(folder)
    tensors = {tensor.name: tensor for tensor in llama_tensors(folder, config, "f16")}
    per_block = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
    expected = {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{layer}.{part}.weight" for layer in range(2) for part in per_block
    }
    assert set(tensors) == expected
    from safetensors.torch import load_file

    hf = load_file(folder / "model.safetensors")
    k = hf["model.layers.1.self_attn.k_proj.weight"]  # (2 KV heads × 8, 32)
    stored_k = tensors["blk.1.attn_k.weight"].data
    np.testing.assert_array_equal(stored_k, to_rotary_interleaved(k, 2).numpy().astype(np.float16))
    q = hf["model.layers.1.self_attn.q_proj.weight"]
    np.testing.assert_array_equal(tensors["blk.1.attn_q.weight"].data, to_rotary_interleaved(q, 4).numpy().astype(np.float16))
    np.testing.assert_array_equal(tensors["blk.1.attn_v.weight"].data, hf["model.layers.1.self_attn.v_proj.weight"].numpy().astype(np.float16))


def test_tied_embeddings_write_no_output_tensor(tmp_path, tiny_tokenizer):
    folder = save_tiny_llama(tmp_path, tiny_tokenizer, tie_word_embeddings=True)
    names = {tensor.name for tensor in llama_tensors(folder, LlamaConfig.from_pretrained(folder), "q8_0")}
    assert "token_embd.weight" in names and "output.weight" not in names


def test_llama3_scaling_adds_the_rope_freqs_tensor(tmp_path, tiny_tokenizer):
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    folder = save_tiny_llama(tmp_path, tiny_tokenizer, rope_parameters=rope)
    tensors = {tensor.name: tensor for tensor in llama_tensors(folder, LlamaConfig.from_pretrained(folder), "f16")}
    assert tensors["rope_freqs.weight"].qtype == F32
    assert tensors["rope_freqs.weight"].data.shape == (4,)  # head_dim 8 / 2


def test_unknown_outtype_and_missing_weights_are_refused(tmp_path, tiny_tokenizer):
    folder = save_tiny_llama(tmp_path / "model", tiny_tokenizer)
    config = LlamaConfig.from_pretrained(folder)
    with pytest.raises(ConfigurationError, match="q4_0.*f16"):
        list(llama_tensors(folder, config, "q4_0"))
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelSourceError, match="model.safetensors"):
        list(llama_tensors(folder, config, "f16"))
