"""`TutorTrainer`: Lightning's Trainer with `precision: auto`, atomic checkpoints and plain progress off a terminal."""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch import Trainer
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.trainer.connectors.accelerator_connector import _PRECISION_INPUT
from lightning.pytorch.utilities import rank_zero_info

from src.callbacks.plain_progress import with_plain_progress
from src.models.precision import AUTO, resolve_precision
from src.plugins.checkpoint_io import AtomicCheckpointIO


class TutorTrainer(Trainer):
    """Lightning's Trainer, plus `precision: auto`: the fastest precision this machine computes natively."""

    def __init__(self, *args: Any, precision: _PRECISION_INPUT | Literal["auto"] | None = None, **kwargs: Any) -> None:
        resolved, why = resolve_precision(precision, kwargs.get("accelerator", "auto"))
        if precision == AUTO:
            rank_zero_info(f"trainer.precision: auto -> {resolved} ({why})")
        kwargs["plugins"] = with_atomic_checkpoints(kwargs.get("plugins"), kwargs.get("strategy", "auto"))
        kwargs["callbacks"] = with_plain_progress(kwargs.get("callbacks"), kwargs.get("enable_progress_bar"))
        super().__init__(*args, precision=resolved, **kwargs)


def with_atomic_checkpoints(plugins: Any, strategy: Any) -> Any:
    """Add `AtomicCheckpointIO` unless the config chose its own checkpoint IO or a sharding strategy.

    FSDP and DeepSpeed write sharded checkpoints through their own IO, which this plugin must not replace.
    """
    if not isinstance(strategy, str) or not (strategy == "auto" or strategy.startswith(("ddp", "single"))):
        return plugins
    chosen = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if any(isinstance(plugin, CheckpointIO) for plugin in chosen):
        return plugins
    return [*chosen, AtomicCheckpointIO()]
