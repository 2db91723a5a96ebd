"""PEFT's learning-per-FLOP switches on `attach_lora`: each builds the model PEFT documents and trains,
and PiSSA (which rewrites the base weights) still gives back the original model and saves an adapter
that fits it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from transformers import LlamaConfig, LlamaForCausalLM

from src.errors import ConfigurationError
from src.models.lora import attach_lora, base_model_outputs, check_lora_options, save_adapter

def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=4,
                         num_attention_heads=2, num_key_value_heads=2)
    return LlamaForCausalLM(config).requires_grad_(False)


IDS = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))


def lora_layers(model: PeftModel) -> list[LoraLayer]:
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def loss_after_steps(model: PeftModel, steps: int = 5) -> tuple[float, float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps + 1):
        loss = model(input_ids=IDS, labels=IDS).loss
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return losses[0], losses[-1]


def perturb_b(model: PeftModel) -> None:
    """A stand-in for training: every B moves, so the adapter changes the outputs."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.2 * torch.randn_like(parameter))


@torch.no_grad()
def logits(model: torch.nn.Module) -> torch.Tensor:
    return model(input_ids=IDS).logits


def test_rslora_scales_the_update_by_alpha_over_the_root_of_r() -> None:
    model = attach_lora(tiny_llama(), r=16, alpha=8, dropout=0.0, target_modules="all-linear", use_rslora=True)
    assert {layer.scaling["default"] for layer in lora_layers(model)} == {8 / math.sqrt(16)}
    plain = attach_lora(tiny_llama(), r=16, alpha=8, dropout=0.0, target_modules="all-linear")
    assert {layer.scaling["default"] for layer in lora_layers(plain)} == {8 / 16}


def test_dora_adds_a_trainable_magnitude_per_output_equal_to_the_weight_norms() -> None:
    model = attach_lora(tiny_llama(), r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "down_proj"], use_dora=True)
    layers = lora_layers(model)
    assert len(layers) == 8  # 2 projections x 4 layers
    for layer in layers:
        magnitude = layer.lora_magnitude_vector["default"].weight
        base = layer.get_base_layer().weight  # (out, in)
        assert magnitude.requires_grad and magnitude.shape == (base.shape[0],)
        torch.testing.assert_close(magnitude, base.norm(dim=1))  # B = 0: DoRA starts at the base weight


@pytest.mark.parametrize(
    "options",
    [{}, {"use_rslora": True}, {"use_dora": True}, {"init_lora_weights": "gaussian"},
     {"init_lora_weights": "pissa_niter_4"}, {"init_lora_weights": "pissa"}],
    ids=["lora", "rslora", "dora", "gaussian", "pissa_niter_4", "pissa"],
)
def test_each_switch_starts_at_the_base_model_and_trains(options: dict) -> None:
    reference = logits(tiny_llama())
    model = attach_lora(tiny_llama(), r=4, alpha=8, dropout=0.0, target_modules="all-linear", **options)
    torch.testing.assert_close(logits(model), reference, atol=1e-5, rtol=0)
    first, last = loss_after_steps(model)
    assert last < first - 0.1


def test_pissa_moves_the_principal_part_of_each_weight_into_the_adapter() -> None:
    original = {n: p.clone() for n, p in tiny_llama().named_parameters()}
    model = attach_lora(tiny_llama(), r=4, alpha=8, dropout=0.0, target_modules=["q_proj"], init_lora_weights="pissa")
    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer):
            weight = original[name.removeprefix("base_model.model.") + ".weight"]
            residual = layer.get_base_layer().weight
            update = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
            torch.testing.assert_close(residual + update, weight, atol=1e-6, rtol=0)
            # The adapter holds the top-r singular directions: what is left has W's smaller singular values.
            values = torch.linalg.svdvals(weight)
            torch.testing.assert_close(torch.linalg.svdvals(residual)[:12], values[4:], atol=1e-5, rtol=0)


def test_pissa_base_model_outputs_are_the_original_model_not_the_residual() -> None:
    reference = logits(tiny_llama())
    model = attach_lora(tiny_llama(), r=4, alpha=8, dropout=0.0, target_modules="all-linear", init_lora_weights="pissa_niter_4")
    perturb_b(model)
    trained = logits(model)
    with model.disable_adapter():
        assert (logits(model) - reference).abs().max() > 1e-2  # PEFT's switch gives the residual model
    with base_model_outputs(model):
        torch.testing.assert_close(logits(model), reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits(model), trained, atol=0, rtol=0)  # the trained adapter is back


def test_base_model_outputs_without_pissa_disable_the_adapter() -> None:
    reference = logits(tiny_llama())
    model = attach_lora(tiny_llama(), r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    perturb_b(model)
    with base_model_outputs(model):
        torch.testing.assert_close(logits(model), reference, atol=0, rtol=0)
    assert (logits(model) - reference).abs().max() > 1e-2


def test_a_saved_pissa_adapter_reproduces_the_tuned_model_on_the_original_base(tmp_path: Path) -> None:
    model = attach_lora(tiny_llama(), r=4, alpha=8, dropout=0.0, target_modules="all-linear", init_lora_weights="pissa_niter_4")
    perturb_b(model)
    trained = logits(model)
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["init_lora_weights"]) == (8, 16, True)  # ΔW = BA - B₀A₀
    reloaded = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    torch.testing.assert_close(logits(reloaded), trained, atol=1e-5, rtol=0)
    continued = attach_lora(tiny_llama(), r=4, alpha=8, dropout=0.0, target_modules="all-linear", adapter_path=str(tmp_path))
    torch.testing.assert_close(logits(continued), trained, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits(model), trained, atol=0, rtol=0)  # saving left the live adapter alone


def test_save_adapter_without_pissa_is_plain_save_pretrained(tmp_path: Path) -> None:
    model = attach_lora(tiny_llama(), r=2, alpha=4, dropout=0.0, target_modules=["q_proj"])
    perturb_b(model)
    save_adapter(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == 2
    torch.testing.assert_close(logits(PeftModel.from_pretrained(tiny_llama(), tmp_path)), logits(model), atol=0, rtol=0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"init_lora_weights": "olora", "use_dora": False},
         "model.lora.init: 'olora' is not supported; expected one of True, \"gaussian\", \"pissa\", "
         "\"pissa_niter_<n>\" (e.g. pissa_niter_4: PiSSA from 4 subspace iterations, seconds instead of a full SVD)."),
        ({"init_lora_weights": False, "use_dora": False}, "model.lora.init: False is not supported"),
        ({"init_lora_weights": "pissa_niter_", "use_dora": False}, "model.lora.init: 'pissa_niter_' is not supported"),
        ({"init_lora_weights": "pissa_niter_4", "use_dora": False, "quantization": "nf4"},
         "model.lora.init: pissa_niter_4 decomposes the float base weights, but model.quantization is nf4 "
         "(PEFT's PiSSA runs on float32/16 weights only). Set model.quantization: null or model.lora.init: true."),
        ({"init_lora_weights": "pissa", "use_dora": True},
         "model.lora.init: pissa with model.lora.use_dora: true: DoRA's magnitudes would be taken from the PiSSA residual"),
    ],
    ids=["unknown", "false", "bad-niter", "pissa-quantized", "pissa-dora"],
)
def test_inits_that_cannot_work_are_refused_with_the_setting_to_change(options: dict, message: str) -> None:
    with pytest.raises(ConfigurationError) as error:
        check_lora_options(**options)
    assert str(error.value).startswith(message)
