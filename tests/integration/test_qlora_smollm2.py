"""QLoRA on the real offline default, on the CPU: SmolLM2-135M loads in nf4 with bitsandbytes, LoRA
trains with finite gradients and 8-bit AdamW steps. Runs in the default suite (CI has no GPU, so this
is where the quantised path meets a real model); ~30 s, most of it dequantising the GGUF once."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch

from src.models.loading import load_base_model
from src.sources.tokenizer import load_tokenizer
from src.models.lora import attach_lora, keep_trainable_in_float32
from src.sources.offline_default import OFFLINE_DEFAULT
from src.models.optimizers import build_optimizer
from src.models.quantization import prepare_for_kbit_training


@pytest.fixture(scope="module")
def qlora_smollm2(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUTOR_TUNE_CACHE", str(tmp_path_factory.mktemp("offline-cache")))
        tokenizer = load_tokenizer(OFFLINE_DEFAULT)
        base = load_base_model(OFFLINE_DEFAULT, dtype=torch.bfloat16, quantization="nf4")
    prepare_for_kbit_training(base, gradient_checkpointing=False)
    model = attach_lora(base, r=8, alpha=16, dropout=0.0, target_modules="all-linear")
    keep_trainable_in_float32(model)
    model.train()
    return tokenizer, model


def test_smollm2_loads_with_4bit_linear_layers(qlora_smollm2) -> None:
    _, model = qlora_smollm2
    quantised = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantised) == 30 * 7, "every attention and MLP projection of the 30 blocks"
    assert all(m.weight.quant_state.quant_type == "nf4" for m in quantised)


def test_lora_trains_and_8bit_adamw_steps_on_the_cpu(qlora_smollm2) -> None:
    tokenizer, model = qlora_smollm2
    batch = tokenizer(["¿Cuánto es 7 × 8? Respuesta: 56", "What is 12 - 5? Answer: 7"], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = build_optimizer("adamw_8bit", trainable.values(), lr=1e-3, weight_decay=0.0)
    assert isinstance(optimizer, bnb.optim.AdamW8bit)
    before = {n: p.detach().clone() for n, p in trainable.items()}
    losses = []
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):  # what trainer.precision bf16-mixed wraps steps in
            loss = model(**batch, labels=labels).loss
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable.values())
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[1] < losses[0], "a step on a batch lowers its loss"
    assert any(not torch.equal(before[n], p) for n, p in trainable.items())
