"""model.attn_implementation: unknown or unavailable kernels are refused by name before loading, the
kernels that load give the same loss on padded and packed batches, and training steps may run another
kernel than generation (`model.train_attn_implementation`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from src.data.collate import TrainCollator, packing_collator
from src.errors import ConfigurationError
from src.models.attention import attention_kernel, check_attn_implementation
from src.models.loading import load_base_model
from src.models.loss import causal_lm_loss
from test_packing import PAD, examples, with_lora


def test_no_choice_and_the_cpu_kernels_are_accepted() -> None:
    for name in (None, "sdpa", "eager"):
        check_attn_implementation(name)


def test_an_unknown_kernel_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigurationError, match=r"model\.attn_implementation='flash'.*'sdpa', 'eager', 'flash_attention_2'"):
        check_attn_implementation("flash")


def test_flash_attention_without_cuda_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigurationError, match="flash_attention_2 needs a CUDA GPU.*use sdpa"):
        check_attn_implementation("flash_attention_2")


def test_flash_attention_without_the_package_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real_find_spec(name, *a)
    )
    with pytest.raises(ConfigurationError, match="needs the flash-attn package.*pip install flash-attn"):
        check_attn_implementation("flash_attention_2")


def test_the_training_key_is_named_in_its_refusal() -> None:
    with pytest.raises(ConfigurationError, match=r"model\.train_attn_implementation='flash'"):
        check_attn_implementation("flash", "model.train_attn_implementation")


def kernels_used(model) -> list[tuple[str, bool]]:
    """Each forward's (transformers kernel, whether torch may take its flash SDPA backend), from the first layer."""
    used: list[tuple[str, bool]] = []
    attention = model.get_base_model().model.layers[0].self_attn
    attention.register_forward_pre_hook(
        lambda module, args: used.append((module.config._attn_implementation, torch.backends.cuda.flash_sdp_enabled()))
    )
    return used


@pytest.mark.parametrize(
    ("name", "inside"), [("eager", ("eager", True)), ("sdpa_math", ("sdpa", False)), (None, ("sdpa", True))]
)
def test_attention_kernel_switches_for_the_block_and_restores_even_after_an_error(
    tiny_model_dir: Path, name: str | None, inside: tuple[str, bool]
) -> None:
    model = loaded(tiny_model_dir, "sdpa")
    used = kernels_used(model)
    batch = TrainCollator(PAD)(examples())
    with pytest.raises(RuntimeError, match="stopped"), attention_kernel(model, name):
        causal_lm_loss(model, batch)
        raise RuntimeError("stopped")
    causal_lm_loss(model, batch)
    assert used == [inside, ("sdpa", True)]
    assert model.get_base_model().config._attn_implementation == "sdpa"


def test_the_math_backend_gives_the_flash_kernels_loss_and_gradients(tiny_model_dir: Path) -> None:
    torch.manual_seed(0)
    model = loaded(tiny_model_dir, "sdpa")
    batch = TrainCollator(PAD)(examples())

    def loss_and_gradients(name: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        with attention_kernel(model, name):
            loss = causal_lm_loss(model, batch)
        loss.backward()  # outside the block, as Lightning runs it
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    flash_loss, flash_grads = loss_and_gradients("sdpa")
    math_loss, math_grads = loss_and_gradients("sdpa_math")
    assert flash_loss.item() > 0.1
    torch.testing.assert_close(math_loss, flash_loss, rtol=0, atol=1e-5)
    for math_grad, flash_grad in zip(math_grads, flash_grads, strict=True):
        torch.testing.assert_close(math_grad, flash_grad, rtol=1e-4, atol=1e-6)


def loaded(model_dir: Path, attn: str | None):
    return with_lora(load_base_model(str(model_dir), attn_implementation=attn))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_the_chosen_kernel_is_the_one_loaded(tiny_model_dir: Path, attn: str) -> None:
    assert load_base_model(str(tiny_model_dir), attn_implementation=attn).config._attn_implementation == attn
    assert load_base_model(str(tiny_model_dir), random_init=True, attn_implementation=attn).config._attn_implementation == attn


@pytest.mark.parametrize("collate", [TrainCollator(PAD), packing_collator()], ids=["padded", "packed"])
def test_sdpa_and_eager_give_the_same_loss(tiny_model_dir: Path, collate) -> None:
    torch.manual_seed(0)
    sdpa = loaded(tiny_model_dir, "sdpa")
    eager = loaded(tiny_model_dir, "eager")
    eager.load_state_dict(sdpa.state_dict())  # the same random LoRA B
    batch = collate(examples())
    with torch.no_grad():
        sdpa_loss, eager_loss = causal_lm_loss(sdpa, batch), causal_lm_loss(eager, batch)
    assert sdpa_loss.item() > 0.1  # a real loss, not a degenerate zero
    torch.testing.assert_close(sdpa_loss, eager_loss, rtol=0, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="needs the flash-attn package")
@pytest.mark.parametrize("collate", [TrainCollator(PAD), packing_collator()], ids=["padded", "packed"])
def test_flash_attention_gives_the_sdpa_loss(tiny_model_dir: Path, collate) -> None:
    torch.manual_seed(0)
    sdpa = loaded(tiny_model_dir, "sdpa").to("cuda", torch.bfloat16)
    flash = loaded(tiny_model_dir, "flash_attention_2").to("cuda", torch.bfloat16)
    flash.load_state_dict(sdpa.state_dict())
    batch = {key: value.cuda() for key, value in collate(examples()).items()}
    with torch.no_grad():
        torch.testing.assert_close(causal_lm_loss(flash, batch), causal_lm_loss(sdpa, batch), rtol=0, atol=2e-2)
