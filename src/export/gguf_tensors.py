"""Weights of a transformers llama-family checkpoint, renamed, laid out and typed the way llama.cpp reads them.

Three things differ from the safetensors checkpoint:
- names: `model.layers.3.self_attn.q_proj.weight` becomes `blk.3.attn_q.weight` (gguf-py's own name map);
- Q and K rows are reordered for llama.cpp's rotary layout (see `to_rotary_interleaved`);
- storage types: F32 for vectors (norms), F16 or Q8_0 for matrices, following llama.cpp's converter.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors import safe_open
from transformers import PretrainedConfig

from src.errors import ConfigurationError, ModelSourceError

OUTTYPES = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
"""`--outtype` values and the `general.file_type` llama.cpp records for each."""


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor ready for `GGUFWriter.add_tensor`: `data` is float32/float16 or quantised bytes."""

    name: str
    data: np.ndarray
    qtype: gguf.GGMLQuantizationType
    parameters: int


def to_rotary_interleaved(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder Q/K projection rows from transformers' rotary layout to llama.cpp's.

    transformers rotates the first half of each head's dimensions against the second half
    (`rotate_half`); llama.cpp rotates adjacent pairs. Within each head, row order
    [0, 1, ..., d/2-1, d/2, ..., d-1] becomes [0, d/2, 1, d/2+1, ...]. For K, `n_heads` is the
    number of key/value heads: with grouped-query attention the K matrix has only that many heads.
    """
    rows = weight.shape[0]
    # (rows, ...) -> (heads, 2 halves, d/2, ...) -> (heads, d/2, 2, ...): pairs become adjacent
    return weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def rope_frequency_factors(config: PretrainedConfig) -> np.ndarray | None:
    """Llama-3 RoPE scaling as llama.cpp's `rope_freqs.weight`: one divisor per rotary frequency.

    llama.cpp has no llama3 scaling type; it divides each base frequency by this stored factor
    instead. Returns None when the config uses no llama3 scaling.
    """
    params = rope_parameters(config)
    if params.get("rope_type", "default") != "llama3":
        return None
    dim = head_dim(config)
    base = params["rope_theta"]
    factor = params.get("factor", 8.0)
    low_freq_factor = params.get("low_freq_factor", 1.0)
    high_freq_factor = params.get("high_freq_factor", 4.0)
    old_context = params.get("original_max_position_embeddings", 8192)
    low_freq_wavelen = old_context / low_freq_factor
    high_freq_wavelen = old_context / high_freq_factor
    factors = []
    for freq in 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:  # high frequencies: unchanged
            factors.append(1.0)
        elif wavelen > low_freq_wavelen:  # low frequencies: slowed down by `factor`
            factors.append(factor)
        else:  # in between: a smooth blend of the two
            smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def rope_parameters(config: PretrainedConfig) -> dict:
    """RoPE settings: transformers 5 keeps them (and `rope_theta`) in `config.rope_parameters`."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return params


def head_dim(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def storage_type(name: str, shape: tuple[int, ...], outtype: str) -> gguf.GGMLQuantizationType:
    """llama.cpp's choice: vectors and norms in F32; matrices in F16, or Q8_0 where rows split into 32-blocks."""
    if len(shape) == 1 or name.endswith("_norm.weight") or name == gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight":
        return gguf.GGMLQuantizationType.F32
    if outtype == "q8_0" and shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        return gguf.GGMLQuantizationType.Q8_0
    return gguf.GGMLQuantizationType.F16


def encode(weight: torch.Tensor, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """The array GGUFWriter stores: float32/float16 as is, Q8_0 as gguf-py's quantised blocks."""
    values = weight.to(torch.float32).numpy()  # bf16 has no numpy dtype; go through float32
    if qtype == gguf.GGMLQuantizationType.F32:
        return values
    if qtype == gguf.GGMLQuantizationType.F16:
        return values.astype(np.float16)
    return gguf.quants.quantize(values, qtype)


def read_checkpoint(model_dir: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every tensor in the folder's safetensors file(s), sharded or not, in name order."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = sorted(set(weight_map.values()))
    elif (model_dir / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise ModelSourceError(
            f"{model_dir}: no model.safetensors or model.safetensors.index.json; export takes a folder written by "
            "`save_pretrained` (safetensors), such as the merge command's output"
        )
    for file in files:
        with safe_open(model_dir / file, framework="pt") as handle:
            for name in sorted(handle.keys()):
                yield name, handle.get_tensor(name)


def llama_tensors(model_dir: Path, config: PretrainedConfig, outtype: str) -> Iterator[GGUFTensor]:
    """Every tensor llama.cpp's `llama` architecture needs, from a LlamaForCausalLM checkpoint."""
    if outtype not in OUTTYPES:
        raise ConfigurationError(f"outtype {outtype!r} is not supported; choose one of {sorted(OUTTYPES)}")
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    n_heads, n_kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, weight in read_checkpoint(model_dir):
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue  # recomputed by llama.cpp / shared with token_embd when tied
        name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ModelSourceError(
                f"{model_dir}: tensor {hf_name!r} has no llama.cpp counterpart in the llama architecture; "
                "is this a LlamaForCausalLM checkpoint with extra modules (e.g. unmerged LoRA weights)?"
            )
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            weight = to_rotary_interleaved(weight, n_heads)
        elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            weight = to_rotary_interleaved(weight, n_kv_heads)
        qtype = storage_type(name, tuple(weight.shape), outtype)
        yield GGUFTensor(name, encode(weight, qtype), qtype, weight.numel())
    factors = rope_frequency_factors(config)
    if factors is not None:
        yield GGUFTensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", factors, gguf.GGMLQuantizationType.F32, 0)
