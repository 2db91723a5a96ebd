"""LoRA attachment: which modules get adapters, and loading a saved adapter to continue training."""

from __future__ import annotations

import re

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from src.models.lora import attach_lora, count_parameters


def tiny_llama(layers: int = 4) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=2)
    return LlamaForCausalLM(config).requires_grad_(False)


def adapted_layers(model) -> set[int]:
    return {int(re.search(r"layers\.(\d+)\.", n).group(1)) for n, _ in model.named_parameters() if "lora_" in n}


def test_all_linear_adapts_every_projection_of_every_layer_but_not_the_head() -> None:
    model = attach_lora(tiny_llama(), r=2, alpha=4, dropout=0.0, target_modules="all-linear")
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert adapted_layers(model) == {0, 1, 2, 3}
    assert not any("lm_head" in n or "embed" in n for n in names)
    projections = {re.search(r"\.(\w+_proj)\.lora_A", n).group(1) for n in names if "lora_A" in n}
    assert projections == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_lora_layers_restricts_adapters_and_gradients_to_the_upper_layers() -> None:
    model = attach_lora(tiny_llama(), r=2, alpha=4, dropout=0.0, target_modules="all-linear", layers=[2, 3])
    assert adapted_layers(model) == {2, 3}
    trainable, total = count_parameters(model)
    assert 0 < trainable < total
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter)
    ids = torch.randint(0, 64, (2, 5))
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_a_saved_adapter_loads_trainable_with_the_same_weights(tmp_path) -> None:
    model = attach_lora(tiny_llama(), r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"])
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter)
    model.save_pretrained(tmp_path)
    loaded = attach_lora(tiny_llama(), r=8, alpha=8, dropout=0.0, target_modules="all-linear", adapter_path=str(tmp_path))
    saved = {n: p for n, p in model.named_parameters() if "lora_" in n}
    reloaded = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
    assert saved.keys() == reloaded.keys()
    assert all(torch.equal(saved[n], reloaded[n]) and reloaded[n].requires_grad for n in saved)
