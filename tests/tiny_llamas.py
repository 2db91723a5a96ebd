"""Tiny llama checkpoints for the GGUF export and 4-bit tests, saved the way the merge step saves a model."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

# Dimensions every real 4-bit kernel takes: bitsandbytes' AVX512-BF16 CPU kernel repacks weights in rows of
# 32 outputs and whole 64-element blocks of inputs (k_proj/v_proj: 2 KV heads x 16 = 32 outputs).
NF4_SHAPES = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)


def save_tiny_llama(folder: Path, tokenizer: PreTrainedTokenizerBase, random_norms: bool = True, **overrides) -> Path:
    """A 2-layer llama with grouped-query attention (4 query heads, 2 KV heads), so K's layout differs from Q's.

    `random_norms`: norm weights drawn from [0.5, 1.5] instead of ones, so a norm stored in the wrong
    place shows in the logits (the export tests need that; the other tests keep the default init)."""
    values = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    values.update(overrides)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**values))
    if random_norms:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
