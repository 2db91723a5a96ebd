"""Each `model.optimizer.name` steps the parameters it is given (8-bit ones with 1-byte moments), and the
ones that cannot run here are refused with the setting to use instead."""

from __future__ import annotations

import pytest
import torch

import src.models.optimizers as optimizers
from src.errors import ConfigurationError
from src.models.optimizers import OPTIMIZERS, build_optimizer, check_fused_clipping, check_optimizer

# bitsandbytes keeps 32-bit state for tensors under 4,096 elements; this one is 8-bit.
SHAPE = (64, 64)


def quadratic_steps(name: str, steps: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.optim.Optimizer]:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(SHAPE))
    start = weight.detach().clone()
    optimizer = build_optimizer(name, [weight], lr=1e-2, weight_decay=0.0)
    for _ in range(steps):
        optimizer.zero_grad()
        (weight**2).sum().backward()
        optimizer.step()
    return start, weight.detach(), optimizer


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_steps_downhill_on_cpu(name: str) -> None:
    check_optimizer(name, "cpu")
    start, end, _ = quadratic_steps(name, steps=1)
    # Adam's first step moves every coordinate by about lr against its gradient's sign.
    torch.testing.assert_close((start - end).sign(), start.sign())
    torch.testing.assert_close((start - end).abs(), torch.full(SHAPE, 1e-2), rtol=0.05, atol=0)
    start, end, _ = quadratic_steps(name, steps=3)
    assert (end**2).sum() < (start**2).sum()


def test_fused_adamw_takes_the_same_steps_as_plain_adamw() -> None:
    _, plain, _ = quadratic_steps("adamw")
    _, fused, optimizer = quadratic_steps("adamw_fused")
    assert optimizer.defaults["fused"]
    torch.testing.assert_close(fused, plain)


@pytest.mark.parametrize("name", ["adamw_8bit", "paged_adamw_8bit"])
def test_8bit_optimizers_keep_one_byte_moments(name: str) -> None:
    _, _, optimizer = quadratic_steps(name, steps=1)
    state = next(iter(optimizer.state.values()))
    assert state["state1"].dtype == state["state2"].dtype == torch.uint8
    assert state["state1"].shape == SHAPE


def test_an_unknown_optimizer_is_refused() -> None:
    with pytest.raises(ConfigurationError) as error:
        check_optimizer("sgd", "cpu")
    assert str(error.value) == (
        "model.optimizer.name: 'sgd' is not known; expected one of adamw, adamw_fused, adamw_8bit, paged_adamw_8bit."
    )


def test_fused_adamw_is_refused_where_torch_has_no_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optimizers, "fused_adamw_devices", lambda: ["cuda"])
    with pytest.raises(ConfigurationError) as error:
        check_optimizer("adamw_fused", "cpu")
    assert str(error.value) == (
        f"model.optimizer.name: adamw_fused: torch {torch.__version__} has no fused AdamW kernel for cpu parameters "
        "(it has for cuda). Set model.optimizer.name: adamw."
    )


def test_fused_adamw_with_clipping_under_mixed_precision_is_refused_with_both_ways_out() -> None:
    with pytest.raises(ConfigurationError) as error:
        check_fused_clipping("adamw_fused", "bf16-mixed", 1.0)
    assert str(error.value) == (
        "model.optimizer.name: adamw_fused with trainer.precision=bf16-mixed and trainer.gradient_clip_val=1.0: "
        "Lightning does not clip the gradients of a fused optimizer under mixed precision. "
        "Set model.optimizer.name: adamw, or trainer.gradient_clip_val: null."
    )


@pytest.mark.parametrize(
    ("name", "precision", "clip"), [("adamw", "bf16-mixed", 1.0), ("adamw_fused", "32-true", 1.0), ("adamw_fused", "16-mixed", None)]
)
def test_fused_adamw_is_accepted_without_clipping_or_mixed_precision(name: str, precision: str, clip: float | None) -> None:
    check_fused_clipping(name, precision, clip)


def test_8bit_optimizers_without_bitsandbytes_say_what_to_use_instead(monkeypatch: pytest.MonkeyPatch) -> None:
    import src.models.quantization as quantization

    monkeypatch.setattr(quantization, "bitsandbytes_installed", lambda: False)
    with pytest.raises(ConfigurationError) as error:
        check_optimizer("paged_adamw_8bit", "cuda")
    assert str(error.value) == (
        "model.optimizer.name: paged_adamw_8bit needs the bitsandbytes package, which is not installed. "
        "Install it (pip install bitsandbytes==0.50.2) or set model.optimizer.name: adamw."
    )
    check_optimizer("adamw", "cuda")
