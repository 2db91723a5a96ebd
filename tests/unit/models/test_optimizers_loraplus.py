"""LoRA+ (`model.optimizer.loraplus_lr_ratio`): every `model.optimizer.name` gives LoRA's B matrices ratio x the
learning rate of A, keeps the weight decay, trains a tiny model, and the schedule keeps the ratio."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import LlamaConfig, LlamaForCausalLM, get_scheduler

from src.errors import ConfigurationError
from src.models.lora import attach_lora
from src.models.optimizers import OPTIMIZERS, build_optimizer, check_optimizer

LR, RATIO = 1e-3, 16.0


def tiny_peft(**options) -> PeftModel:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2)
    base = LlamaForCausalLM(config).requires_grad_(False)
    return attach_lora(base, r=4, alpha=8, dropout=0.0, target_modules="all-linear", **options)


def loraplus(model: PeftModel, name: str = "adamw", weight_decay: float = 0.01) -> torch.optim.Optimizer:
    trainable = [p for p in model.parameters() if p.requires_grad]
    return build_optimizer(name, trainable, LR, weight_decay, loraplus_lr_ratio=RATIO, model=model)


def learning_rates(model: PeftModel, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Each trainable parameter's learning rate, by name."""
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    return {n: group_of[id(p)]["lr"] for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_b_learns_at_ratio_times_the_rate_of_a_with_each_optimizer(name: str) -> None:
    check_optimizer(name, "cpu", loraplus_lr_ratio=RATIO)
    model = tiny_peft()
    optimizer = loraplus(model, name)
    rates = learning_rates(model, optimizer)
    assert {rate for n, rate in rates.items() if "lora_A" in n} == {LR}
    assert {rate for n, rate in rates.items() if "lora_B" in n} == {LR * RATIO}
    assert len(rates) == sum(p.requires_grad for p in model.parameters())  # every trainable parameter, once
    assert {g["weight_decay"] for g in optimizer.param_groups if g["params"]} == {0.01}
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(6):
        loss = model(input_ids=ids, labels=ids).loss
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0] - 0.1


def test_dora_magnitudes_learn_with_b() -> None:
    model = tiny_peft(use_dora=True)
    rates = learning_rates(model, loraplus(model))
    magnitudes = {rate for n, rate in rates.items() if "lora_magnitude_vector" in n}
    assert magnitudes == {LR * RATIO}


def test_the_schedule_scales_both_rates_and_keeps_their_ratio() -> None:
    model = tiny_peft()
    optimizer = loraplus(model)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=2, num_training_steps=10)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    rates = sorted({g["lr"] for g in optimizer.param_groups if g["params"]})
    assert len(rates) == 2 and rates[0] < LR
    assert rates[1] / rates[0] == pytest.approx(RATIO)


def test_without_a_ratio_every_parameter_shares_one_rate() -> None:
    model = tiny_peft()
    optimizer = build_optimizer("adamw", [p for p in model.parameters() if p.requires_grad], LR, 0.0)
    assert set(learning_rates(model, optimizer).values()) == {LR}


@pytest.mark.parametrize("ratio", [0.0, -2.0, float("nan")])
def test_a_ratio_that_is_not_positive_is_refused(ratio: float) -> None:
    with pytest.raises(ConfigurationError) as error:
        check_optimizer("adamw", "cpu", loraplus_lr_ratio=ratio)
    assert str(error.value) == (
        f"model.optimizer.loraplus_lr_ratio: {ratio} is not a positive number. LoRA+ multiplies B's learning rate by it "
        "(the paper uses 16; PEFT advises >= 1); set null for plain LoRA."
    )


def test_loraplus_without_lora_b_matrices_is_refused() -> None:
    weight = torch.nn.Linear(4, 4)
    with pytest.raises(ConfigurationError) as error:
        build_optimizer("adamw", list(weight.parameters()), LR, 0.0, loraplus_lr_ratio=RATIO, model=weight)
    assert str(error.value) == (
        "model.optimizer.loraplus_lr_ratio: the model has no trainable LoRA B matrix, so LoRA+ would change nothing. "
        "Set model.optimizer.loraplus_lr_ratio: null, or train a LoRA adapter."
    )


def test_loraplus_needs_the_model_and_exactly_its_trainable_parameters() -> None:
    model = tiny_peft()
    trainable = [p for p in model.parameters() if p.requires_grad]
    with pytest.raises(TypeError, match="needs the model"):
        build_optimizer("adamw", trainable, LR, 0.0, loraplus_lr_ratio=RATIO)
    with pytest.raises(ValueError, match="params must be the model's trainable parameters"):
        build_optimizer("adamw", trainable[:2], LR, 0.0, loraplus_lr_ratio=RATIO, model=model)
