"""The optimizer `model.optimizer` names, built over the trainable (LoRA) parameters only.

- adamw: torch's AdamW (foreach kernels), two fp32 moments a parameter (8 bytes).
- adamw_fused: torch's fused AdamW, one kernel for every parameter (CUDA, CPU and other devices torch
  lists as supported).
- adamw_8bit: bitsandbytes' block-wise 8-bit AdamW, two 1-byte moments a parameter (2 bytes).
- paged_adamw_8bit: the same, with its state in paged (CUDA managed) memory that spills to host RAM
  under pressure instead of failing; it falls back to plain memory on CPU.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch

from src.errors import ConfigurationError
from src.models.quantization import check_bitsandbytes

OptimizerName = Literal["adamw", "adamw_fused", "adamw_8bit", "paged_adamw_8bit"]
OPTIMIZERS: tuple[str, ...] = ("adamw", "adamw_fused", "adamw_8bit", "paged_adamw_8bit")
BNB_OPTIMIZERS = frozenset({"adamw_8bit", "paged_adamw_8bit"})


def fused_adamw_devices() -> list[str]:
    """Device types with a fused AdamW kernel in this torch build."""
    # torch keeps this list private; reading it gives a config-time error instead of one at the first step.
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    return list(_get_fused_kernels_supported_devices())


def check_optimizer(name: str, device_type: str) -> None:
    """Raise one ConfigurationError when `model.optimizer` cannot run on `device_type` here."""
    if name not in OPTIMIZERS:
        raise ConfigurationError(f"model.optimizer: {name!r} is not known; expected one of {', '.join(OPTIMIZERS)}.")
    if name == "adamw_fused" and device_type not in fused_adamw_devices():
        raise ConfigurationError(
            f"model.optimizer: adamw_fused: torch {torch.__version__} has no fused AdamW kernel for {device_type} "
            f"parameters (it has for {', '.join(fused_adamw_devices())}). Set model.optimizer: adamw."
        )
    if name in BNB_OPTIMIZERS:
        check_bitsandbytes("model.optimizer", name, device_type, "model.optimizer: adamw")


def build_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """`name`'s optimizer over `params` (call check_optimizer first for a config-level message)."""
    params = list(params)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw_fused":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name in BNB_OPTIMIZERS:
        import bitsandbytes as bnb

        optimizer = bnb.optim.PagedAdamW8bit if name == "paged_adamw_8bit" else bnb.optim.AdamW8bit
        return optimizer(params, lr=lr, weight_decay=weight_decay)
    raise ConfigurationError(f"model.optimizer: {name!r} is not known; expected one of {', '.join(OPTIMIZERS)}.")
