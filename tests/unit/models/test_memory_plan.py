"""The memory plan against measured memory on CPU: quantised weights match the loaded models' footprint,
LoRA is counted as PEFT builds it, and the training and generation peaks of tiny llama, phi and gpt2
models land within 15% of the measured tensor peaks, with and without gradient checkpointing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from peak_memory import PeakTensorMemory, tensors_of
from src.models.loading import load_architecture_config, load_base_model
from src.models.lora import attach_lora, count_parameters, keep_trainable_in_float32
from src.models.loss import causal_lm_loss
from src.models.memory_plan import RunShape, estimate_memory, meta_model, optimizer_state_bytes, weight_bytes

ARCHITECTURES = Path(__file__).parents[3] / "configs" / "architectures"
# Big enough that activations, not fixed overheads, dominate; small enough for a CPU step in a second.
SMALL = {
    "phi-2": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=4),
    "gpt2-xl": dict(n_embd=128, n_layer=3, n_head=4),
    "llama-3.2-1b": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=32),
}
TOLERANCE = 0.15


def architecture(name: str, vocab: int = 256):
    path = str(ARCHITECTURES / f"{name}.json")
    return path, SMALL[name] | {"vocab_size": vocab}


def measured_training_peak(name: str, shape: RunShape, vocab: int) -> int:
    """Tensor peak of the second step (the first creates the optimizer state) of a real CPU LoRA step."""
    path, overrides = architecture(name, vocab)
    base = load_base_model(
        "unused", random_init=True, architecture=path, architecture_overrides=overrides,
        attn_implementation=shape.attn_implementation,
    )
    if shape.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = attach_lora(base, shape.lora_r, shape.lora_alpha, 0.0, "all-linear")
    keep_trainable_in_float32(model)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids = torch.randint(0, vocab, (shape.batch_size, shape.max_length), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}  # every position learned

    def step() -> None:
        causal_lm_loss(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    with PeakTensorMemory(tensors_of(model, optimizer, batch)) as memory:
        step()
    return memory.peak


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_training_peak_is_within_15_percent_of_the_measured_one(name: str, checkpointing: bool) -> None:
    shape = RunShape(batch_size=2, max_length=256, lora_r=8, lora_alpha=16, gradient_checkpointing=checkpointing,
                     device_type="cpu")
    path, overrides = architecture(name)
    estimate = estimate_memory(load_architecture_config("unused", path, overrides), shape)
    measured = measured_training_peak(name, shape, vocab=256)
    assert abs(estimate.training / measured - 1) <= TOLERANCE, (estimate.components, measured)


def test_eager_attention_is_planned_with_the_probabilities_it_keeps() -> None:
    shape = RunShape(batch_size=2, max_length=256, lora_r=8, lora_alpha=16, attn_implementation="eager", device_type="cpu")
    path, overrides = architecture("llama-3.2-1b")
    config = load_architecture_config("unused", path, overrides)
    estimate = estimate_memory(config, shape)
    sdpa = estimate_memory(config, dataclasses.replace(shape, attn_implementation="sdpa"))
    assert estimate.components["activations"] > sdpa.components["activations"]
    measured = measured_training_peak("llama-3.2-1b", shape, vocab=256)
    assert abs(estimate.training / measured - 1) <= TOLERANCE, (estimate.components, measured)


def test_a_logits_dominated_run_is_estimated_as_well() -> None:
    # A vocabulary much wider than the model: the loss's fp32 logits are most of the peak.
    shape = RunShape(batch_size=4, max_length=128, lora_r=8, lora_alpha=16, device_type="cpu")
    path, overrides = architecture("llama-3.2-1b", vocab=4096)
    estimate = estimate_memory(load_architecture_config("unused", path, overrides), shape)
    assert estimate.components["logits"] > estimate.components["activations"]
    measured = measured_training_peak("llama-3.2-1b", shape, vocab=4096)
    assert abs(estimate.training / measured - 1) <= TOLERANCE, (estimate.components, measured)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_generation_peak_is_within_15_percent_of_the_measured_one(name: str) -> None:
    shape = RunShape(batch_size=2, max_length=96, eval_batch_size=8, max_new_tokens=32, device_type="cpu")
    path, overrides = architecture(name, vocab=2048)
    estimate = estimate_memory(load_architecture_config("unused", path, overrides), shape)
    base = load_base_model("unused", random_init=True, architecture=path, architecture_overrides=overrides)
    model = attach_lora(base, shape.lora_r, shape.lora_alpha, 0.0, "all-linear").eval()
    ids = torch.randint(3, 2048, (8, 96), generator=torch.Generator().manual_seed(0))
    with PeakTensorMemory(tensors_of(model)) as memory, torch.no_grad():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, min_new_tokens=32,
                       do_sample=False, pad_token_id=0)
    planned = estimate.components["weights"] + estimate.components["lora"] + estimate.components["generation"]
    assert abs(planned / memory.peak - 1) <= TOLERANCE, (estimate.components, memory.peak)


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_quantised_weights_match_the_loaded_model(name: str, quantization: str) -> None:
    path, overrides = architecture(name)
    config = load_architecture_config("unused", path, overrides)
    planned = weight_bytes(meta_model(config, torch.float32), quantization, torch.float32)
    loaded = load_base_model("unused", random_init=True, architecture=path, architecture_overrides=overrides,
                             quantization=quantization)
    assert planned == pytest.approx(stored_bytes(loaded), rel=0.01)


def stored_bytes(model: torch.nn.Module) -> int:
    """Parameters plus bitsandbytes' scales, which live outside the parameters (so transformers'
    `get_memory_footprint` misses them): 4-bit block absmax (and their own scales), int8 row scales."""
    tensors = list(model.parameters())
    for parameter in model.parameters():
        state = getattr(parameter, "quant_state", None)
        while state is not None:
            tensors += [state.absmax, state.code]
            state = state.state2
        if getattr(parameter, "SCB", None) is not None:
            tensors.append(parameter.SCB)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unquantised_weights_are_parameters_times_their_size(dtype: torch.dtype) -> None:
    path, overrides = architecture("phi-2")
    model = meta_model(load_architecture_config("unused", path, overrides), dtype)
    size = torch.empty((), dtype=dtype).element_size()
    assert weight_bytes(model, None, dtype) == sum(p.numel() for p in model.parameters()) * size


def test_nf4_stores_about_half_a_byte_a_weight() -> None:
    path, overrides = architecture("llama-3.2-1b")
    overrides |= {"hidden_size": 1024, "intermediate_size": 4096, "head_dim": 256, "num_hidden_layers": 1}
    model = meta_model(load_architecture_config("unused", path, overrides), torch.float16)
    linear = sum(m.weight.numel() for n, m in model.named_modules() if n.endswith("_proj"))
    embeddings = sum(p.numel() for n, p in model.named_parameters() if "embed" in n or "lm_head" in n)
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    nf4 = weight_bytes(model, "nf4", torch.float16) - 2 * embeddings - 4 * norms
    # 4-bit codes, an 8-bit scale per 64 weights, an fp32 scale per 256 scales: 0.5 + 1/64 + 4/16384.
    assert nf4 / linear == pytest.approx(0.5 + 1 / 64 + 4 / 16384, rel=1e-3)


def test_lora_is_counted_as_peft_builds_it(tiny_model_dir: Path) -> None:
    shape = RunShape(batch_size=1, max_length=16, lora_r=4, target_modules=["q_proj", "v_proj"], lora_layers=[1])
    from transformers import AutoConfig

    estimate = estimate_memory(AutoConfig.from_pretrained(tiny_model_dir), shape)
    model = attach_lora(load_base_model(str(tiny_model_dir)), 4, 8, 0.0, ["q_proj", "v_proj"], layers=[1])
    trainable, total = count_parameters(model)
    assert (estimate.trainable_parameters, estimate.total_parameters) == (trainable, total)
    assert estimate.components["lora"] == estimate.components["grads"] == 4 * trainable


def test_8bit_optimizers_keep_a_quarter_of_adamw_state_for_large_tensors() -> None:
    large, small = 64 * 1024, 1024  # bitsandbytes keeps 32-bit state under 4,096 elements
    assert optimizer_state_bytes([large], "adamw") == 8 * large
    assert optimizer_state_bytes([large], "paged_adamw_8bit") == 2 * large + 8 * (large // 256)
    assert optimizer_state_bytes([small], "adamw_8bit") == optimizer_state_bytes([small], "adamw")


def test_checkpointing_keeps_only_layer_inputs() -> None:
    path, overrides = architecture("llama-3.2-1b")
    config = load_architecture_config("unused", path, overrides)
    plain = estimate_memory(config, RunShape(batch_size=2, max_length=256))
    checkpointed = estimate_memory(config, RunShape(batch_size=2, max_length=256, gradient_checkpointing=True))
    hidden_states = 2 * 256 * 128 * 4  # (B, T, H) fp32
    assert checkpointed.components["activations"] < plain.components["activations"] / 3
    assert checkpointed.components["activations"] >= 3 * hidden_states
    # Everything else is the same run.
    for key in ("weights", "lora", "grads", "optimizer", "logits", "generation"):
        assert checkpointed.components[key] == plain.components[key]
