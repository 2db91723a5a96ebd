"""The optimizer `model.optimizer.name` names, built over the trainable (LoRA) parameters only.

- adamw: torch's AdamW as it chooses (foreach kernels on CUDA, a loop over the tensors on the CPU), two
  fp32 moments a parameter (8 bytes).
- adamw_fused: torch's fused AdamW, one kernel for every parameter (CUDA, CPU and other devices torch
  lists as supported). Under mixed precision Lightning will not clip its gradients (`check_fused_clipping`).
- adamw_8bit: bitsandbytes' block-wise 8-bit AdamW, two 1-byte moments a parameter (2 bytes).
- paged_adamw_8bit: the same, with its state in paged (CUDA managed) memory that spills to host RAM
  under pressure instead of failing; it falls back to plain memory on CPU.

`loraplus_lr_ratio` turns any of them into LoRA+ (PEFT's `create_loraplus_optimizer`): the B matrices
(and 1-D parameters such as DoRA's magnitudes) learn at ratio x the learning rate, A at the rate itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

import torch
from peft.optimizers import create_loraplus_optimizer
from transformers import get_scheduler

from src.errors import ConfigurationError
from src.models.quantization import check_bitsandbytes

if TYPE_CHECKING:  # settings.py imports this module's names
    from src.models.settings import OptimizerSettings

OptimizerName = Literal["adamw", "adamw_fused", "adamw_8bit", "paged_adamw_8bit"]
OPTIMIZERS: tuple[str, ...] = ("adamw", "adamw_fused", "adamw_8bit", "paged_adamw_8bit")
BNB_OPTIMIZERS = frozenset({"adamw_8bit", "paged_adamw_8bit"})


def fused_adamw_devices() -> list[str]:
    """Device types with a fused AdamW kernel in this torch build."""
    # torch keeps this list private; reading it gives a config-time error instead of one at the first step.
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    return list(_get_fused_kernels_supported_devices())


def check_optimizer(name: str, device_type: str, loraplus_lr_ratio: float | None = None) -> None:
    """Raise one ConfigurationError when `model.optimizer.name` cannot run on `device_type` here."""
    if loraplus_lr_ratio is not None and not (math.isfinite(loraplus_lr_ratio) and loraplus_lr_ratio > 0):
        raise ConfigurationError(
            f"model.optimizer.loraplus_lr_ratio: {loraplus_lr_ratio} is not a positive number. LoRA+ multiplies B's learning "
            "rate by it (the paper uses 16; PEFT advises >= 1); set null for plain LoRA."
        )
    if name not in OPTIMIZERS:
        raise ConfigurationError(f"model.optimizer.name: {name!r} is not known; expected one of {', '.join(OPTIMIZERS)}.")
    if name == "adamw_fused" and device_type not in fused_adamw_devices():
        raise ConfigurationError(
            f"model.optimizer.name: adamw_fused: torch {torch.__version__} has no fused AdamW kernel for {device_type} "
            f"parameters (it has for {', '.join(fused_adamw_devices())}). Set model.optimizer.name: adamw."
        )
    if name in BNB_OPTIMIZERS:
        check_bitsandbytes("model.optimizer.name", name, device_type, "model.optimizer.name: adamw")


def check_fused_clipping(name: str, precision: str | int | None, gradient_clip_val: float | None) -> None:
    """Raise one ConfigurationError where Lightning would stop the first step: under mixed precision it refuses
    to clip the gradients of an optimizer that unscales them itself, as fused AdamW does."""
    if name == "adamw_fused" and str(precision).endswith("-mixed") and gradient_clip_val:
        raise ConfigurationError(
            f"model.optimizer.name: adamw_fused with trainer.precision={precision} and trainer.gradient_clip_val="
            f"{gradient_clip_val}: Lightning does not clip the gradients of a fused optimizer under mixed precision. "
            "Set model.optimizer.name: adamw, or trainer.gradient_clip_val: null."
        )


def build_optimizer(
    name: str,
    params: Iterable[torch.nn.Parameter],
    lr: float,
    weight_decay: float,
    loraplus_lr_ratio: float | None = None,
    model: torch.nn.Module | None = None,
) -> torch.optim.Optimizer:
    """`name`'s optimizer over `params` (call check_optimizer first for a config-level message).

    With `loraplus_lr_ratio`, PEFT groups `model`'s trainable parameters itself (it needs their names
    to tell A from B), so `params` must be exactly those.
    """
    params = list(params)
    optimizer_class, options = optimizer_class_and_options(name)
    if loraplus_lr_ratio is None:
        return optimizer_class(params, lr=lr, weight_decay=weight_decay, **options)
    if model is None:
        raise TypeError("build_optimizer: loraplus_lr_ratio needs the model, to tell LoRA's A from B by name")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if {id(p) for p in trainable} != {id(p) for p in params}:
        raise ValueError("build_optimizer: with loraplus_lr_ratio, params must be the model's trainable parameters")
    if not any("lora_B" in n for n, p in model.named_parameters() if p.requires_grad):
        raise ConfigurationError(
            "model.optimizer.loraplus_lr_ratio: the model has no trainable LoRA B matrix, so LoRA+ would change nothing. "
            "Set model.optimizer.loraplus_lr_ratio: null, or train a LoRA adapter."
        )
    # PEFT puts weight decay in each group from `loraplus_weight_decay` (its default 0.0 would drop ours).
    return create_loraplus_optimizer(
        model, optimizer_class, lr=lr, loraplus_lr_ratio=loraplus_lr_ratio, loraplus_weight_decay=weight_decay,
        **options,
    )


def optimizer_config(model: torch.nn.Module, settings: OptimizerSettings, total_steps: int) -> dict[str, Any]:
    """What `configure_optimizers` returns: the optimizer over `model`'s trainable parameters and transformers'
    `settings.lr_scheduler` stepped once an optimizer step, warming up over `settings.warmup_ratio` of `total_steps`."""
    s = settings
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(s.name, trainable, s.learning_rate, s.weight_decay, s.loraplus_lr_ratio, model=model)
    schedule = get_scheduler(
        s.lr_scheduler, optimizer, num_warmup_steps=round(s.warmup_ratio * total_steps), num_training_steps=total_steps
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def optimizer_class_and_options(name: str) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    if name == "adamw":
        return torch.optim.AdamW, {}
    if name == "adamw_fused":
        return torch.optim.AdamW, {"fused": True}
    if name in BNB_OPTIMIZERS:
        import bitsandbytes as bnb

        return (bnb.optim.PagedAdamW8bit if name == "paged_adamw_8bit" else bnb.optim.AdamW8bit), {}
    raise ConfigurationError(f"model.optimizer.name: {name!r} is not known; expected one of {', '.join(OPTIMIZERS)}.")
