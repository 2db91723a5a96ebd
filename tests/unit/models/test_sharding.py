"""FSDP's wrap policy finds each decoder block of every bundled architecture, and nothing else."""

from __future__ import annotations

import pytest
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PhiConfig, PhiForCausalLM

from src.models.sharding import wrap_decoder_layers

TINY = dict(vocab_size=64, num_hidden_layers=3, num_attention_heads=2, hidden_size=16, intermediate_size=32)


@pytest.mark.parametrize(
    ("model", "block"),
    [
        (lambda: LlamaForCausalLM(LlamaConfig(**TINY)), "LlamaDecoderLayer"),
        (lambda: PhiForCausalLM(PhiConfig(**TINY)), "PhiDecoderLayer"),
        (lambda: GPT2LMHeadModel(GPT2Config(vocab_size=64, n_layer=3, n_head=2, n_embd=16)), "GPT2Block"),
    ],
    ids=["llama", "phi", "gpt2"],
)
def test_each_decoder_block_is_its_own_unit(model, block: str) -> None:
    wrapped = [type(m).__name__ for m in model().modules() if wrap_decoder_layers(m, recurse=False, nonwrapped_numel=0)]
    assert wrapped == [block] * 3


def test_the_policy_descends_into_every_module() -> None:
    model = LlamaForCausalLM(LlamaConfig(**TINY))
    assert all(wrap_decoder_layers(m, recurse=True, nonwrapped_numel=0) for m in model.modules())
