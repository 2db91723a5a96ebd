"""What a `TutorModule` checkpoint holds besides Lightning's own: only the trainable weights, and the
run's measurements that a resumed run must not redo or lose (the base model's numbers, the retention
set's base replies, the training totals)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from src.training.tutor_module import TutorModule


def save_run_state(module: TutorModule, checkpoint: dict[str, Any]) -> None:
    """Drop the frozen base weights from `checkpoint` and add the run's measurements."""
    # Resuming needs the trainable LoRA weights, optimizer and schedule, never the frozen base.
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
    checkpoint["base_math_metrics"] = module.base_math_metrics
    checkpoint["retention"] = module.retention.state_dict() if module.retention is not None else None
    checkpoint["train_progress"] = module.progress.state_dict()


def load_run_state(module: TutorModule, checkpoint: dict[str, Any]) -> None:
    """Restore what `save_run_state` added (a checkpoint from before a field existed lacks it)."""
    module.base_math_metrics = checkpoint.get("base_math_metrics")
    if module.retention is not None and checkpoint.get("retention"):
        module.retention.load_state_dict(checkpoint["retention"])
    module.progress.load_state_dict(checkpoint.get("train_progress", {}))
