"""The model's grouped settings: `model.lora.*` and `model.optimizer.*` in a config.

Dataclasses, so LightningCLI shows each group as one nested block in `--print_config` and `--help`,
and so the builder, the memory plan and the benchmarks read one typed object instead of loose keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, TypeVar

from src.models.optimizers import OptimizerName

Settings = TypeVar("Settings")


def settings_of(kind: type[Settings], value: Settings | Mapping[str, Any] | None) -> Settings:
    """`value` as a `kind`: LightningCLI hands the module plain dicts, Python callers may pass either."""
    if value is None:
        return kind()
    if isinstance(value, kind):
        return value
    return kind(**value)


def settings_dict(value: Any) -> dict[str, Any]:
    """A settings object as the plain dict that hyperparameters, YAML and checkpoints keep."""
    return asdict(value) if is_dataclass(value) else dict(value)


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA adapter (PEFT's `LoraConfig`).

    Args:
        r: rank of the low-rank update.
        alpha: scaling numerator (the update is scaled by alpha / r, or alpha / sqrt(r) with use_rslora).
        dropout: dropout on the LoRA branch.
        target_modules: module names to adapt, or "all-linear" for every linear layer but the head.
        layers: indices of the decoder layers to adapt; None adapts all (upper layers only: faster backward).
        use_rslora: rank-stabilised LoRA (PEFT's `use_rslora`): scale alpha / sqrt(r).
        use_dora: DoRA (PEFT's `use_dora`): per-output magnitudes beside the low-rank direction; slower steps.
        init: PEFT's `init_lora_weights`: true (B = 0), "gaussian", "pissa" or "pissa_niter_<n>".
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"
    layers: list[int] | None = None
    use_rslora: bool = False
    use_dora: bool = False
    init: bool | str = True


@dataclass(frozen=True)
class OptimizerSettings:
    """The optimizer over the LoRA weights and its learning-rate schedule.

    Args:
        name: "adamw", "adamw_fused", "adamw_8bit" or "paged_adamw_8bit" (bitsandbytes, 2 bytes of state each).
        learning_rate: peak learning rate.
        loraplus_lr_ratio: LoRA+ (PEFT's `create_loraplus_optimizer`): B's learning rate is this times A's; None: off.
        weight_decay: decoupled weight decay.
        warmup_ratio: share of the optimizer steps spent warming up linearly.
        lr_scheduler: transformers scheduler name after warmup ("cosine", "linear", "constant_with_warmup").
    """

    name: OptimizerName = "adamw"
    learning_rate: float = 2e-4
    loraplus_lr_ratio: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    lr_scheduler: str = "cosine"
